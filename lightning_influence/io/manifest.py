"""What a manifest says: every argument of the analysis (``asdict`` of its config) and provenance.

``arguments`` is also what names an analysis: ``analysis_name`` is a short hash of it, so that two
analyses with other arguments never write into the same folder, and what ``check_event_folder``
compares before writing over an event.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from typing import Any

import numpy as np
import torch

from lightning_influence.config import AnalysisConfig
from lightning_influence.losses import LossFn, loss_name

__all__ = [
    "SCHEDULE_FIELDS",
    "analysis_arguments",
    "analysis_name",
    "argument_differences",
    "build_manifest",
    "scoring_arguments",
    "versions",
]

# Fields that change what is shown, never what is computed: left out of the arguments.
_DISPLAY_ONLY = ("progress",)
# Fields that say when and how an analysis runs, not what an event holds: in the manifest, but
# not in the name of the analysis' folder nor in the comparison before writing over an event.
SCHEDULE_FIELDS = (
    "every_n_epochs",
    "at_train_end",
    "on_error",
    "log_top_n",
    "max_events",
    "num_workers",
    "shard_batches",
    "basis_file",  # where the basis is stored, not what it holds
    "hvp_cache",  # how the products are computed, not what they are
)


def analysis_arguments(config: AnalysisConfig, loss_fn: LossFn | None) -> dict[str, Any]:
    """Every argument of an analysis as plain JSON types (a predicate ``params`` by its name)."""
    arguments = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in _DISPLAY_ONLY
    }
    params = arguments["params"]
    if callable(params):
        arguments["params"] = getattr(params, "__qualname__", repr(params))
    arguments["loss_fn"] = loss_name(loss_fn)
    return json.loads(json.dumps(arguments, default=str))


# Fields added after names were first given: left out of the scoring arguments at their default,
# so that an analysis that does not use them keeps the name (and the folder) it had before.
_NEW_FIELD_DEFAULTS = {"restart_tol": None}


def scoring_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments that decide what an event holds (``arguments`` less ``SCHEDULE_FIELDS``, and
    less the newer fields left at their defaults)."""
    return {
        k: v
        for k, v in arguments.items()
        if k not in SCHEDULE_FIELDS
        and not (k in _NEW_FIELD_DEFAULTS and v == _NEW_FIELD_DEFAULTS[k])
    }


def analysis_name(arguments: dict[str, Any]) -> str:
    """A short, stable name for an analysis: ``arnoldi-`` and 8 hex digits of the SHA-1 of its
    scoring arguments (so callbacks that differ only in when they run share a folder).

    Example:
        >>> analysis_name({"n_iters": 200, "top_k": 100})
        'arnoldi-bbd80d3c'
    """
    scoring = scoring_arguments(arguments)
    digest = hashlib.sha1(json.dumps(scoring, sort_keys=True).encode()).hexdigest()
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


def versions() -> dict[str, str]:
    """Versions of the packages that made a result."""
    import lightning_influence

    out = {
        "lightning_influence": lightning_influence.__version__,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }
    try:
        import pytorch_lightning

        out["pytorch_lightning"] = str(pytorch_lightning.__version__)
    except ImportError:  # pragma: no cover - the Lightning layer needs it
        pass
    return out


def build_manifest(arguments: dict[str, Any], **provenance: Any) -> dict[str, Any]:
    """``{"method": "arnoldi", "arguments": ..., **provenance, "versions": ...}`` as plain JSON.

    Plain JSON types only: the manifest also goes into checkpoints, which Lightning may load with
    ``weights_only=True`` (``torch.__version__`` is a TorchVersion, not a str).
    """
    manifest = {"method": "arnoldi", "arguments": arguments, **provenance, "versions": versions()}
    return json.loads(json.dumps(manifest, default=str))
