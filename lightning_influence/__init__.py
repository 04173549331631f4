"""lightning-influence: Arnoldi influence functions for PyTorch and PyTorch Lightning.

Find the training examples most responsible for a prediction, and the noisy or mislabeled ones
(high self-influence), with the method of Schioppa et al., "Scaling Up Influence Functions"
(AAAI 2022).

The package's layout, from the bottom up:

* ``core``: pure torch maths (HVPs, Arnoldi, projections, score formulas); no Lightning.
* ``engines``: ``ArnoldiInfluence`` and the baselines (RandProj, TracIn); no Lightning.
* ``config``, ``losses``, ``pruning``, ``io``: arguments as data, per-example losses, the pruning
  maths, and files; no Lightning.
* ``lightning``: ``InfluenceCallback``, ``InfluenceDataModule`` and the one analysis pipeline.
* ``viz``, ``cli``, ``demo``: figures, the command line, the noisy-label demo.

Importing this package (or ``core``, ``engines``) does not import Lightning: the Lightning names
are imported on first use.
"""

from typing import TYPE_CHECKING, Any

from lightning_influence import _moved
from lightning_influence.config import (
    AnalysisConfig,
    ArnoldiConfig,
    ConfigurationError,
    PruningConfig,
    RandomProjectionConfig,
    ScoringConfig,
)
from lightning_influence.core.arnoldi import ArnoldiResult, Eigenpairs, arnoldi, distill
from lightning_influence.core.scores import inverse_eigenvalues
from lightning_influence.engines import (
    ArnoldiInfluence,
    RandomProjectionInfluence,
    TopInfluences,
    TracInInfluence,
)
from lightning_influence.io.events import ScoringEvent, latest_event_dir, read_event, write_event
from lightning_influence.losses import cross_entropy_loss, mse_loss

__version__ = "0.2.0.dev0"

_moved.install()

if TYPE_CHECKING:
    from lightning_influence.lightning.callback import InfluenceCallback
    from lightning_influence.lightning.datamodule import InfluenceDataModule

_LIGHTNING = {
    "InfluenceCallback": "lightning_influence.lightning.callback",
    "InfluenceDataModule": "lightning_influence.lightning.datamodule",
}


def __getattr__(name: str) -> Any:
    # The Lightning layer is imported on first use: the engine works without importing Lightning.
    if name in _LIGHTNING:
        import importlib

        return getattr(importlib.import_module(_LIGHTNING[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnalysisConfig",
    "ArnoldiConfig",
    "ArnoldiInfluence",
    "ArnoldiResult",
    "ConfigurationError",
    "Eigenpairs",
    "InfluenceCallback",
    "InfluenceDataModule",
    "PruningConfig",
    "RandomProjectionConfig",
    "RandomProjectionInfluence",
    "ScoringConfig",
    "ScoringEvent",
    "TopInfluences",
    "TracInInfluence",
    "__version__",
    "arnoldi",
    "cross_entropy_loss",
    "distill",
    "inverse_eigenvalues",
    "latest_event_dir",
    "mse_loss",
    "read_event",
    "write_event",
]
