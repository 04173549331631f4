"""Scores written in shards as they are computed: memory independent of N, resumable after a kill.

A score directory::

    <dir>/
        index.json            what the scores are (arguments, dataset size), then which shards exist
        shard-000000.csv      position,self_influence,loss,...   (rows in loader order)
        shard-000001.csv      ...

A shard holds one column per signal (``self_influence``, ``loss``, ``validation_influence``, ...);
directories written before signals existed hold ``position,score`` (the self-influence), which
``read_signals`` reads as ``self_influence``.

Every shard is written to a temporary name and renamed into place (``atomic_write``): a shard
file that exists is complete, so a run killed at any point (SIGKILL included) and started again
with the same arguments recomputes only the shards that are missing. ``index.json`` is written
first (``complete: false``) and rewritten last (``complete: true``, the shard list). A directory
made with other arguments, or for a dataset of another size, is refused, never mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from lightning_influence.config import ConfigurationError
from lightning_influence.io.atomic import atomic_write
from lightning_influence.io.manifest import argument_differences

__all__ = ["INDEX_FILE", "ScoreShards", "read_scores", "read_signals"]

INDEX_FILE = "index.json"


def _shard_name(k: int) -> str:
    return f"shard-{k:06d}.csv"


class ScoreShards:
    """The shards of one score directory, for one set of ``arguments``.

    Args:
        directory: where the shards go (created).
        arguments: what the scores depend on (JSON types); compared with an existing index.
        num_examples: the dataset's size when known; compared on resume.
        resume: keep the complete shards of an earlier run with the same arguments; False starts
            over (the existing shards are removed).

    Raises:
        ConfigurationError: the directory holds scores made with other arguments or for a
            dataset of another size.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        arguments: dict[str, Any],
        *,
        num_examples: int | None = None,
        resume: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.arguments = json.loads(json.dumps(arguments, default=str))
        self.num_examples = num_examples
        index = self.directory / INDEX_FILE
        if index.is_file():
            saved = json.loads(index.read_text())
            theirs = saved.get("arguments", {})
            shown = argument_differences(theirs, self.arguments, set(theirs) | set(self.arguments))
            if shown is not None:
                raise ConfigurationError(
                    f"{self.directory} holds scores made with other arguments ({shown}); they are "
                    "not mixed: pass another output directory, or delete that one"
                )
            if saved.get("num_examples") != num_examples:
                raise ConfigurationError(
                    f"{self.directory} holds scores of a dataset of {saved.get('num_examples')} "
                    f"examples, this one has {num_examples}: the dataset changed since, so the "
                    "shards cannot be resumed; pass another output directory, or delete that one"
                )
            if not resume:
                for shard in self.directory.glob("shard-*.csv"):
                    shard.unlink()
        self._write_index(complete=False)

    def _write_index(
        self, complete: bool, shards: int | None = None, total: int | None = None
    ) -> None:
        content = {
            "arguments": self.arguments,
            "num_examples": self.num_examples,
            "complete": complete,
            "shards": shards,
            "scored": total,
        }
        self._guarded(
            "the index",
            lambda: atomic_write(
                self.directory / INDEX_FILE, lambda h: json.dump(content, h, indent=2)
            ),
        )

    def _guarded(self, what: str, write: Any) -> Any:
        try:
            return write()
        except OSError as err:
            raise OSError(
                err.errno,
                f"could not write {what} of {self.directory} ({err.strerror or err}): free disk space "
                "or pass a writable output directory; complete shards are kept and a rerun with "
                "the same arguments resumes from them",
            ) from err

    def done(self, k: int) -> bool:
        """Whether shard ``k`` was written completely (by this run or an earlier one)."""
        return (self.directory / _shard_name(k)).is_file()

    def write(self, k: int, start: int, signals: Tensor | dict[str, Tensor]) -> None:
        """Write shard ``k``: the signals (one ``[n]`` tensor per name; a tensor alone is the
        self-influence) of loader positions ``start, start + 1, ...``."""
        if isinstance(signals, Tensor):
            signals = {"self_influence": signals}
        names = list(signals)
        columns = [signals[n].detach().cpu().double().tolist() for n in names]

        def rows(handle: IO[str]) -> None:
            handle.write(",".join(["position", *names]) + "\n")
            for i, values in enumerate(zip(*columns, strict=True)):
                handle.write(",".join([str(start + i), *map(repr, values)]) + "\n")

        self._guarded(f"shard {k}", lambda: atomic_write(self.directory / _shard_name(k), rows))

    def finish(self, shards: int, total: int) -> None:
        """Mark the directory complete: ``shards`` shards, ``total`` scores."""
        if self.num_examples is not None and total != self.num_examples:
            raise ValueError(
                f"scored {total} examples but the dataset has {self.num_examples}: the loader "
                "does not cover the dataset once"
            )
        self._write_index(complete=True, shards=shards, total=total)


def read_signals(directory: str | os.PathLike) -> dict[str, Tensor]:
    """Every signal of a complete score directory: ``{name: [N] float64}``, in loader order.

    Raises:
        FileNotFoundError: not a score directory, or not complete (a run was interrupted: rerun
            it with the same arguments to resume).
    """
    directory = Path(directory)
    index = directory / INDEX_FILE
    if not index.is_file():
        raise FileNotFoundError(f"{directory} is not a score directory ({INDEX_FILE} is missing)")
    content = json.loads(index.read_text())
    if not content.get("complete"):
        raise FileNotFoundError(
            f"{directory} is not complete (an interrupted run): rerun it with the same arguments, "
            "which resumes from the complete shards"
        )
    parts: dict[str, list[Tensor]] = {}
    for k in range(int(content["shards"])):
        for name, values in _read_shard(directory / _shard_name(k)).items():
            parts.setdefault(name, []).append(values)
    if not parts:
        return {"self_influence": torch.zeros(0, dtype=torch.float64)}
    return {name: torch.cat(values) for name, values in parts.items()}


def read_scores(directory: str | os.PathLike, signal: str = "self_influence") -> Tensor:
    """``[N]`` float64 scores of one signal (the self-influence by default) of a complete score
    directory, in loader order.

    Raises:
        FileNotFoundError: not a score directory, or not complete (a run was interrupted: rerun
            it with the same arguments to resume).
        KeyError: the directory holds no such signal (the message lists those it holds).
    """
    signals = read_signals(directory)
    if signal not in signals:
        raise KeyError(
            f"{os.fspath(directory)} holds no signal {signal!r}; it holds {', '.join(signals)}"
        )
    return signals[signal]


def _read_shard(path: Path) -> dict[str, Tensor]:
    with open(path) as handle:
        header = handle.readline().strip().split(",")[1:]
        names = ["self_influence" if h == "score" else h for h in header]  # before signals
        rows = [line.strip().split(",")[1:] for line in handle if line.strip()]
    values = torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
    values = values.reshape(len(rows), len(names))
    return {name: values[:, j].contiguous() for j, name in enumerate(names)}
