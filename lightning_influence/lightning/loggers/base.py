"""The logger adapter interface, its registry, and the views every adapter draws from."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_influence._imports import PIL_AVAILABLE
from lightning_influence.io.events import ScoringEvent
from lightning_influence.lightning.namespaces import classes
from lightning_influence.viz import (
    as_image,
    examples_figure,
    examples_grid,
    image_array,
    image_grid,
    inputs_label,
    preview,
    spectrum_image,
)

__all__ = [
    "TABLE_COLUMNS",
    "EventView",
    "LoggerAdapter",
    "PlanView",
    "adapter_for",
    "log_event",
    "log_plan",
    "markdown_table",
    "register_logger",
    "table_rows",
    "top_examples",
]

TABLE_COLUMNS = ("rank", "index", "score", "label", "status", "input")
"""The columns of the top-examples table (CSV file, MLflow and wandb tables)."""


@dataclass
class EventView:
    """One scoring event as the loggers show it (built once, shared by every adapter).

    Attributes:
        event: the event.
        step: the global step it is logged at.
        prefix: the tag prefix.
        ranking: what orders the examples shown (``"self_influence"``, or the pruning plan's
            signals, e.g. ``"loss + validation_influence"``).
        top: the rows of the most suspect examples (see ``top_examples``); each row's
            ``status`` is ``"kept"`` or ``"dropped"`` when a pruning plan is in force.
        kept_top: the most suspect examples the plan still trains on (the grid's rows).
        sections: what the run has, for layouts that show only that (``"validation"``, ...).
    """

    event: ScoringEvent
    step: int
    prefix: str
    ranking: str
    top: list[dict[str, Any]]
    kept_top: list[dict[str, Any]]
    sections: set[str] = field(default_factory=set)

    @property
    def eigenvalues(self) -> Tensor:
        return self.event.eigenvalues.detach().cpu().double()

    @property
    def folder(self) -> str:
        return f"epoch={int(self.event.epoch)}-step={int(self.event.global_step)}"

    @cached_property
    def media(self) -> dict[str, np.ndarray]:
        """The spectrum plot and the grid of the most suspect kept examples with their captions
        as ``[H, W, 3]`` uint8 pixels, drawn with Pillow (without it: no plot, the bare images),
        once for every logger: no matplotlib figures in the training process (the first event's
        two took 0.4-0.9 s, later ones 50-100 ms each)."""
        out = {}
        if PIL_AVAILABLE and self.eigenvalues.numel():
            out["spectrum_plot"] = spectrum_image(self.eigenvalues)
        images = [row["image"] for row in self.kept_top]
        if images and all(image is not None for image in images):
            if PIL_AVAILABLE:
                out["top_examples"] = examples_grid(self.kept_top, title=self.grid_title)
            else:
                out["top_examples"] = image_array(image_grid(images))
        return out

    def figure(self) -> Any:
        """The grid of the most suspect kept examples as a matplotlib figure."""
        return examples_figure(self.kept_top, title=self.grid_title)

    @property
    def grid_title(self) -> str:
        what = "kept " if any(r["status"] == "dropped" for r in self.top) else ""
        return f"most suspect {what}training examples by {self.ranking}"


@dataclass
class PlanView:
    """A pruning plan as the loggers show it: its scalars, and the sampling weights (reweight
    mode) for a histogram."""

    metrics: dict[str, float]
    step: int
    weights: Tensor | None
    sections: set[str] = field(default_factory=set)
    prefix: str = "influence"
    data_prefix: str = "influence_data"


class LoggerAdapter:
    """How one kind of logger shows events and plans beyond the scalars every logger gets.
    Subclass it, override what the logger can show, and ``register_logger`` it."""

    def log_event(self, logger: Any, view: EventView) -> None:
        """Media and tables of one scoring event."""

    def log_plan(self, logger: Any, view: PlanView) -> None:
        """What a pruning plan adds beyond its scalars."""


_REGISTRY: list[tuple[str | type, LoggerAdapter]] = []


def register_logger(
    logger: str | type,
) -> Callable[[type[LoggerAdapter]], type[LoggerAdapter]]:
    """Register an adapter class for ``logger``: a class path below Lightning's namespace
    (``"loggers.TensorBoardLogger"``, recognised in both namespaces) or a logger class."""

    def decorate(cls: type[LoggerAdapter]) -> type[LoggerAdapter]:
        _REGISTRY.append((logger, cls()))
        return cls

    return decorate


def _builtins() -> None:
    for name in ("tensorboard", "csv", "mlflow", "wandb"):
        importlib.import_module(f"lightning_influence.lightning.loggers.{name}")


def adapter_for(logger: Any) -> LoggerAdapter | None:
    """The adapter registered for ``logger``'s class (the latest registration wins), or None."""
    _builtins()
    for key, adapter in reversed(_REGISTRY):
        if isinstance(key, str):
            try:
                kinds = classes(key)
            except AttributeError:  # a logger this Lightning release does not have
                continue
        else:
            kinds = (key,)
        if isinstance(logger, kinds):
            return adapter
    return None


def _tensorboard_first(loggers: Iterable[Any]) -> list[Any]:
    tensorboard = classes("loggers.TensorBoardLogger")
    return sorted(loggers, key=lambda lg: not isinstance(lg, tensorboard))


def log_event(
    loggers: Iterable[Any],
    event: ScoringEvent,
    dataset: Any = None,
    *,
    top_n: int = 16,
    num_eigenvalues: int = 10,
    prefix: str = "influence",
    ranking: tuple[str, Tensor] | None = None,
    keep: Tensor | None = None,
) -> None:
    """Log one scoring event to every logger (call it on global zero only).

    Args:
        loggers: Lightning loggers (``trainer.loggers``) of either namespace.
        event: the event; its manifest's ``timings`` (seconds) and ``cost_epochs`` are logged.
        dataset: the scored dataset, indexed like the event's signals, to show the most suspect
            examples (skipped when None).
        top_n: how many of the most suspect examples to show.
        num_eigenvalues: how many of the largest eigenvalues (by ``|lambda|``) to log as scalars.
        prefix: tag prefix.
        ranking: ``(name, [N] scores, higher = more suspect)`` ordering the examples shown;
            None: the self-influence.
        keep: ``[N]`` bool, the examples the pruning plan trains on: the table marks the others
            ``dropped`` and the grid shows the top of the kept set.
    """
    loggers = _tensorboard_first(loggers)
    if not loggers:
        return
    name, scores = ranking if ranking is not None else ("self_influence", event.self_influence)
    scores = scores.detach().cpu().double()
    top = top_examples(dataset, scores, top_n, keep=keep) if dataset is not None else []
    kept_top = (
        top
        if keep is None
        else (top_examples(dataset, scores, top_n, keep=keep, only_kept=True) if dataset else [])
    )
    sections = {"validation"} if "validation_influence" in event.signals else set()
    view = EventView(event, int(event.global_step), prefix, name, top, kept_top, sections)
    metrics = _scalars(event, view.eigenvalues, num_eigenvalues, prefix)
    for logger in loggers:
        logger.log_metrics(metrics, step=view.step)
        adapter = adapter_for(logger)
        if adapter is not None:
            adapter.log_event(logger, view)


def log_plan(loggers: Iterable[Any], view: PlanView) -> None:
    """Log a pruning plan (its scalars and what each adapter adds) to every logger."""
    for logger in _tensorboard_first(loggers):
        logger.log_metrics(view.metrics, step=view.step)
        adapter = adapter_for(logger)
        if adapter is not None:
            adapter.log_plan(logger, view)


def table_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """The top-examples table as rows of ``TABLE_COLUMNS`` (scores as floats)."""
    return [
        [r["rank"], r["index"], r["score"], r["label"], r["status"], r["preview"]] for r in rows
    ]


def _scalars(event: ScoringEvent, eigenvalues: Tensor, n: int, prefix: str) -> dict[str, float]:
    metrics = {f"{prefix}/eigenvalue_{i}": float(v) for i, v in enumerate(eigenvalues[:n])}
    for name, seconds in event.manifest.get("timings", {}).items():
        metrics[f"{prefix}/{name}"] = float(seconds)
    cost = event.manifest.get("cost_epochs")
    if cost is not None:
        metrics[f"{prefix}/cost_epochs"] = float(cost)
    for name, reduce in (("self_influence", "max"), ("validation_influence", "min")):
        values = event.signals.get(name)
        if values is None:
            continue
        finite = values[torch.isfinite(values)]
        if finite.numel():
            metrics[f"{prefix}/{name}_mean"] = float(finite.mean())
            metrics[f"{prefix}/{name}_{reduce}"] = float(getattr(finite, reduce)())
    metrics[f"{prefix}/epoch"] = float(event.epoch)
    return metrics


def top_examples(
    dataset: Any,
    scores: Tensor,
    n: int,
    *,
    keep: Tensor | None = None,
    only_kept: bool = False,
) -> list[dict[str, Any]]:
    """The ``n`` highest-scoring examples of ``dataset`` (``only_kept``: among ``keep``), with
    their label, an image (image inputs) or a preview, and ``status`` (kept, dropped, or empty
    without a plan)."""
    finite = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf))
    if only_kept and keep is not None:
        finite = torch.where(keep.bool(), finite, torch.full_like(finite, -math.inf))
        n = min(n, int(keep.sum()))
    order = finite.topk(min(n, scores.numel())).indices.tolist()
    rows = []
    for rank, index in enumerate(order):
        try:
            sample = dataset[index]
        except Exception:  # an odd dataset must not break logging: show the scores alone
            sample = None
        inputs, label = inputs_label(sample)
        status = "" if keep is None else ("kept" if bool(keep[index]) else "dropped")
        rows.append(
            {
                "rank": rank,
                "index": index,
                "score": float(scores[index]),
                "label": label,
                "status": status,
                "image": as_image(inputs),
                "preview": preview(inputs),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]], ranking: str = "self_influence") -> str:
    """The top-examples table as markdown (TensorBoard's text tab)."""
    lines = [
        f"| rank | index | {ranking} | label | status | input |",
        "| ---: | ---: | ---: | --- | --- | --- |",
    ]
    lines += [
        f"| {r['rank']} | {r['index']} | {r['score']:.6g} | {r['label']} | "
        f"{r['status'] or '-'} | {r['preview']} |"
        for r in rows
    ]
    return "\n".join(lines)
