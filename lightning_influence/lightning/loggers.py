"""What a scoring event looks like in Lightning's loggers (TensorBoard first).

For every logger: the top eigenvalues, timings and self-influence summaries as scalars
(``logger.log_metrics``). For TensorBoard, in addition: the spectrum and the self-influence as
histograms per event (the histogram view shows them evolving across epochs), a spectrum plot when
matplotlib is installed, and the most self-influential training examples, as an image grid with
their labels when inputs are images, and as a text table always.

Tags (``prefix="influence"``): ``influence/eigenvalue_{i}``, ``influence/fit_seconds``,
``influence/scoring_seconds``, ``influence/self_influence_{mean,max}`` (scalars);
``influence/spectrum``, ``influence/self_influence`` (histograms); ``influence/spectrum_plot``,
``influence/top_examples`` (images); ``influence/top_examples`` (text).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning_utilities.core.imports import RequirementCache
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from torch import Tensor

from lightning_influence.io.events import ScoringEvent

__all__ = ["log_event"]

_MATPLOTLIB_AVAILABLE = RequirementCache("matplotlib")


def log_event(
    loggers: Iterable[Logger],
    event: ScoringEvent,
    dataset: Any = None,
    *,
    top_n: int = 16,
    num_eigenvalues: int = 10,
    prefix: str = "influence",
) -> None:
    """Log one scoring event to every logger (call it on global zero only).

    Args:
        loggers: Lightning loggers (``trainer.loggers``); TensorBoard loggers are served first.
        event: the event; its manifest's ``timings`` (seconds) are logged as scalars.
        dataset: the scored dataset, indexed like ``event.self_influence``, to show the most
            self-influential examples (skipped when None).
        top_n: how many of the most self-influential examples to show.
        num_eigenvalues: how many of the largest eigenvalues (by ``|lambda|``) to log as scalars.
        prefix: tag prefix.
    """
    loggers = sorted(loggers, key=lambda lg: not isinstance(lg, TensorBoardLogger))
    if not loggers:
        return
    step = int(event.global_step)
    scores = event.self_influence.detach().cpu().double()
    eigenvalues = event.eigenvalues.detach().cpu().double()
    metrics = _scalars(event, scores, eigenvalues, num_eigenvalues, prefix)
    top = _top_examples(dataset, scores, top_n) if dataset is not None else []
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if isinstance(logger, TensorBoardLogger):
            _log_tensorboard(logger.experiment, eigenvalues, scores, top, step, prefix)


def _scalars(
    event: ScoringEvent, scores: Tensor, eigenvalues: Tensor, n: int, prefix: str
) -> dict[str, float]:
    metrics = {f"{prefix}/eigenvalue_{i}": float(v) for i, v in enumerate(eigenvalues[:n])}
    for name, seconds in event.manifest.get("timings", {}).items():
        metrics[f"{prefix}/{name}"] = float(seconds)
    finite = scores[torch.isfinite(scores)]
    if finite.numel():
        metrics[f"{prefix}/self_influence_mean"] = float(finite.mean())
        metrics[f"{prefix}/self_influence_max"] = float(finite.max())
    metrics[f"{prefix}/epoch"] = float(event.epoch)
    return metrics


def _log_tensorboard(
    writer: Any,
    eigenvalues: Tensor,
    scores: Tensor,
    top: list[dict[str, Any]],
    step: int,
    prefix: str,
) -> None:
    if eigenvalues.numel():
        writer.add_histogram(f"{prefix}/spectrum", eigenvalues.numpy(), step)
    finite = scores[torch.isfinite(scores)]
    if finite.numel():
        writer.add_histogram(f"{prefix}/self_influence", finite.numpy(), step)
    if _MATPLOTLIB_AVAILABLE and eigenvalues.numel():
        writer.add_figure(f"{prefix}/spectrum_plot", _spectrum_figure(eigenvalues), step)
    if top:
        images = [row["image"] for row in top]
        if all(image is not None for image in images):
            if _MATPLOTLIB_AVAILABLE:
                writer.add_figure(f"{prefix}/top_examples", _examples_figure(top), step)
            else:
                writer.add_image(f"{prefix}/top_examples", _grid(images), step)
        writer.add_text(f"{prefix}/top_examples", _markdown_table(top), step)
    writer.flush()


# -- the most self-influential examples -------------------------------------------------------
def _top_examples(dataset: Any, scores: Tensor, n: int) -> list[dict[str, Any]]:
    finite = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf))
    order = finite.topk(min(n, scores.numel())).indices.tolist()
    rows = []
    for rank, index in enumerate(order):
        try:
            sample = dataset[index]
        except Exception:  # an odd dataset must not break logging: show the scores alone
            sample = None
        inputs, label = _inputs_label(sample)
        rows.append(
            {
                "rank": rank,
                "index": index,
                "score": float(scores[index]),
                "label": label,
                "image": _as_image(inputs),
                "preview": _preview(inputs),
            }
        )
    return rows


def _inputs_label(sample: Any) -> tuple[Any, str]:
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
    return inputs, "" if label is None else _preview(label)


def _as_image(inputs: Any) -> Tensor | None:
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


def _grid(images: list[Tensor], pad: int = 2) -> Tensor:
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


def _preview(value: Any, limit: int = 60) -> str:
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


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rank | index | self-influence | label | input |",
        "| ---: | ---: | ---: | --- | --- |",
    ]
    lines += [
        f"| {r['rank']} | {r['index']} | {r['score']:.6g} | {r['label']} | {r['preview']} |"
        for r in rows
    ]
    return "\n".join(lines)


# -- figures (matplotlib, optional) -----------------------------------------------------------
def _spectrum_figure(eigenvalues: Tensor) -> Any:
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


def _examples_figure(rows: list[dict[str, Any]]) -> Any:
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
