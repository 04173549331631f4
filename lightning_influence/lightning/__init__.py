"""The Lightning layer: ``InfluenceCallback``, ``InfluenceDataModule`` and what they share.

Everything here orchestrates; the maths is in ``lightning_influence.core`` and ``.engines``.
"""

# namespaces first: it imports both Lightning namespaces and keeps the user's rank-zero logger,
# which it can only tell while no module of ours has imported pytorch_lightning yet
from lightning_influence.lightning import namespaces as _namespaces  # noqa: F401
from lightning_influence.lightning.callback import InfluenceCallback
from lightning_influence.lightning.datamodule import InfluenceDataModule

__all__ = ["InfluenceCallback", "InfluenceDataModule"]
