"""Figures and previews shared by the loggers and the command line.

``spectrum_figure`` (the top eigenvalues), ``examples_figure`` (the most self-influential
examples), ``explanation_figure`` (proponents and opponents of test examples) need matplotlib
(``pip install 'lightning-influence[plot]'``); ``examples_grid`` and ``spectrum_image`` (the
same as pixels, what the loggers show at every analysis) need Pillow (matplotlib's own
dependency); ``as_image``, ``image_grid``, ``inputs_label``, ``preview``, ``image_array`` and
``png_bytes`` need nothing beyond torch and numpy;
``figure_array`` needs matplotlib.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_image",
    "examples_figure",
    "examples_grid",
    "explanation_figure",
    "figure_array",
    "image_array",
    "image_grid",
    "inputs_label",
    "png_bytes",
    "preview",
    "spectrum_figure",
    "spectrum_image",
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


def image_array(image: Tensor) -> np.ndarray:
    """``[3, H, W]`` floats in [0, 1] (``as_image``, ``image_grid``) as ``[H, W, 3]`` uint8."""
    pixels = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())


def figure_array(figure: Any) -> np.ndarray:
    """A matplotlib ``Figure`` rendered (Agg, its own dpi) as ``[H, W, 3]`` uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def png_bytes(image: np.ndarray) -> bytes:
    """Encode ``[H, W]``, ``[H, W, 1|3|4]`` uint8 pixels as a PNG file (zlib only, no Pillow).

    Example:
        >>> png_bytes(np.zeros((2, 3, 3), dtype=np.uint8))[:8]
        b'\\x89PNG\\r\\n\\x1a\\n'
    """
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image of shape {tuple(pixels.shape)} and dtype {pixels.dtype}: give [H, W] or "
            "[H, W, C] uint8 pixels with C in 1, 3, 4 (image_array converts a [3, H, W] tensor)"
        )
    height, width, channels = pixels.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]  # greyscale, RGB, RGBA

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = np.concatenate(  # every scanline starts with filter type 0 (none)
        [np.zeros((height, 1), dtype=np.uint8), pixels.reshape(height, width * channels)], axis=1
    )
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


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
        # no minor ticks and plain labels ("0.1", "10"): the log axis' mathtext labels and
        # minor ticks were half of the figure's rendering time, paid at every analysis
        from matplotlib.ticker import FuncFormatter, NullLocator

        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("rank i")
    ax.set_ylabel("|eigenvalue| (red: negative)")
    ax.set_title("Hessian spectrum (top eigenvalues)")
    figure.subplots_adjust(left=0.16, right=0.97, bottom=0.15, top=0.9)  # tight_layout's cost
    return figure


def _pil_font(size: int) -> Any:
    from PIL import ImageFont

    try:  # a scalable font where Pillow has FreeType, its bitmap font where not
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _centred(draw: Any, x: float, y: float, text: str, font: Any) -> None:
    """Draw ``text`` (lines centred on each other) in black, its top-centre at ``(x, y)``."""
    left, _, right, _ = draw.multiline_textbbox((0, 0), text, font=font, align="center")
    draw.multiline_text((x - (right - left) / 2, y), text, fill="black", font=font, align="center")


