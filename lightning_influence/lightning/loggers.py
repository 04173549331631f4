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
from collections.abc import Iterable
from typing import Any

import torch
from lightning_utilities.core.imports import RequirementCache
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from torch import Tensor

from lightning_influence.io.events import ScoringEvent
from lightning_influence.viz import (
    as_image,
    examples_figure,
    image_grid,
    inputs_label,
    preview,
    spectrum_figure,
)

__all__ = ["log_event", "markdown_table", "tensorboard_layout", "top_examples"]

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
    top = top_examples(dataset, scores, top_n) if dataset is not None else []
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


def tensorboard_layout(prefix: str = "influence", data_prefix: str = "influence_data") -> dict:
    """The custom-scalars layout (TensorBoard's CUSTOM SCALARS tab): the story on one page.

    The spectrum over the epochs, the self-influence summaries and the analysis' cost, and from
    ``InfluenceDataModule`` the kept and dropped counts, the drops per class, the precision and
    recall of the dropped set against known noise (when given) and the sampling weights.
    """
    return {
        "influence: the spectrum and the scores": {
            "top eigenvalues over training": ["Multiline", [rf"{prefix}/eigenvalue_\d+"]],
            "self-influence (mean, max)": [
                "Multiline",
                [rf"{prefix}/self_influence_(mean|max)"],
            ],
            "cost of an analysis (s)": [
                "Multiline",
                [rf"{prefix}/(fit|hvp|scoring)_seconds"],
            ],
        },
        "influence: pruning": {
            "kept and dropped": ["Multiline", [rf"{data_prefix}/(kept|dropped)$"]],
            "dropped per class": ["Multiline", [rf"{data_prefix}/dropped_class_\d+"]],
            "dropped vs known noise": [
                "Multiline",
                [rf"{data_prefix}/(precision|recall)_vs_known_noise"],
            ],
            "sampling weights": [
                "Multiline",
                [rf"{data_prefix}/(weight_min|weight_mean|weight_max|effective_size)"],
            ],
        },
    }


def _log_tensorboard(
    writer: Any,
    eigenvalues: Tensor,
    scores: Tensor,
    top: list[dict[str, Any]],
    step: int,
    prefix: str,
) -> None:
    writer.add_custom_scalars(tensorboard_layout(prefix))
    if eigenvalues.numel():
        writer.add_histogram(f"{prefix}/spectrum", eigenvalues.numpy(), step)
    finite = scores[torch.isfinite(scores)]
    if finite.numel():
        writer.add_histogram(f"{prefix}/self_influence", finite.numpy(), step)
    if _MATPLOTLIB_AVAILABLE and eigenvalues.numel():
        writer.add_figure(f"{prefix}/spectrum_plot", spectrum_figure(eigenvalues), step)
    if top:
        images = [row["image"] for row in top]
        if all(image is not None for image in images):
            if _MATPLOTLIB_AVAILABLE:
                writer.add_figure(f"{prefix}/top_examples", examples_figure(top), step)
            else:
                writer.add_image(f"{prefix}/top_examples", image_grid(images), step)
        writer.add_text(f"{prefix}/top_examples", markdown_table(top), step)
    writer.flush()


# -- the most self-influential examples -------------------------------------------------------
def top_examples(dataset: Any, scores: Tensor, n: int) -> list[dict[str, Any]]:
    finite = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf))
    order = finite.topk(min(n, scores.numel())).indices.tolist()
    rows = []
    for rank, index in enumerate(order):
        try:
            sample = dataset[index]
        except Exception:  # an odd dataset must not break logging: show the scores alone
            sample = None
        inputs, label = inputs_label(sample)
        rows.append(
            {
                "rank": rank,
                "index": index,
                "score": float(scores[index]),
                "label": label,
                "image": as_image(inputs),
                "preview": preview(inputs),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rank | index | self-influence | label | input |",
        "| ---: | ---: | ---: | --- | --- |",
    ]
    lines += [
        f"| {r['rank']} | {r['index']} | {r['score']:.6g} | {r['label']} | {r['preview']} |"
        for r in rows
    ]
    return "\n".join(lines)
