"""Scoring events and their files: what the callback produces and the DataModule consumes.

One scoring event (an analysis at some epoch and step) is a folder::

    <root>/epoch=E-step=S/
        self_influence.csv   index,self_influence      (one row per training example, by dataset index)
        eigenvalues.csv      rank,eigenvalue,residual  (sorted by |eigenvalue|, descending)
        manifest.json        arguments, epoch, step, timings, package versions

``pandas.read_csv(folder / "self_influence.csv", index_col="index")`` reads the scores in one call.
Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file; the manifest is written last and marks the folder complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from lightning_influence.io.atomic import atomic_write

__all__ = ["ScoringEvent", "latest_event_dir", "read_event", "write_event"]

SCORES_FILE = "self_influence.csv"
EIGENVALUES_FILE = "eigenvalues.csv"
MANIFEST_FILE = "manifest.json"


@dataclass
class ScoringEvent:
    """The result of one analysis of the training set.

    Attributes:
        epoch: the epoch whose end (or checkpoint) was analysed.
        global_step: the trainer's global step then.
        self_influence: ``[N]`` float64 scores indexed by dataset index.
        eigenvalues: ``[k]`` float64, sorted by ``|lambda|`` descending.
        residuals: ``[k]`` Ritz residual estimates (NaN where unknown).
        directory: the event's folder, once written.
        manifest: arguments, timings and versions (JSON-serializable).
    """

    epoch: int
    global_step: int
    self_influence: Tensor
    eigenvalues: Tensor
    residuals: Tensor | None = None
    directory: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The folder name: ``epoch=E-step=S``."""
        return f"epoch={self.epoch}-step={self.global_step}"

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "self_influence": self.self_influence.cpu(),
            "eigenvalues": self.eigenvalues.cpu(),
            "residuals": None if self.residuals is None else self.residuals.cpu(),
            "directory": self.directory,
            "manifest": self.manifest,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ScoringEvent:
        return cls(**state)


def write_event(event: ScoringEvent, root: str | os.PathLike) -> Path:
    """Write ``event`` under ``root/event.name`` atomically; sets ``event.directory``."""
    folder = Path(root) / event.name
    scores = event.self_influence.detach().cpu().double().tolist()
    lam = event.eigenvalues.detach().cpu().double().tolist()
    res = (
        event.residuals.detach().cpu().double().tolist()
        if event.residuals is not None
        else [float("nan")] * len(lam)
    )

    def write_scores(handle: IO[str]) -> None:
        handle.write("index,self_influence\n")
        handle.writelines(f"{i},{s!r}\n" for i, s in enumerate(scores))

    def write_eigenvalues(handle: IO[str]) -> None:
        handle.write("rank,eigenvalue,residual\n")
        handle.writelines(
            f"{i},{v!r},{r!r}\n" for i, (v, r) in enumerate(zip(lam, res, strict=True))
        )

    atomic_write(folder / SCORES_FILE, write_scores)
    atomic_write(folder / EIGENVALUES_FILE, write_eigenvalues)
    manifest = {"epoch": event.epoch, "global_step": event.global_step, **event.manifest}
    atomic_write(folder / MANIFEST_FILE, lambda h: json.dump(manifest, h, indent=2, default=str))
    event.directory = str(folder)
    return folder


def _read_csv_columns(path: Path) -> dict[str, list[float]]:
    with open(path) as handle:
        header = handle.readline().strip().split(",")
        columns: dict[str, list[float]] = {h: [] for h in header}
        for line in handle:
            for name, value in zip(header, line.strip().split(","), strict=True):
                columns[name].append(float(value))
    return columns


def read_event(folder: str | os.PathLike) -> ScoringEvent:
    """Read a scoring event written by ``write_event`` (or by ``InfluenceCallback``)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a complete scoring event: {MANIFEST_FILE} is missing (pass a folder "
            "named epoch=E-step=S written by InfluenceCallback)"
        )
    manifest = json.loads(manifest_path.read_text())
    scores = _read_csv_columns(folder / SCORES_FILE)
    index = torch.tensor(scores["index"], dtype=torch.long)
    values = torch.full(
        (int(index.max()) + 1 if len(index) else 0,), float("nan"), dtype=torch.float64
    )
    values[index] = torch.tensor(scores["self_influence"], dtype=torch.float64)
    eig = _read_csv_columns(folder / EIGENVALUES_FILE)
    return ScoringEvent(
        epoch=int(manifest["epoch"]),
        global_step=int(manifest["global_step"]),
        self_influence=values,
        eigenvalues=torch.tensor(eig["eigenvalue"], dtype=torch.float64),
        residuals=torch.tensor(eig["residual"], dtype=torch.float64),
        directory=str(folder),
        manifest=manifest,
    )


def latest_event_dir(root: str | os.PathLike) -> Path:
    """The complete event folder under ``root`` with the highest (epoch, step)."""
    root = Path(root)
    found = []
    for child in root.glob("epoch=*-step=*"):
        if (child / MANIFEST_FILE).is_file():
            epoch, step = child.name.removeprefix("epoch=").split("-step=")
            found.append(((int(epoch), int(step)), child))
    if not found:
        raise FileNotFoundError(
            f"no complete scoring event (epoch=E-step=S/{MANIFEST_FILE}) under {root}"
        )
    return max(found)[1]
