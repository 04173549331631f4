"""Scoring events and their folders: what the callback produces and the DataModule consumes.

One scoring event (an analysis at some epoch and step) is a folder, the single source of truth::

    <log_dir>/influence/<name>/epoch=E-step=S/
        signals.csv          index,self_influence,loss,validation_influence,...  (one row per
                             training example, by dataset index; one column per signal)
        eigenvalues.csv      rank,eigenvalue,residual  (sorted by |eigenvalue|, descending)
        eigenpairs.safetensors  the eigenvectors too (``io.eigenpairs``; size-capped)
        manifest.json        uid, arguments, epoch, step, timings, versions, and the SHA-256 of
                             every file above (``files``)

``<name>`` is the analysis' name (``InfluenceCallback(name=...)``; by default a short hash of its
arguments), so analyses with other arguments never share a folder; writing into an event folder
made with other arguments or other weights is refused (``check_event_folder``).

``pandas.read_csv(folder / "signals.csv", index_col="index")`` reads every signal in one call.
Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file; the manifest is written last and marks the folder complete. Checkpoints hold
``EventRef`` s (uid, folder, the signals' hash), not the ``[N]`` tensors: resuming reads the
folders. Folders written before signals existed (``self_influence.csv``) still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from lightning_influence.config import ConfigurationError
from lightning_influence.io.atomic import atomic_write
from lightning_influence.io.manifest import argument_differences, result_arguments

__all__ = [
    "EventRef",
    "ScoringEvent",
    "check_event_folder",
    "latest_event_dir",
    "load_event",
    "load_events",
    "read_event",
    "write_event",
]

SIGNALS_FILE = "signals.csv"
LEGACY_SCORES_FILE = "self_influence.csv"  # folders written before signals existed
EIGENVALUES_FILE = "eigenvalues.csv"
MANIFEST_FILE = "manifest.json"


@dataclass
class ScoringEvent:
    """The result of one analysis of the training set.

    Attributes:
        epoch: the epoch whose end (or checkpoint) was analysed.
        global_step: the trainer's global step then.
        signals: ``{name: [N] float64}`` per-example signals indexed by dataset index
            (``self_influence``, ``loss``, ``validation_influence``, ``aum``, ...; see
            ``lightning_influence.pruning.signals``). A tensor given here is the self-influence.
        eigenvalues: ``[k]`` float64, sorted by ``|lambda|`` descending.
        residuals: ``[k]`` Ritz residual estimates (NaN where unknown).
        directory: the event's folder, once written.
        manifest: arguments, timings and versions (JSON-serializable).
        uid: unique id of this event (in its manifest too): a newer analysis of the same step
            is a new event, and caches key on it.
    """

    epoch: int
    global_step: int
    signals: dict[str, Tensor]
    eigenvalues: Tensor
    residuals: Tensor | None = None
    directory: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if isinstance(self.signals, Tensor):
            self.signals = {"self_influence": self.signals}
        elif not isinstance(self.signals, Mapping):
            raise TypeError(
                f"signals must be a dict of [N] tensors (or one tensor, the self-influence), got "
                f"{type(self.signals).__name__}"
            )
        sizes = {name: int(t.numel()) for name, t in self.signals.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"an event's signals must score the same examples, got sizes {sizes}")
        self.signals = dict(self.signals)

    @property
    def self_influence(self) -> Tensor:
        """``[N]`` float64 self-influence by dataset index (the ``self_influence`` signal)."""
        return self.signal("self_influence")

    @property
    def num_examples(self) -> int:
        """N, the number of examples every signal scores."""
        return next(iter(self.signals.values())).numel() if self.signals else 0

    def signal(self, name: str) -> Tensor:
        """The signal ``name``; a ``KeyError`` names the signals the event holds."""
        if name not in self.signals:
            raise KeyError(
                f"event {self.name} ({self.directory or 'in memory'}) holds no signal {name!r}; "
                f"it holds {', '.join(self.signals) or 'none'}"
            )
        return self.signals[name]

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

    def ref(self) -> EventRef:
        """The reference a checkpoint keeps of a written event."""
        if self.directory is None:
            raise ValueError(f"event {self.name} has no folder yet: write it first")
        return EventRef(
            uid=self.uid,
            directory=self.directory,
            epoch=self.epoch,
            global_step=self.global_step,
            sha256=str(self.manifest.get("files", {}).get(SIGNALS_FILE, "")),
        )

    def state_dict(self) -> dict[str, Any]:
        """The whole event, tensors included (for events that have no folder)."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "signals": {n: t.cpu() for n, t in self.signals.items()},
            "eigenvalues": self.eigenvalues.cpu(),
            "residuals": None if self.residuals is None else self.residuals.cpu(),
            "directory": self.directory,
            "manifest": self.manifest,
            "uid": self.uid,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ScoringEvent:
        state = dict(state)
        if "self_influence" in state:  # states saved before signals existed
            state["signals"] = {"self_influence": state.pop("self_influence")}
        return cls(**state)  # states saved before uids existed get a new one


