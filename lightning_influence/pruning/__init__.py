"""Pruning by self-influence: the maths (``functional``), testable without a Trainer. No Lightning."""

from lightning_influence.pruning.functional import (
    CombineMode,
    combine_scores,
    drop_mask,
    quantiles,
    reweight,
)
from lightning_influence.pruning.plan import SamplingPlan

__all__ = ["CombineMode", "SamplingPlan", "combine_scores", "drop_mask", "quantiles", "reweight"]
