"""Influence engines: a model, a per-example loss and batches in; eigenpairs and scores out.

``base`` holds what every engine shares (parameters, batches, projections, scoring);
``arnoldi`` is the paper's method, ``random_projection`` and ``tracin`` its baselines. No Lightning.
"""

from lightning_influence.engines.arnoldi import ArnoldiInfluence
from lightning_influence.engines.base import EngineBase, ProjectedInfluence, TopInfluences
from lightning_influence.engines.random_projection import RandomProjectionInfluence
from lightning_influence.engines.tracin import TracInInfluence

__all__ = [
    "ArnoldiInfluence",
    "EngineBase",
    "ProjectedInfluence",
    "RandomProjectionInfluence",
    "TopInfluences",
    "TracInInfluence",
]
