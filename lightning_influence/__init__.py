"""lightning-influence: Arnoldi influence functions for PyTorch and PyTorch Lightning.

Find the training examples most responsible for a prediction, and the noisy or mislabeled ones,
with the method of Schioppa et al., "Scaling Up Influence Functions" (AAAI 2022).

The names below are the public API; the README teaches each of them. The maths (HVPs, Arnoldi,
projections, the score formulas) is the documented namespace ``lightning_influence.core``.
The package's layout, from the bottom up:

* ``core``: pure torch maths; no Lightning.
* ``engines``: ``ArnoldiInfluence`` and the baselines (RandProj, TracIn); no Lightning.
* ``config``, ``losses``, ``pruning``, ``io``: arguments as data, per-example losses, the pruning
  maths, and files; no Lightning.
* ``lightning``: ``InfluenceCallback``, ``InfluenceDataModule`` and the one analysis pipeline.
* ``viz``, ``cli``, ``demo``: figures, the command line, the noisy-label demo.

Importing this package (or ``core``, ``engines``) does not import Lightning: the Lightning names
are imported on first use.
"""

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from lightning_influence import core, losses
from lightning_influence.config import (
    AnalysisConfig,
    ArnoldiConfig,
    ConfigurationError,
    PruningConfig,
)
from lightning_influence.engines import (
    ArnoldiInfluence,
    RandomProjectionInfluence,
    TracInInfluence,
)
from lightning_influence.io.events import ScoringEvent, load_event, read_event
from lightning_influence.io.shards import read_scores

__version__ = "0.2.0.dev0"

if TYPE_CHECKING:
    from lightning_influence.lightning.callback import InfluenceCallback
    from lightning_influence.lightning.datamodule import InfluenceDataModule

_LIGHTNING = {
    "InfluenceCallback": "lightning_influence.lightning.callback",
    "InfluenceDataModule": "lightning_influence.lightning.datamodule",
}

# Names the top level exported before 0.2 and where they live now; served with a warning.
_MOVED = {
    "ArnoldiResult": "lightning_influence.core",
    "Eigenpairs": "lightning_influence.core",
    "arnoldi": "lightning_influence.core",
    "distill": "lightning_influence.core",
    "inverse_eigenvalues": "lightning_influence.core",
    "RandomProjectionConfig": "lightning_influence.config",
    "ScoringConfig": "lightning_influence.config",
    "TopInfluences": "lightning_influence.engines",
    "latest_event_dir": "lightning_influence.io",
    "write_event": "lightning_influence.io",
    "cross_entropy_loss": "lightning_influence.losses",
    "mse_loss": "lightning_influence.losses",
}


def __getattr__(name: str) -> Any:
    # The Lightning layer is imported on first use: the engine works without importing Lightning.
    if name in _LIGHTNING:
        return getattr(importlib.import_module(_LIGHTNING[name]), name)
    if name in _MOVED:
        warnings.warn(
            f"lightning_influence.{name} moved to {_MOVED[name]}.{name}; import it from there "
            "(the top level keeps the names the README teaches)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnalysisConfig",
    "ArnoldiConfig",
    "ArnoldiInfluence",
    "ConfigurationError",
    "InfluenceCallback",
    "InfluenceDataModule",
    "PruningConfig",
    "RandomProjectionInfluence",
    "ScoringEvent",
    "TracInInfluence",
    "__version__",
    "core",
    "load_event",
    "losses",
    "read_event",
    "read_scores",
]
