"""The Lightning layer: ``InfluenceCallback``, ``InfluenceDataModule`` and what they share.

Everything here orchestrates; the maths is in ``lightning_influence.core`` and ``.engines``.
"""

from lightning_influence.lightning.callback import InfluenceCallback
from lightning_influence.lightning.datamodule import InfluenceDataModule

__all__ = ["InfluenceCallback", "InfluenceDataModule"]
