"""TensorBoard: histograms of the spectrum and the self-influence per event, the spectrum plot,
the grid of the most suspect kept examples, their table as text, and one CUSTOM SCALARS page
that shows only what the run has."""

from __future__ import annotations

from typing import Any

import torch

from lightning_influence.lightning.loggers.base import (
    EventView,
    LoggerAdapter,
    PlanView,
    markdown_table,
    register_logger,
)

__all__ = ["TensorBoardAdapter", "tensorboard_layout"]


def tensorboard_layout(
    prefix: str = "influence",
    data_prefix: str = "influence_data",
    sections: set[str] | frozenset[str] = frozenset(),
) -> dict:
    """The custom-scalars layout (TensorBoard's CUSTOM SCALARS tab): the story on one page, with
    only the charts the run has.

    ``sections`` says what that is: ``"validation"`` (validation influence), ``"pruning"`` (kept
    and dropped counts), ``"per_class"`` (drops per class), ``"known_noise"`` (precision and
    recall against known noise), ``"weights"`` (reweight mode).
    """
    analysis = {
        "top eigenvalues over training": ["Multiline", [rf"{prefix}/eigenvalue_\d+"]],
        "self-influence (mean, max)": ["Multiline", [rf"{prefix}/self_influence_(mean|max)"]],
        "cost of an analysis (training epochs)": ["Multiline", [rf"{prefix}/cost_epochs"]],
        "cost of an analysis (s)": [
            "Multiline",
            [rf"{prefix}/(fit|validation|scoring|writing|total)_seconds"],
        ],
    }
    if "validation" in sections:
        analysis["validation influence (mean, min)"] = [
            "Multiline",
            [rf"{prefix}/validation_influence_(mean|min)"],
        ]
    layout = {"influence: the spectrum and the signals": analysis}
    pruning = {}
    if "pruning" in sections:
        pruning["kept and dropped"] = ["Multiline", [rf"{data_prefix}/(kept|dropped)$"]]
    if "per_class" in sections:
        pruning["dropped per class"] = ["Multiline", [rf"{data_prefix}/dropped_class_\d+"]]
    if "known_noise" in sections:
        pruning["dropped vs known noise"] = [
            "Multiline",
            [rf"{data_prefix}/(precision|recall)_vs_known_noise"],
        ]
    if "weights" in sections:
        pruning["sampling weights"] = [
            "Multiline",
            [rf"{data_prefix}/(weight_min|weight_mean|weight_max|effective_size)"],
        ]
    if pruning:
        layout["influence: pruning"] = pruning
    return layout


@register_logger("loggers.TensorBoardLogger")
class TensorBoardAdapter(LoggerAdapter):
    """TensorBoard's own API: histograms, figures, text, and the custom-scalars layout (one per
    run, the union of what the callback and the DataModule have shown so far)."""

    def __init__(self) -> None:
        self._sections: dict[int, set[str]] = {}

    def _layout(self, writer: Any, sections: set[str], prefix: str, data_prefix: str) -> None:
        seen = self._sections.setdefault(id(writer), set())
        if sections <= seen and seen:
            return
        seen |= sections | {"analysis"}
        writer.add_custom_scalars(tensorboard_layout(prefix, data_prefix, seen))

    def log_event(self, logger: Any, view: EventView) -> None:
        writer, step, prefix = logger.experiment, view.step, view.prefix
        self._layout(writer, view.sections, prefix, "influence_data")
        eigenvalues = view.eigenvalues
        if eigenvalues.numel():
            writer.add_histogram(f"{prefix}/spectrum", eigenvalues.numpy(), step)
        for name in ("self_influence", "validation_influence"):
            values = view.event.signals.get(name)
            if values is None:
                continue
            finite = values[torch.isfinite(values)]
            if finite.numel():
                writer.add_histogram(f"{prefix}/{name}", finite.numpy(), step)
        # the pixels every logger gets (rendered once), not add_figure's second rendering path
        for name, pixels in view.media.items():
            writer.add_image(f"{prefix}/{name}", pixels, step, dataformats="HWC")
        if view.top:
            writer.add_text(f"{prefix}/top_examples", markdown_table(view.top, view.ranking), step)
        writer.flush()

    def log_plan(self, logger: Any, view: PlanView) -> None:
        writer = logger.experiment
        self._layout(writer, view.sections, view.prefix, view.data_prefix)
        if view.weights is not None:
            writer.add_histogram(f"{view.data_prefix}/weights", view.weights, view.step)
        writer.flush()
