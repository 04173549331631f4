"""What a manifest says: every argument of the analysis (its config) and provenance.

The ``"result"`` arguments (``lightning_influence.config`` gives each field its role) are what
names an analysis: ``analysis_name`` is a short hash of those that differ from their defaults, so
that two analyses with other results never write into the same folder, and they are what
``check_event_folder`` compares before writing over an event.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import platform
from typing import Any

import numpy as np
import torch

from lightning_influence.config import AnalysisConfig, field_names
from lightning_influence.losses import LossFn, loss_name

__all__ = [
    "analysis_arguments",
    "analysis_name",
    "argument_differences",
    "build_manifest",
    "result_arguments",
    "versions",
]


def analysis_arguments(config: AnalysisConfig, loss_fn: LossFn | None) -> dict[str, Any]:
    """Every argument of an analysis as plain JSON types (a predicate ``params`` by its name), less
    the display fields (progress bars), plus the loss' name: the manifest's ``arguments``."""
    arguments = {
        name: getattr(config, name)
        for name in field_names(AnalysisConfig, "result", "execution", "schedule")
    }
    params = arguments["params"]
    if callable(params):
        arguments["params"] = getattr(params, "__qualname__", repr(params))
    arguments["loss_fn"] = loss_name(loss_fn)
    return json.loads(json.dumps(arguments, default=str))


@functools.cache
def _defaults() -> dict[str, Any]:
    return analysis_arguments(AnalysisConfig(), None)


def result_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments that decide what an event holds: the ``"result"`` fields of
    ``AnalysisConfig`` and the loss. A field missing from ``arguments`` (a manifest written before
    the field existed) takes its default, which is what that analysis used."""
    defaults = _defaults()
    names = (*field_names(AnalysisConfig, "result"), "loss_fn")
    return {k: arguments.get(k, defaults[k]) for k in names}


def analysis_name(arguments: dict[str, Any]) -> str:
    """A short, stable name for an analysis: ``arnoldi-`` and 8 hex digits of the SHA-1 of its
    result arguments that differ from their defaults, and of the loss' name.

    Only the non-defaults count, so a field added later (at its default) never renames an
    existing analysis' folder, and the fields that say how or when an analysis runs never do.

    Example:
        >>> analysis_name({"n_iters": 30, "top_k": 20}) == analysis_name({})
        True
        >>> analysis_name({"top_k": 10})
        'arnoldi-55afa3e7'
    """
    defaults = _defaults()
    ours = result_arguments(arguments)
    changed = {k: v for k, v in ours.items() if k == "loss_fn" or v != defaults[k]}
    digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()
    return f"arnoldi-{digest[:8]}"


def argument_differences(
    theirs: dict[str, Any], ours: dict[str, Any], keys: Any = None
) -> str | None:
    """``"k=<theirs> there vs <ours> here, ..."`` for the ``keys`` (default: ours) whose values
    differ (at most four shown), or None when they agree: the text of every refusal to mix."""
    keys = ours if keys is None else keys
    differing = sorted(k for k in keys if ours.get(k) != theirs.get(k))
    if not differing:
        return None
    return ", ".join(f"{k}={theirs.get(k)!r} there vs {ours.get(k)!r} here" for k in differing[:4])


def versions(namespace: str | None = None) -> dict[str, str]:
    """Versions of the packages that made a result; with ``namespace`` (``"pytorch_lightning"``
    or ``"lightning.pytorch"``), the version of the Lightning package that ran it, under its
    package's name (``pytorch_lightning`` or ``lightning``).

    Example:
        >>> v = versions("pytorch_lightning")
        >>> sorted(k for k in v if k in ("lightning_influence", "pytorch_lightning", "torch"))
        ['lightning_influence', 'pytorch_lightning', 'torch']
    """
    import importlib

    import lightning_influence

    out = {
        "lightning_influence": lightning_influence.__version__,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }
    package = (namespace or "pytorch_lightning").split(".")[0]
    with contextlib.suppress(ImportError):  # the Lightning layer needs it; the core does not
        out[package] = str(importlib.import_module(package).__version__)
    return out


def build_manifest(
    arguments: dict[str, Any], *, namespace: str | None = None, **provenance: Any
) -> dict[str, Any]:
    """``{"method": "arnoldi", "arguments": ..., **provenance, "versions": ...}`` as plain JSON.

    ``namespace``: the Lightning namespace of the run (recorded, and its package's version).
    Plain JSON types only: the manifest also goes into checkpoints, which Lightning may load with
    ``weights_only=True`` (``torch.__version__`` is a TorchVersion, not a str).
    """
    manifest = {
        "method": "arnoldi",
        "arguments": arguments,
        **provenance,
        "lightning_namespace": namespace,
        "versions": versions(namespace),
    }
    return json.loads(json.dumps(manifest, default=str))
