"""What a scoring event looks like in Lightning's loggers (TensorBoard first).

For every logger: the top eigenvalues, timings and self-influence summaries as scalars
(``logger.log_metrics``). In addition, through each logger's own API, the spectrum plot (when
matplotlib is installed) and the most self-influential training examples, as an image grid with
their labels when inputs are images and as a table always:

* ``TensorBoardLogger``: also the spectrum and the self-influence as histograms per event (the
  histogram view shows them evolving across epochs), images, and the table as text;
* ``CSVLogger`` (no media API): ``spectrum_plot.png``, ``top_examples.png`` and
  ``top_examples.csv`` in ``<log_dir>/media/<prefix>/epoch=E-step=S/``;
* ``MLFlowLogger``: images with ``log_image(key=..., step=...)`` (the run's image charts; they
  need Pillow) and the table with ``log_table`` (``log_dict`` without pandas) as the artifact
  ``<prefix>/top_examples/epoch=E-step=S.json``;
* ``WandbLogger``: ``log_image`` (needs Pillow) and ``log_table``.

Loggers of both namespaces (``pytorch_lightning``, ``lightning.pytorch``) are recognised.

Tags (``prefix="influence"``): ``influence/eigenvalue_{i}``, ``influence/fit_seconds``,
``influence/scoring_seconds``, ``influence/self_influence_{mean,max}`` (scalars);
``influence/spectrum``, ``influence/self_influence`` (histograms); ``influence/spectrum_plot``,
``influence/top_examples`` (images); ``influence/top_examples`` (text, tables).
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_utilities.core.imports import RequirementCache
from torch import Tensor

from lightning_influence.io.atomic import atomic_write_bytes
from lightning_influence.io.events import ScoringEvent
from lightning_influence.lightning.namespaces import classes
from lightning_influence.viz import (
    as_image,
    examples_figure,
    figure_array,
    image_array,
    image_grid,
    inputs_label,
    png_bytes,
    preview,
    spectrum_figure,
)

__all__ = [
    "TABLE_COLUMNS",
    "log_event",
    "markdown_table",
    "table_rows",
    "tensorboard_layout",
    "top_examples",
]

_MATPLOTLIB_AVAILABLE = RequirementCache("matplotlib")
# mlflow and wandb turn numpy pixels into images with Pillow; mlflow's log_table needs pandas.
_PIL_AVAILABLE = RequirementCache("pillow", "PIL")
_PANDAS_AVAILABLE = RequirementCache("pandas")

TABLE_COLUMNS = ("rank", "index", "self_influence", "label", "input")
"""The columns of the top-examples table (CSV file, MLflow and wandb tables)."""


def log_event(
    loggers: Iterable[Any],
    event: ScoringEvent,
    dataset: Any = None,
    *,
    top_n: int = 16,
    num_eigenvalues: int = 10,
    prefix: str = "influence",
) -> None:
    """Log one scoring event to every logger (call it on global zero only).

    Args:
        loggers: Lightning loggers (``trainer.loggers``) of either namespace; TensorBoard loggers
            are served first.
        event: the event; its manifest's ``timings`` (seconds) are logged as scalars.
        dataset: the scored dataset, indexed like ``event.self_influence``, to show the most
            self-influential examples (skipped when None).
        top_n: how many of the most self-influential examples to show.
        num_eigenvalues: how many of the largest eigenvalues (by ``|lambda|``) to log as scalars.
        prefix: tag prefix.
    """
    tensorboard = classes("loggers.TensorBoardLogger")
    loggers = sorted(loggers, key=lambda lg: not isinstance(lg, tensorboard))
    if not loggers:
        return
    step = int(event.global_step)
    scores = event.self_influence.detach().cpu().double()
    eigenvalues = event.eigenvalues.detach().cpu().double()
    metrics = _scalars(event, scores, eigenvalues, num_eigenvalues, prefix)
    top = top_examples(dataset, scores, top_n) if dataset is not None else []
    media: dict[str, np.ndarray] | None = None  # rendered once, for the loggers that take images
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        if isinstance(logger, tensorboard):
            _log_tensorboard(logger.experiment, eigenvalues, scores, top, step, prefix)
            continue
        kind = _media_logger(logger)
        if kind is None:
            continue
        if media is None:
            media = _render(eigenvalues, top)
        if kind == "csv":
            _log_csv(logger, media, top, event, prefix)
        elif kind == "mlflow":
            _log_mlflow(logger, media, top, event, prefix)
        else:
            _log_wandb(logger, media, top, step, prefix)


def _media_logger(logger: Any) -> str | None:
    for kind, name in (
        ("csv", "loggers.CSVLogger"),
        ("mlflow", "loggers.MLFlowLogger"),
        ("wandb", "loggers.WandbLogger"),
    ):
        if isinstance(logger, classes(name)):
            return kind
    return None


def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """The top-examples table as rows of ``TABLE_COLUMNS`` (scores as floats)."""
    return [[r["rank"], r["index"], r["score"], r["label"], r["preview"]] for r in rows]


def _render(eigenvalues: Tensor, top: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The spectrum plot and the top-examples grid as ``[H, W, 3]`` uint8 pixels."""
    media = {}
    if _MATPLOTLIB_AVAILABLE and eigenvalues.numel():
        media["spectrum_plot"] = figure_array(spectrum_figure(eigenvalues))
    images = [row["image"] for row in top]
    if images and all(image is not None for image in images):
        if _MATPLOTLIB_AVAILABLE:
            media["top_examples"] = figure_array(examples_figure(top))
        else:
            media["top_examples"] = image_array(image_grid(images))
    return media


