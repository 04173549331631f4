"""Every use of Lightning's private API, in one place, each guarded and tested
(``tests/lightning/test_compat.py``), so that a Lightning release that moves one is one fix here.

* ``before_batch_transfer``: Lightning >= 2.5 applies ``on_before_batch_transfer`` outside
  ``batch_to_device``; its private ``LightningModule._on_before_batch_transfer`` picks the
  DataModule's hook or the module's, as training does. Older releases have no such method (the
  move applies the hook).
* ``log_hyperparams_flag``: a DataModule's private ``_log_hyperparams`` switch, which a wrapper
  must carry over from the module it wraps.
* ``validation_source``: where the fit's validation loader comes from (the LightningModule, the
  DataModule or loaders passed to ``fit``): the validation loop's ``_data_source``.
* ``is_sharded``: whether a strategy shards the parameters (FSDP, DeepSpeed), by ``isinstance``
  on the strategy classes of every importable namespace.
* ``callbacks_being_validated``: the callback list Lightning's ``Trainer`` is checking for
  duplicate ``state_key`` s when it asks for one (its ``_validate_callbacks_list`` runs at
  construction, before any hook), so that a callback can explain a collision in its own words.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from lightning_influence.lightning.namespaces import NAMESPACES

__all__ = [
    "before_batch_transfer",
    "callbacks_being_validated",
    "is_sharded",
    "log_hyperparams_flag",
    "validation_source",
]


def before_batch_transfer(module: Any) -> Callable[..., Any] | None:
    """The module's ``_on_before_batch_transfer(batch, dataloader_idx=0)`` (Lightning >= 2.5), or
    None where Lightning applies the hook inside ``batch_to_device``."""
    return getattr(module, "_on_before_batch_transfer", None)


def log_hyperparams_flag(datamodule: Any) -> bool:
    """Whether Lightning logs this DataModule's hyper-parameters (its private flag)."""
    return bool(getattr(datamodule, "_log_hyperparams", True))


def validation_source(trainer: Any) -> Callable[[], Any] | None:
    """A function returning the fit's validation loader(s), or None when the fit has none.

    The validation loop knows where its loaders come from (a ``val_dataloader`` hook of the
    LightningModule or DataModule, or loaders passed to ``fit``), before it first runs.
    """
    try:
        source = trainer.fit_loop.epoch_loop.val_loop._data_source  # noqa: SLF001
    except AttributeError:
        return None
    if source is None or getattr(source, "instance", None) is None:
        return None
    if not source.is_defined():
        return None
    return source.dataloader


_SHARDED = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy")


def is_sharded(strategy: Any) -> bool:
    """Whether ``strategy`` shards the parameters across ranks (FSDP, DeepSpeed, model parallel)."""
    for namespace in NAMESPACES:
        module = importlib.import_module(f"{namespace}.strategies")
        for name in _SHARDED:
            cls = getattr(module, name, None)
            if isinstance(cls, type) and isinstance(strategy, cls):
                return True
    return False


def callbacks_being_validated() -> list[Any] | None:
    """The callbacks of a ``Trainer`` under construction, when the caller's ``state_key`` is asked
    by Lightning's duplicate check; None otherwise (the check's frame is found by name, a few
    frames up: a Lightning release that renames it only loses the better message)."""
    frame = sys._getframe(1)  # noqa: SLF001 - the only way to see the caller's context
    for _ in range(4):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return None
        if frame.f_code.co_name == "_validate_callbacks_list":
            callbacks = frame.f_locals.get("callbacks")
            return list(callbacks) if isinstance(callbacks, list) else None
    return None
