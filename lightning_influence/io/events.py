"""Scoring events and their files: what the callback produces and the DataModule consumes.

One scoring event (an analysis at some epoch and step) is a folder::

    <log_dir>/influence/<name>/epoch=E-step=S/
        self_influence.csv   index,self_influence      (one row per training example, by dataset index)
        eigenvalues.csv      rank,eigenvalue,residual  (sorted by |eigenvalue|, descending)
        manifest.json        uid, arguments, epoch, step, timings, package versions

``<name>`` is the analysis' name (``InfluenceCallback(name=...)``; by default a short hash of its
arguments), so analyses with other arguments never share a folder; writing into an event folder
made with other arguments is refused (``check_event_folder``).

``pandas.read_csv(folder / "self_influence.csv", index_col="index")`` reads the scores in one call.
Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file; the manifest is written last and marks the folder complete.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from lightning_influence.config import ConfigurationError
from lightning_influence.io.atomic import atomic_write
from lightning_influence.io.manifest import argument_differences, result_arguments

__all__ = [
    "ScoringEvent",
    "check_event_folder",
    "latest_event_dir",
    "load_event",
    "load_events",
    "read_event",
    "write_event",
]

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
        uid: unique id of this event (in its manifest too): a newer analysis of the same step
            is a new event, and caches key on it.
    """

    epoch: int
    global_step: int
    self_influence: Tensor
    eigenvalues: Tensor
    residuals: Tensor | None = None
    directory: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def relative_residuals(self) -> Tensor | None:
        """``residuals / |eigenvalues|`` (small means converged; None when residuals are unknown).

        Example:
            >>> lam = torch.tensor([4.0, -2.0], dtype=torch.float64)
            >>> res = torch.tensor([0.04, 0.2], dtype=torch.float64)
            >>> ScoringEvent(0, 1, torch.zeros(2), lam, residuals=res).relative_residuals.tolist()
            [0.01, 0.1]
        """
        if self.residuals is None:
            return None
        return self.residuals / self.eigenvalues.abs()

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
            "uid": self.uid,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ScoringEvent:
        return cls(**state)  # states saved before uids existed get a new one


def check_event_folder(folder: str | os.PathLike, arguments: dict[str, Any]) -> None:
    """Refuse to write into an event folder that an analysis with other result ``arguments``
    made (``result_arguments`` of both sides are compared; a manifest written before a field
    existed counts as that field's default).

    Raises:
        ConfigurationError: naming the arguments that differ and the ways out.
    """
    manifest_path = Path(folder) / MANIFEST_FILE
    if not manifest_path.is_file():
        return
    try:
        theirs = json.loads(manifest_path.read_text()).get("arguments", {})
    except (OSError, ValueError):
        theirs = {}
    shown = argument_differences(
        result_arguments(theirs), result_arguments(json.loads(json.dumps(arguments, default=str)))
    )
    if shown is not None:
        raise ConfigurationError(
            f"{folder} holds an event made with other arguments ({shown}); it is not "
            "overwritten: give this analysis another name= (or dirpath=), or delete that folder"
        )


def write_event(event: ScoringEvent, root: str | os.PathLike) -> Path:
    """Write ``event`` under ``root/event.name`` atomically; sets ``event.directory``.

    The manifest (which marks the folder complete) goes last; an older manifest there is removed
    first, so that a crash half-way never pairs the old manifest with new scores.
    """
    folder = Path(root) / event.name
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
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
    manifest = {
        "uid": event.uid,
        "epoch": event.epoch,
        "global_step": event.global_step,
        **event.manifest,
    }
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
        uid=str(manifest.get("uid") or uuid.uuid5(uuid.NAMESPACE_URL, str(folder.resolve())).hex),
    )


def _complete_events(root: Path) -> list[tuple[tuple[int, int], Path]]:
    found = []
    for child in root.glob("epoch=*-step=*"):
        if (child / MANIFEST_FILE).is_file():
            epoch, _, step = child.name.removeprefix("epoch=").partition("-step=")
            if epoch.isdigit() and step.isdigit():
                found.append(((int(step), int(epoch)), child))
    return found


def latest_event_dir(root: str | os.PathLike) -> Path:
    """The newest complete event folder (highest step, then epoch) under ``root``.

    ``root`` is one analysis' folder (``influence/<name>``) or the ``influence/`` folder above it
    when it holds the events of a single analysis name.

    Raises:
        FileNotFoundError: no complete event there.
        ConfigurationError: ``root`` holds the events of several analysis names (which one is
            meant is the caller's choice: the message lists them).
    """
    root = Path(root)
    found = _complete_events(root)
    if not found:
        named = {
            child.name: events
            for child in sorted(root.glob("*"))
            if child.is_dir() and (events := _complete_events(child))
        }
        if len(named) > 1:
            raise ConfigurationError(
                f"{root} holds the events of several analyses ({', '.join(named)}): pass the "
                "folder of one of them"
            )
        found = next(iter(named.values()), [])
    if not found:
        raise FileNotFoundError(
            f"no complete scoring event (epoch=E-step=S/{MANIFEST_FILE}) under {root}"
        )
    return max(found)[1]


EventSource = ScoringEvent | str | os.PathLike


def load_event(source: EventSource) -> ScoringEvent:
    """A scoring event from an event, an event folder, an analysis' folder of events (the newest),
    or a log dir (``<log_dir>/influence/...``)."""
    if isinstance(source, ScoringEvent):
        return source
    path = Path(source)
    if (path / MANIFEST_FILE).is_file():
        return read_event(path)
    for root in (path, path / "influence"):
        if root.is_dir():
            try:
                return read_event(latest_event_dir(root))
            except FileNotFoundError:
                continue
    raise FileNotFoundError(
        f"{os.fspath(source)!r} is neither a scoring event folder (epoch=E-step=S with "
        "manifest.json) nor a folder holding such events (an InfluenceCallback's influence/<name>/ "
        "folder, or the log_dir above it)"
    )


def load_events(sources: EventSource | Sequence[EventSource] | None) -> list[ScoringEvent]:
    """``load_event`` of each source (one source, a list of them, or None for none)."""
    if sources is None:
        return []
    if isinstance(sources, (str, os.PathLike, ScoringEvent)):
        sources = [sources]
    return [load_event(s) for s in sources]
