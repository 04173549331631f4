"""lightning-influence: Arnoldi influence functions for PyTorch and PyTorch Lightning.

Find the training examples most responsible for a prediction, and the noisy or mislabeled ones
(high self-influence), with the method of Schioppa et al., "Scaling Up Influence Functions"
(AAAI 2022).
"""

from typing import TYPE_CHECKING, Any

from lightning_influence._engine import TopInfluences
from lightning_influence.arnoldi import ArnoldiResult, Eigenpairs, arnoldi, distill
from lightning_influence.baselines import (
    RandomProjectionConfig,
    RandomProjectionInfluence,
    TracInInfluence,
)
from lightning_influence.config import ArnoldiConfig, ScoringConfig
from lightning_influence.influence import ArnoldiInfluence
from lightning_influence.scores import inverse_eigenvalues

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:
    from lightning_influence.callback import InfluenceCallback
    from lightning_influence.datamodule import InfluenceDataModule


def __getattr__(name: str) -> Any:
    # The Lightning layer is imported on first use: the engine works without importing Lightning.
    if name == "InfluenceCallback":
        from lightning_influence.callback import InfluenceCallback

        return InfluenceCallback
    if name == "InfluenceDataModule":
        from lightning_influence.datamodule import InfluenceDataModule

        return InfluenceDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArnoldiConfig",
    "ArnoldiInfluence",
    "ArnoldiResult",
    "Eigenpairs",
    "InfluenceCallback",
    "InfluenceDataModule",
    "RandomProjectionConfig",
    "RandomProjectionInfluence",
    "ScoringConfig",
    "TopInfluences",
    "TracInInfluence",
    "__version__",
    "arnoldi",
    "distill",
    "inverse_eigenvalues",
]
