"""The files of a pruning plan: ``dropped.csv`` (drop mode) or ``weights.csv`` (reweight mode)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from torch import Tensor

from lightning_influence.io.atomic import atomic_write

__all__ = ["DROPPED_FILE", "WEIGHTS_FILE", "write_plan"]

DROPPED_FILE = "dropped.csv"
WEIGHTS_FILE = "weights.csv"


def write_plan(
    folder: str | os.PathLike,
    *,
    keep: Tensor | None = None,
    weights: Tensor | None = None,
    scores: Tensor | None = None,
    labels: Tensor | None = None,
) -> Path:
    """Write ``dropped.csv`` (``index[,label],score`` of every dropped example) for a keep-mask,
    or ``weights.csv`` (``index,weight``) for sampling weights, atomically; returns the path."""
    folder = Path(folder)
    if keep is not None:
        dropped = (~keep).nonzero().flatten().tolist()
        header = "index,label,score\n" if labels is not None else "index,score\n"

        def write_dropped(handle: IO[str]) -> None:
            handle.write(header)
            for i in dropped:
                label = f"{int(labels[i])}," if labels is not None else ""
                score = float(scores[i]) if scores is not None else float("nan")
                handle.write(f"{i},{label}{score!r}\n")

        return atomic_write(folder / DROPPED_FILE, write_dropped)
    if weights is None:
        raise ValueError("write_plan needs a keep-mask or weights")

    def write_weights(handle: IO[str]) -> None:
        handle.write("index,weight\n")
        handle.writelines(f"{i},{w!r}\n" for i, w in enumerate(weights.tolist()))

    return atomic_write(folder / WEIGHTS_FILE, write_weights)