def _nice_step(span: float, most: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that cuts ``span`` into at most ``most`` steps."""
    for exponent in itertools.count():
        for mantissa in (1, 2, 5):
            if span / (step := mantissa * 10**exponent) <= most:
                return step
    raise AssertionError("unreachable")


def spectrum_image(eigenvalues: Tensor) -> np.ndarray:
    """``spectrum_figure``'s plot as ``[H, W, 3]`` uint8 pixels, drawn with Pillow.

    ``|lambda_i|`` against the rank i (positive in blue, negative in red) on a log scale (linear
    when an eigenvalue is 0). What the loggers show at every analysis: about 5 ms, where
    ``spectrum_figure`` took ~50 ms to render (and ~0.4 s for a process' first figure).
    """
    from PIL import Image, ImageDraw

    values = eigenvalues.detach().double().cpu()
    magnitudes = values.abs()
    width, height = 500, 350
    left, right, top, bottom = 62, 16, 30, 46
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _pil_font(13), _pil_font(11)

    _centred(draw, width / 2, 7, "Hessian spectrum (top eigenvalues)", font)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline="black")
    k = len(values)
    if k:
        logs = bool((magnitudes > 0).all())
        ys = magnitudes.log10() if logs else magnitudes
        lo, hi = float(ys.min()), float(ys.max())
        pad = max((hi - lo) * 0.06, 0.05 if logs else 1e-12 + abs(hi) * 0.06)
        lo, hi = lo - pad, hi + pad

        def px(rank: float) -> float:
            return x0 + (rank - 0.5) / k * (x1 - x0)

        def py(y: float) -> float:
            return y1 - (y - lo) / (hi - lo) * (y1 - y0)

        every = _nice_step(k, 8)
        for rank in range(every, k + 1, every):
            draw.line((px(rank), y1, px(rank), y1 + 4), fill="black")
            _centred(draw, px(rank), y1 + 6, str(rank), small)
        ticks: list[tuple[float, str]] = []
        if logs:  # decades; with 2x and 5x over fewer than 3 decades
            ticks = [
                (math.log10(m * 10.0**e), f"{m * 10.0**e:g}")
                for e in range(math.floor(lo), math.ceil(hi) + 1)
                for m in ((1,) if hi - lo > 3 else (1, 2, 5))
            ]
            ticks = [(y, label) for y, label in ticks if lo <= y <= hi]
        if len(ticks) < 2:  # a linear scale, or a log one narrower than 1 -> 2 -> 5
            step = (hi - lo) / 4
            ticks = [
                (lo + i * step, f"{10 ** (lo + i * step) if logs else lo + i * step:.3g}")
                for i in range(5)
            ]
        for y, label in ticks:
            if lo <= y <= hi:
                draw.line((x0 - 4, py(y), x0, py(y)), fill="black")
                box = draw.textbbox((0, 0), label, font=small)
                draw.text((x0 - 7 - (box[2] - box[0]), py(y) - 7), label, fill="black", font=small)
        for rank, (y, value) in enumerate(zip(ys.tolist(), values.tolist(), strict=True), 1):
            color = (31, 119, 180) if value >= 0 else (214, 39, 40)
            x, y = px(rank), py(y)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
    _centred(draw, (x0 + x1) / 2, height - 20, "rank i", font)
    label = "|eigenvalue| (red: negative)"
    box = draw.textbbox((0, 0), label, font=font)
    text = Image.new("RGB", (box[2] - box[0] + 2, box[3] + 2), "white")
    ImageDraw.Draw(text).text((0, 0), label, fill="black", font=font)
    text = text.rotate(90, expand=True)
    image.paste(text, (4, int((y0 + y1 - text.height) / 2)))
    return np.asarray(image)


def examples_grid(
    rows: list[dict[str, Any]], title: str = "most self-influential training examples"
) -> np.ndarray:
    """``examples_figure``'s grid as ``[H, W, 3]`` uint8 pixels, drawn with Pillow.

    Each example is scaled up by a whole factor (nearest neighbour: its pixels stay sharp and
    exact) into a ~160-pixel tile under its caption (index, label, "(dropped)", score). What the
    loggers show at every analysis: about 10 ms, where rendering the matplotlib figure takes
    about 100 ms (most of it laying out the captions' glyphs).

    Args:
        rows: ``top_examples`` rows whose ``"image"`` is a ``[3, H, W]`` tensor in [0, 1]
            (``as_image``); the first one's size is every tile's.
        title: the line above the grid.
    """
    from PIL import Image, ImageDraw

    font = _pil_font(13)
    h, w = rows[0]["image"].shape[1:]
    scale = max(1, 160 // max(h, w))
    tile_w, tile_h = max(w * scale, 120), h * scale
    cols = math.ceil(math.sqrt(len(rows)))
    nrows = math.ceil(len(rows) / cols)
    pad, caption, top = 12, 36, 28
    canvas = Image.new(
        "RGB", (pad + cols * (tile_w + pad), top + nrows * (caption + tile_h + pad)), "white"
    )
    draw = ImageDraw.Draw(canvas)

    _centred(draw, canvas.width / 2, 6, title, font)
    for i, row in enumerate(rows):
        r, c = divmod(i, cols)
        x, y = pad + c * (tile_w + pad), top + r * (caption + tile_h + pad)
        dropped = " (dropped)" if row.get("status") == "dropped" else ""
        caption_text = f"#{row['index']} y={row['label']}{dropped}\n{row['score']:.3g}"
        _centred(draw, x + tile_w / 2, y, caption_text, font)
        pixels = image_array(row["image"][:, :h, :w]).repeat(scale, axis=0).repeat(scale, axis=1)
        canvas.paste(Image.fromarray(pixels), (x + (tile_w - pixels.shape[1]) // 2, y + caption))
    return np.asarray(canvas)


def examples_figure(
    rows: list[dict[str, Any]], title: str = "most self-influential training examples"
) -> Any:
    """A grid of image examples with their index, label and score (a dropped one says so)."""
    from matplotlib.figure import Figure

    cols = math.ceil(math.sqrt(len(rows)))
    nrows = math.ceil(len(rows) / cols)
    figure = Figure(figsize=(2.0 * cols, 2.2 * nrows), dpi=100)
    # One axes holding one tiled image, the captions as text above each tile: a subplot per
    # example with tight_layout took ~1-2 s per event, more than a small model's whole analysis.
    h, w = rows[0]["image"].shape[1:]
    pad, caption = max(1, w // 10), max(2, round(h * 0.55))
    cell_h, cell_w = h + caption, w + pad
    canvas = np.ones((nrows * cell_h, cols * cell_w, 3), dtype=np.float32)
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0 - 0.35 / (2.2 * nrows)))
    for i, row in enumerate(rows):
        r, c = divmod(i, cols)
        y, x = r * cell_h + caption, c * cell_w + pad // 2
        image = row["image"][:, :h, :w].permute(1, 2, 0).float().clamp(0, 1).numpy()
        canvas[y : y + image.shape[0], x : x + image.shape[1]] = image
        dropped = " (dropped)" if row.get("status") == "dropped" else ""
        ax.text(
            x + w / 2 - 0.5,
            y - 0.6,
            f"#{row['index']} y={row['label']}{dropped}\n{row['score']:.3g}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.axis("off")
    figure.suptitle(title, fontsize=9)
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