def _event_folder(event: ScoringEvent) -> str:
    return f"epoch={int(event.epoch)}-step={int(event.global_step)}"


def _log_csv(
    logger: Any,
    media: dict[str, np.ndarray],
    top: list[dict[str, Any]],
    event: ScoringEvent,
    prefix: str,
) -> None:
    # CSVLogger has no media API: files beside its metrics.csv, one folder per event. Not under
    # `<log_dir>/influence/`: that is where InfluenceCallback writes its event folders.
    folder = Path(logger.log_dir) / "media" / prefix / _event_folder(event)
    folder.mkdir(parents=True, exist_ok=True)
    for name, pixels in media.items():
        atomic_write_bytes(folder / f"{name}.png", png_bytes(pixels))
    if top:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(TABLE_COLUMNS)
        writer.writerows(table_rows(top))
        atomic_write_bytes(folder / "top_examples.csv", text.getvalue().encode())


def _log_mlflow(
    logger: Any,
    media: dict[str, np.ndarray],
    top: list[dict[str, Any]],
    event: ScoringEvent,
    prefix: str,
) -> None:
    client, run_id, step = logger.experiment, logger.run_id, int(event.global_step)
    if _PIL_AVAILABLE:
        for name, pixels in media.items():
            client.log_image(run_id, pixels, key=f"{prefix}/{name}", step=step)
    if top:
        artifact = f"{prefix}/top_examples/{_event_folder(event)}.json"
        rows = table_rows(top)
        columns = {c: [row[k] for row in rows] for k, c in enumerate(TABLE_COLUMNS)}
        if _PANDAS_AVAILABLE:
            with warnings.catch_warnings():
                # mlflow's own select_dtypes(include=["object"]) warns under pandas 3, every event
                warnings.filterwarnings("ignore", message=".*select_dtypes.*")
                client.log_table(run_id, data=columns, artifact_file=artifact)
        else:
            client.log_dict(run_id, columns, artifact)


def _log_wandb(
    logger: Any,
    media: dict[str, np.ndarray],
    top: list[dict[str, Any]],
    step: int,
    prefix: str,
) -> None:
    if _PIL_AVAILABLE:
        for name, pixels in media.items():
            logger.log_image(key=f"{prefix}/{name}", images=[pixels], step=step)
    if top:
        logger.log_table(
            key=f"{prefix}/top_examples",
            columns=list(TABLE_COLUMNS),
            data=table_rows(top),
            step=step,
        )


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
