"""Pruning by per-example signals, testable without a Trainer. No Lightning.

``signals``: the registry of signals (which end is suspect) and ``suspicion``;
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
from lightning_influence.pruning.signals import (
    SignalSpec,
    register_signal,
    signal_names,
    signal_spec,
    suspicion,
)

__all__ = [
    "CombineMode",
    "SamplingPlan",
    "SignalSpec",
    "combine_scores",
    "drop_mask",
    "plan_events",
    "plan_for",
    "quantiles",
    "register_signal",
    "reweight",
    "signal_names",
    "signal_spec",
    "suspicion",
]
