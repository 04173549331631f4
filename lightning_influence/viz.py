"""Figures and previews shared by the loggers and the command line.

``spectrum_figure`` (the top eigenvalues), ``examples_figure`` (the most self-influential
examples), ``explanation_figure`` (proponents and opponents of test examples) need matplotlib
(``pip install 'lightning-influence[plot]'``); ``as_image``, ``image_grid``, ``inputs_label`` and
``preview`` need nothing beyond torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "as_image",
    "examples_figure",
    "explanation_figure",
    "image_grid",
    "inputs_label",
    "preview",
    "spectrum_figure",
]


def inputs_label(sample: Any) -> tuple[Any, str]:
    if isinstance(sample, Mapping):
        inputs = next((sample[k] for k in ("x", "image", "input", "inputs") if k in sample), None)
        label = next(
            (sample[k] for k in ("y", "label", "labels", "target", "targets") if k in sample), None
        )
    elif isinstance(sample, Sequence) and not isinstance(sample, str) and len(sample) >= 1:
        inputs, label = sample[0], sample[1] if len(sample) >= 2 else None
    else:
        inputs, label = sample, None
    if isinstance(label, Tensor) and label.numel() == 1:
        label = label.item()
    return inputs, "" if label is None else preview(label)


def as_image(inputs: Any) -> Tensor | None:
    """``[3, H, W]`` floats in [0, 1] when ``inputs`` looks like an image, else None."""
    if not isinstance(inputs, Tensor) or (
        not inputs.is_floating_point() and inputs.dtype != torch.uint8
    ):
        return None
    x = inputs.detach().cpu().float()
    if x.ndim == 2:
        x = x.unsqueeze(0)
    elif x.ndim == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(2, 0, 1)  # HWC -> CHW
    if x.ndim != 3 or x.shape[0] not in (1, 3) or min(x.shape[1:]) < 4:
        return None
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def image_grid(images: list[Tensor], pad: int = 2) -> Tensor:
    """Tile ``[3, H, W]`` images (resized to the first one's size by cropping/padding) in a grid."""
    h, w = images[0].shape[1:]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        part = image[:, :h, :w]
        grid[:, y : y + part.shape[1], x : x + part.shape[2]] = part
    return grid


def preview(value: Any, limit: int = 60) -> str:
    if isinstance(value, Tensor):
        if value.numel() == 1:
            value = value.item()
        else:
            flat = value.detach().flatten()[:6].tolist()
            shown = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in flat)
            return f"tensor{tuple(value.shape)} [{shown}{', ...' if value.numel() > 6 else ''}]"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def spectrum_figure(eigenvalues: Tensor) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.5), dpi=100)
    ax = figure.add_subplot()
    values = eigenvalues.abs().numpy()
    colors = ["tab:blue" if v >= 0 else "tab:red" for v in eigenvalues.tolist()]
    ax.scatter(range(1, len(values) + 1), values, s=10, c=colors)
    if (values > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("rank i")
    ax.set_ylabel("|eigenvalue| (red: negative)")
    ax.set_title("Hessian spectrum (top eigenvalues)")
    figure.tight_layout()
    return figure


def examples_figure(rows: list[dict[str, Any]]) -> Any:
    from matplotlib.figure import Figure

    cols = math.ceil(math.sqrt(len(rows)))
    nrows = math.ceil(len(rows) / cols)
    figure = Figure(figsize=(2.0 * cols, 2.2 * nrows), dpi=100)
    for i, row in enumerate(rows):
        ax = figure.add_subplot(nrows, cols, i + 1)
        ax.imshow(row["image"].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"#{row['index']} y={row['label']}\n{row['score']:.3g}", fontsize=8)
        ax.axis("off")
    figure.suptitle("most self-influential training examples", fontsize=9)
    figure.tight_layout()
    return figure


def explanation_figure(
    test_data: Any,
    train_data: Any,
    examples: Sequence[int],
    top: Any,
    *,
    split: str = "test",
) -> Any:
    """Rows: the chosen examples; columns: the example, its proponents, its opponents.

    Args:
        test_data: the dataset the chosen examples come from.
        train_data: the training dataset (indexed like ``top``'s indices).
        examples: the chosen indices into ``test_data``, one row each.
        top: ``TopInfluences`` of those examples (rows in ``examples`` order).
        split: the name of ``test_data`` in the titles.

    Raises:
        ValueError: the inputs are not images.
    """
    from matplotlib.figure import Figure

    first_inputs, _ = inputs_label(test_data[examples[0]])
    if as_image(first_inputs) is None:
        raise ValueError(
            "the explanation figure draws image inputs ([H, W], [C, H, W] or [H, W, C] with C in "
            "1, 3); these inputs are not images"
        )
    k = top.proponents.shape[1]
    cols = 1 + 2 * k
    figure = Figure(figsize=(1.3 * cols, 1.6 * len(examples)), dpi=100)
    for t, test_index in enumerate(examples):
        cells = [(test_data[test_index], f"{split} #{test_index}", "black")]
        cells += [
            (train_data[i], f"+ #{i}\n{v:.3g}", "tab:green")
            for i, v in zip(
                top.proponents[t].tolist(), top.proponent_scores[t].tolist(), strict=True
            )
        ]
        cells += [
            (train_data[i], f"- #{i}\n{v:.3g}", "tab:red")
            for i, v in zip(top.opponents[t].tolist(), top.opponent_scores[t].tolist(), strict=True)
        ]
        for c, (sample, title, color) in enumerate(cells):
            inputs, label = inputs_label(sample)
            image = as_image(inputs)
            ax = figure.add_subplot(len(examples), cols, t * cols + c + 1)
            if image is not None:
                ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(f"{title}\ny={label}" if label else title, fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle(
        "test example | proponents (+, green) | opponents (-, red)   [#index, influence, label]",
        fontsize=9,
    )
    figure.tight_layout()
    return figure
