"""Both Lightning namespaces: ``pytorch_lightning`` and ``lightning.pytorch`` (the ``lightning`` package).

The two namespaces ship the same classes twice, as unrelated hierarchies: a
``lightning.pytorch.Trainer`` accepts only *its* ``LightningDataModule``, and
``isinstance(logger, pytorch_lightning.loggers.TensorBoardLogger)`` is False for a
``lightning.pytorch`` logger. This module knows which namespaces are importable and gives

* ``classes("loggers.TensorBoardLogger")``: the class from every importable namespace, a tuple
  for ``isinstance``;
* ``bases("LightningDataModule")``: the same tuple, as the bases of our subclasses, so that
  ``InfluenceDataModule`` and ``InfluenceCallback`` are instances of both namespaces' classes
  (the hierarchies are disjoint, so the method resolution order is well defined and the
  ``pytorch_lightning`` implementation, listed first, wins);
* ``is_overridden(name, instance)``: Lightning's check, for an instance of either namespace.

``pytorch_lightning`` is a required dependency; ``lightning`` is used when it is installed.

Example:
    >>> from lightning_influence.lightning.namespaces import NAMESPACES, classes
    >>> NAMESPACES[0]
    'pytorch_lightning'
    >>> import pytorch_lightning as pl
    >>> classes("loggers.TensorBoardLogger")[0] is pl.loggers.TensorBoardLogger
    True
"""

from __future__ import annotations

import importlib
import sys
from functools import cache
from typing import TYPE_CHECKING, Union

from lightning_utilities.core.imports import RequirementCache

__all__ = [
    "NAMESPACES",
    "AnyLightningDataModule",
    "MisconfigurationException",
    "bases",
    "classes",
    "is_overridden",
    "namespace_of",
]


# Each namespace, when first imported, points lightning_utilities' shared rank-zero logger and
# deprecation category at its own: importing the second one here must not move them away from
# the namespace the user imported (or, when they imported none yet, the primary one), or the
# user's `logging.getLogger("pytorch_lightning...")` settings stop applying to Lightning's messages.
_SHARED_RANK_ZERO = ("log", "rank_zero_deprecation_category")


def _importable() -> tuple[str, ...]:
    import lightning_utilities.core.rank_zero as rank_zero

    def shared() -> dict[str, object]:
        return {
            name: getattr(rank_zero, name) for name in _SHARED_RANK_ZERO if hasattr(rank_zero, name)
        }

    users = any(name in sys.modules for name in ("pytorch_lightning", "lightning.pytorch"))
    keep = shared() if users else None
    found = []
    for namespace, requirement in (
        ("pytorch_lightning", "pytorch_lightning"),
        ("lightning.pytorch", "lightning"),
    ):
        if not RequirementCache(requirement):
            continue
        try:
            importlib.import_module(namespace)
        except ImportError:  # a broken or partial install: serve the namespaces that import
            continue
        found.append(namespace)
        if keep is None:
            keep = shared()
    for name, value in (keep or {}).items():
        setattr(rank_zero, name, value)
    if not found:
        raise ImportError(
            "lightning-influence needs PyTorch Lightning: pip install pytorch-lightning "
            "(or the unified package: pip install lightning)"
        )
    return tuple(found)


NAMESPACES: tuple[str, ...] = _importable()
"""The importable namespaces, ``pytorch_lightning`` first."""


@cache
def classes(name: str) -> tuple[type, ...]:
    """The class ``name`` (a dotted path below the namespace) from every importable namespace.

    Args:
        name: e.g. ``"Trainer"``, ``"LightningDataModule"``, ``"loggers.TensorBoardLogger"``,
            ``"utilities.exceptions.MisconfigurationException"``.

    Raises:
        AttributeError: no importable namespace has ``name``.
    """
    module_path, _, attribute = name.rpartition(".")
    found = []
    for namespace in NAMESPACES:
        module = importlib.import_module(f"{namespace}.{module_path}" if module_path else namespace)
        cls = getattr(module, attribute, None)
        if isinstance(cls, type):
            found.append(cls)
    if not found:
        raise AttributeError(
            f"name={name!r} is not a class of {' or '.join(NAMESPACES)}: give a dotted path "
            "below the namespace, e.g. 'loggers.TensorBoardLogger'"
        )
    return tuple(found)


if TYPE_CHECKING:
    from pytorch_lightning import LightningDataModule as AnyLightningDataModule
else:
    # A runtime Union, for parsers that read annotations (LightningCLI's jsonargparse): a
    # `class_path` of either namespace's LightningDataModule subclass is accepted.
    AnyLightningDataModule = Union[classes("LightningDataModule")]  # noqa: UP007


def bases(name: str) -> tuple[type, ...]:
    """The bases for a subclass of ``name`` that is an instance of it in every namespace.

    Example: ``class InfluenceCallback(*bases("Callback")): ...``.
    """
    return classes(name)


def namespace_of(obj: object) -> str | None:
    """``"pytorch_lightning"`` or ``"lightning.pytorch"``: where ``obj``'s Lightning class lives.

    For our own classes (instances of both namespaces) and non-Lightning objects: None.
    """
    owners = {
        namespace
        for cls in type(obj).__mro__
        for namespace in NAMESPACES
        if cls.__module__ == namespace or cls.__module__.startswith(namespace + ".")
    }
    return owners.pop() if len(owners) == 1 else None


_PARENTS = ("LightningModule", "LightningDataModule", "Callback")


def is_overridden(method_name: str, instance: object) -> bool:
    """Whether ``instance`` (a LightningModule, LightningDataModule or Callback of either
    namespace) overrides ``method_name`` of its Lightning parent class.

    Raises:
        TypeError: ``instance`` is none of those.
    """
    for parent_name in _PARENTS:
        for namespace, parent in zip(NAMESPACES, classes(parent_name), strict=True):
            if isinstance(instance, parent):
                helpers = importlib.import_module(f"{namespace}.utilities.model_helpers")
                return helpers.is_overridden(method_name, instance, parent=parent)
    raise TypeError(
        f"instance={type(instance).__name__} is not a LightningModule, LightningDataModule or "
        "Callback"
    )


class MisconfigurationException(*bases("utilities.exceptions.MisconfigurationException")):  # type: ignore[misc]
    """Lightning's ``MisconfigurationException`` of every namespace: ``except`` clauses written
    for either namespace catch the configuration errors our callbacks raise."""
