"""``scoring_candidates``: which examples an analysis feeding a pruning plan must score."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_influence.config import PruningConfig
from lightning_influence.pruning.plan import scoring_candidates

ANALYSED = ["self_influence", "loss", "validation_influence", "validation_influence_min"]


def aum(n: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_the_candidates_are_the_lowest_aum_multiple_x_fraction():
    margins = aum()
    chosen = scoring_candidates(PruningConfig(fraction=0.1), {"aum": margins}, ANALYSED, 3)
    assert chosen is not None
    expected = torch.argsort(margins)[:15].sort().values
    assert chosen.tolist() == expected.tolist()
    # a fractional multiple rounds the count up
    chosen = scoring_candidates(PruningConfig(fraction=0.1), {"aum": margins}, ANALYSED, 2.5)
    assert len(chosen) == math.ceil(2.5 * 0.1 * 50)


@pytest.mark.parametrize(
    ("signal", "analysed"),
    [
        ("aum", ANALYSED),  # the plan reads no signal of the analysis
        ("loss_mean", ANALYSED),
        ("auto", ["self_influence", "loss"]),  # auto without a validation set is the AUM
    ],
)
def test_a_plan_that_does_not_read_the_analysis_scores_everything(signal, analysed):
    free = {"aum": aum(), "loss_mean": aum(seed=1).abs()}
    assert scoring_candidates(PruningConfig(signal=signal, fraction=0.1), free, analysed, 3) is None


def test_every_example_without_an_aum_a_multiple_or_a_fraction_or_when_all_are_needed():
    config = PruningConfig(fraction=0.1)
    assert scoring_candidates(config, {"loss_mean": aum().abs()}, ANALYSED, 3) is None
    assert scoring_candidates(config, {"aum": aum()}, ANALYSED, None) is None
    assert scoring_candidates(PruningConfig(fraction=0.0), {"aum": aum()}, ANALYSED, 3) is None
    assert scoring_candidates(PruningConfig(fraction=0.4), {"aum": aum()}, ANALYSED, 3) is None


def test_examples_the_aum_has_not_seen_are_scored():
    margins = aum()
    margins[[3, 40]] = float("nan")
    chosen = scoring_candidates(PruningConfig(fraction=0.1), {"aum": margins}, ANALYSED, 2)
    seen = torch.where(torch.isnan(margins), torch.inf, margins)
    expected = set(torch.argsort(seen)[:10].tolist()) | {3, 40}
    assert set(chosen.tolist()) == expected


def test_cumulative_drop_adds_the_already_dropped():
    margins = aum()
    kept = torch.ones(50, dtype=torch.bool)
    kept[:5] = False
    cumulative = PruningConfig(fraction=0.1, cumulative=True)
    chosen = scoring_candidates(cumulative, {"aum": margins}, ANALYSED, 3, kept=kept)
    assert len(chosen) == 15 + 5
    plain = PruningConfig(fraction=0.1)
    assert len(scoring_candidates(plain, {"aum": margins}, ANALYSED, 3, kept=kept)) == 15


def test_an_explicit_influence_signal_uses_candidates():
    for signal in ("self_influence", ["loss", "validation_influence"]):
        config = PruningConfig(signal=signal, fraction=0.1)
        assert scoring_candidates(config, {"aum": aum()}, ANALYSED, 3) is not None
