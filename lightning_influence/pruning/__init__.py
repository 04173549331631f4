"""Pruning by self-influence, testable without a Trainer. No Lightning.

``functional``: the maths (quantiles, combining events, the drop mask, sampling weights);
``plan``: the ``SamplingPlan`` an epoch follows and ``plan_for`` that makes it from events.
"""

from lightning_influence.pruning.functional import (
    CombineMode,
    combine_scores,
    drop_mask,
    quantiles,
    reweight,
)
from lightning_influence.pruning.plan import SamplingPlan, plan_events, plan_for

__all__ = [
    "CombineMode",
    "SamplingPlan",
    "combine_scores",
    "drop_mask",
    "plan_events",
    "plan_for",
    "quantiles",
    "reweight",
]
