"""Import paths of lightning-influence 0.1 that moved in the package's layout of 0.2.

``from lightning_influence.callback import InfluenceCallback`` and the like keep working, with a
``DeprecationWarning`` naming the new path. An import hook serves the old module names, so the
folder tree shows only the new layout (one shim file per old module would hide it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

__all__: list[str] = []

# old module (under lightning_influence.) -> the module(s) its public names now live in
MOVED: dict[str, tuple[str, ...]] = {
    "arnoldi": ("lightning_influence.core.arnoldi",),
    "hvp": ("lightning_influence.core.hvp",),
    "projection": ("lightning_influence.core.projection",),
    "scores": ("lightning_influence.core.scores",),
    "parameters": ("lightning_influence.core.parameters",),
    "influence": ("lightning_influence.engines.arnoldi",),
    "baselines": (
        "lightning_influence.engines.random_projection",
        "lightning_influence.engines.tracin",
        "lightning_influence.config",
    ),
    "results": ("lightning_influence.io.events",),
    "callback": ("lightning_influence.lightning.callback",),
    "datamodule": ("lightning_influence.lightning.datamodule",),
    "sampler": ("lightning_influence.lightning.sampler", "lightning_influence.pruning.plan"),
    "loggers": ("lightning_influence.lightning.loggers",),
}
_PREFIX = "lightning_influence."


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        if fullname.startswith(_PREFIX) and fullname[len(_PREFIX) :] in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return types.ModuleType(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        targets = MOVED[module.__name__[len(_PREFIX) :]]
        warnings.warn(
            f"{module.__name__} moved to {' and '.join(targets)}; import from there (or from "
            "lightning_influence); the old path will be removed in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        names: list[str] = []
        for target in targets:
            source = importlib.import_module(target)
            public = getattr(source, "__all__", None) or [
                n for n in vars(source) if not n.startswith("_")
            ]
            for name in public:
                setattr(module, name, getattr(source, name))
                names.append(name)
        module.__all__ = names  # type: ignore[attr-defined]


def install() -> None:
    """Serve the old module names (idempotent)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