@dataclass(frozen=True)
class EventRef:
    """What a checkpoint keeps of a written event: its uid, folder and the SHA-256 of its
    ``signals.csv``; ``resolve`` reads the event back and checks both."""

    uid: str
    directory: str
    epoch: int
    global_step: int
    sha256: str = ""

    def state_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "directory": self.directory,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "sha256": self.sha256,
        }

    def resolve(self) -> ScoringEvent:
        """The event, read from its folder.

        Raises:
            FileNotFoundError: the folder (or its manifest) is gone; the message says what the
                checkpoint needs.
            ValueError: the folder now holds another event (another uid) or other signals (the
                hash differs).
        """
        folder = Path(self.directory)
        if not (folder / MANIFEST_FILE).is_file():
            raise FileNotFoundError(
                f"the checkpoint refers to the scoring event {self.uid} in {folder}, which is "
                "missing: the event folders are part of a run's state (keep the run's influence/ "
                "folder beside its checkpoints, or resume without the checkpoint)"
            )
        event = read_event(folder)
        if event.uid != self.uid:
            raise ValueError(
                f"{folder} holds event {event.uid}, not the event {self.uid} the checkpoint refers "
                "to (it was written over): resume from a checkpoint of that later run"
            )
        path = folder / SIGNALS_FILE
        digest = _sha256(path) if path.is_file() else None
        if self.sha256 and digest and digest != self.sha256:
            raise ValueError(
                f"{folder / SIGNALS_FILE} changed since the checkpoint was saved (SHA-256 "
                f"{digest[:12]} vs {self.sha256[:12]}): it is not the event the run used"
            )
        return event

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EventRef:
        return cls(**state)


def weights_fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """A SHA-256 of the analysed weights (names, shapes, values): what an event was made from.

    Example:
        >>> a = weights_fingerprint({"w": torch.ones(2)})
        >>> a == weights_fingerprint({"w": torch.ones(2)}), a == weights_fingerprint({"w": torch.zeros(2)})
        (True, False)
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check_event_folder(
    folder: str | os.PathLike, arguments: dict[str, Any], weights: str | None = None
) -> bool:
    """Refuse to write into an event folder that another analysis made: other result
    ``arguments`` (``result_arguments`` of both sides are compared; a manifest written before a
    field existed counts as that field's default) or other ``weights`` (``weights_fingerprint``).

    Returns:
        True when the folder already holds this very event (the same arguments and weights):
        the caller reuses it instead of computing it again; False when there is none.

    Raises:
        ConfigurationError: naming what differs and the ways out.
    """
    manifest_path = Path(folder) / MANIFEST_FILE
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    theirs = manifest.get("arguments", {})
    shown = argument_differences(
        result_arguments(theirs), result_arguments(json.loads(json.dumps(arguments, default=str)))
    )
    if shown is not None:
        raise ConfigurationError(
            f"{folder} holds an event made with other arguments ({shown}); it is not "
            "overwritten: give this analysis another name= (or dirpath=), or delete that folder"
        )
    their_weights = manifest.get("weights_sha256")
    if weights is not None and their_weights != weights:
        made_by = manifest.get("checkpoint") or f"a run at epoch {manifest.get('epoch')}"
        raise ConfigurationError(
            f"{folder} holds an event of other weights (made from {made_by}); it is not "
            "overwritten: give this analysis another name= (or dirpath=, --out), use a new "
            "log version for a new run, or delete that folder"
        )
    return weights is not None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_event(event: ScoringEvent, root: str | os.PathLike) -> Path:
    """Write ``event`` under ``root/event.name`` atomically; sets ``event.directory`` and the
    manifest's ``files`` (the SHA-256 of each file).

    The manifest (which marks the folder complete) goes last; an older manifest there is removed
    first, so that a crash half-way never pairs the old manifest with new signals.
    """
    folder = Path(root) / event.name
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    names = list(event.signals)
    columns = [event.signals[n].detach().cpu().double().tolist() for n in names]
    lam = event.eigenvalues.detach().cpu().double().tolist()
    res = (
        event.residuals.detach().cpu().double().tolist()
        if event.residuals is not None
        else [float("nan")] * len(lam)
    )

    def write_signals(handle: IO[str]) -> None:
        handle.write(",".join(["index", *names]) + "\n")
        for i, values in enumerate(zip(*columns, strict=True)):
            handle.write(",".join([str(i), *map(repr, values)]) + "\n")

    def write_eigenvalues(handle: IO[str]) -> None:
        handle.write("rank,eigenvalue,residual\n")
        handle.writelines(
            f"{i},{v!r},{r!r}\n" for i, (v, r) in enumerate(zip(lam, res, strict=True))
        )

    atomic_write(folder / SIGNALS_FILE, write_signals)
    atomic_write(folder / EIGENVALUES_FILE, write_eigenvalues)
    (folder / LEGACY_SCORES_FILE).unlink(missing_ok=True)
    files = dict(event.manifest.get("files", {}))
    written = [SIGNALS_FILE, EIGENVALUES_FILE]
    if (folder / "eigenpairs.safetensors").is_file():
        written.append("eigenpairs.safetensors")
    files.update({f: _sha256(folder / f) for f in written})
    event.manifest = {**event.manifest, "files": files}
    manifest = {
        "uid": event.uid,
        "epoch": event.epoch,
        "global_step": event.global_step,
        "signals": names,
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
    """Read a scoring event written by ``write_event`` (or by ``InfluenceCallback``), including
    folders written before signals existed."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a complete scoring event: {MANIFEST_FILE} is missing (pass a folder "
            "named epoch=E-step=S written by InfluenceCallback)"
        )
    manifest = json.loads(manifest_path.read_text())
    path = folder / SIGNALS_FILE
    if not path.is_file():
        path = folder / LEGACY_SCORES_FILE
    columns = _read_csv_columns(path)
    index = torch.tensor(columns.pop("index"), dtype=torch.long)
    size = int(index.max()) + 1 if len(index) else 0
    signals = {}
    for name, values in columns.items():
        full = torch.full((size,), float("nan"), dtype=torch.float64)
        full[index] = torch.tensor(values, dtype=torch.float64)
        signals[name] = full
    eig = _read_csv_columns(folder / EIGENVALUES_FILE)
    return ScoringEvent(
        epoch=int(manifest["epoch"]),
        global_step=int(manifest["global_step"]),
        signals=signals,
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
