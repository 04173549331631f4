"""The one checkpoint loader: Lightning ``.ckpt`` files and plain state dicts, read once.

Checkpoints are unpickled (``torch.load(..., weights_only=False)``: Lightning checkpoints hold
hyper-parameters and loop state besides tensors): load only checkpoints you trust.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "match_parameter_names",
    "read_checkpoint",
    "saved_init_args",
    "state_dict_of",
]

CheckpointSource = dict[str, Any] | str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not what the caller needs; says the fix."""


def read_checkpoint(path: str | os.PathLike, *, lightning: bool = True) -> dict[str, Any]:
    """Read a checkpoint file onto the CPU.

    Args:
        path: the file.
        lightning: require a Lightning checkpoint (a dict with ``state_dict``).

    Raises:
        FileNotFoundError: the file is missing (the message names the ``.ckpt`` files beside it).
        CheckpointError: the file is unreadable, or (with ``lightning``) has no ``state_dict``.
    """
    file = Path(path)
    if not file.is_file():
        hint = ""
        if file.parent.is_dir():
            found = sorted(p.name for p in file.parent.glob("*.ckpt"))[:5]
            if found:
                hint = f" ({file.parent} holds {', '.join(found)})"
        raise FileNotFoundError(
            f"{os.fspath(path)}: no such file{hint}; pass the path of a checkpoint file"
        )
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"{os.fspath(path)} could not be read as a torch checkpoint "
            f"({type(err).__name__}: {first}): pass a .ckpt written by Lightning"
        ) from None
    if lightning and (not isinstance(checkpoint, dict) or "state_dict" not in checkpoint):
        raise CheckpointError(
            f"{os.fspath(path)} has no 'state_dict': it is not a Lightning checkpoint (save one "
            "with Trainer/ModelCheckpoint, or load plain weights in Python)"
        )
    return checkpoint


def state_dict_of(checkpoint: CheckpointSource) -> dict[str, Tensor]:
    """The tensors of a state dict, a Lightning checkpoint dict, or a file holding either."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_checkpoint(checkpoint, lightning=False)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise TypeError(
            f"a checkpoint must be a state dict or a path to one, got {type(checkpoint).__name__}"
        )
    return checkpoint


def match_parameter_names(state: dict[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """``state`` keyed by ``names``, allowing one common key prefix (``"model."`` of a LightningModule).

    Example:
        >>> match_parameter_names({"model.w": torch.ones(1)}, ["w"])
        {'w': tensor([1.])}
    """
    if all(n in state for n in names):
        return {n: state[n] for n in names}
    first = names[0]
    for key in state:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            if all(prefix + n in state for n in names):
                return {n: state[prefix + n] for n in names}
    missing = [n for n in names if n not in state][:5]
    raise KeyError(
        f"checkpoint has no entries for parameters {missing}: pass checkpoints of this model "
        "(state_dict() of the same architecture, or a Lightning checkpoint of it)"
    )


def saved_init_args(
    cls: type, checkpoint: dict[str, Any], key: str = "hyper_parameters"
) -> dict[str, Any]:
    """The init arguments a run saved (``save_hyperparameters``) that ``cls`` accepts.

    ``key`` is ``"hyper_parameters"`` for the LightningModule, ``"datamodule_hyper_parameters"``
    for the DataModule.
    """
    saved = checkpoint.get(key) or {}
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return dict(saved)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(saved)
    return {k: v for k, v in saved.items() if k in params}
