"""The pruning maths: quantiles, combined scores, the keep-mask with its safeguards, the weights."""

import pytest
import torch

from lightning_influence.pruning import combine_scores, drop_mask, quantiles, reweight


def test_quantiles_rank_ties_by_index_and_nan_lowest():
    u = quantiles(torch.tensor([2.0, float("nan"), 2.0, 5.0]))
    # ascending ranks: nan 0, index 2 (tie, later index ranks lower) 1, index 0 2, index 3 3
    assert u.tolist() == [2.5 / 4, 0.5 / 4, 1.5 / 4, 3.5 / 4]


def test_drop_mask_drops_the_highest_scores():
    scores = torch.randn(100, generator=torch.Generator().manual_seed(0))
    keep = drop_mask(scores, 0.2)
    assert int((~keep).sum()) == 20
    assert scores[~keep].min() > scores[keep].max()


def test_drop_mask_cap_and_cumulative():
    scores = torch.arange(10.0)
    first = drop_mask(scores, 0.5, max_dropped=3)
    assert (~first).nonzero().flatten().tolist() == [7, 8, 9]
    # the next event scores differently; the earlier drops stay dropped, the cap holds in total
    second = drop_mask(scores.flip(0), 0.5, kept=first, max_dropped=4)
    assert (~second).nonzero().flatten().tolist() == [0, 7, 8, 9]
    third = drop_mask(scores.flip(0), 0.5, kept=first)
    assert (~third).nonzero().flatten().tolist() == [0, 1, 2, 7, 8, 9]  # floor(0.5 * 7) = 3 more


def test_drop_mask_never_empties_a_class():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    scores = torch.tensor([9.0, 8.0, 7.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0])
    keep = drop_mask(scores, 0.4, labels=labels, min_per_class=1)
    # class 0 holds the three highest scores; one of its examples (the lowest, 2) must stay
    assert (~keep).nonzero().flatten().tolist() == [0, 1, 7, 8]
    keep2 = drop_mask(scores, 0.4, labels=labels, min_per_class=2)
    assert (~keep2).nonzero().flatten().tolist() == [0, 6, 7, 8]
    assert int(keep2[labels == 0].sum()) == 2


def test_combine_latest_and_mean():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([300.0, 100.0, 200.0])
    assert torch.equal(combine_scores([a, b], "latest"), b.double())
    mean = combine_scores([a, b], "mean")
    # quantiles: a -> [1/6, 3/6, 5/6], b -> [5/6, 1/6, 3/6]; the scale of b does not dominate
    torch.testing.assert_close(mean, torch.tensor([0.5, 1 / 3, 2 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="disagree on the dataset size"):
        combine_scores([a, torch.ones(4)], "mean")
    with pytest.raises(ValueError, match="combine='max'"):
        combine_scores([a], "max")  # type: ignore[arg-type]


def test_reweight_formula_and_class_floor():
    scores = torch.arange(100.0)
    w = reweight(scores, 0.2, temperature=0.05, floor=0.1)
    u = (torch.arange(100, dtype=torch.float64) + 0.5) / 100
    expected = 0.1 + 0.9 * torch.sigmoid((0.8 - u) / 0.05)
    torch.testing.assert_close(w, expected)
    assert w[:50].min() > 0.99 and w[-5:].max() < 0.15
    # a class made only of the most suspect examples keeps its lowest-scoring member at weight 1
    labels = (torch.arange(100) >= 95).long()
    w2 = reweight(scores, 0.2, temperature=0.05, labels=labels)
    assert w2[95] == 1.0 and w2[96:].max() < 0.05


def test_normalized_sum_weighs_each_event_by_its_own_scale():
    # event 2 is on a 1000x larger scale: ranks or raw sums would let one event decide
    small = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    large = torch.tensor([4000.0, 1000.0, 2000.0, 1000.0], dtype=torch.float64)
    combined = combine_scores([small, large], "normalized_sum")
    expected = small / small.mean() + large / large.mean()
    torch.testing.assert_close(combined, expected)
    assert (
        int(combined.argmax()) == 3
    )  # stands out most in the first event, not lowest in the second
    with pytest.raises(ValueError, match="finite, non-zero mean"):
        combine_scores([torch.zeros(3)], "normalized_sum")
    with pytest.raises(ValueError, match="normalized_sum"):
        combine_scores([small], "median")


def test_quantiles_of_several_nan_share_the_lowest_ranks_mean():
    u = quantiles(torch.tensor([float("nan"), 3.0, float("nan"), 1.0, float("nan")]))
    # three NaN share ranks 0-2 (mean 1, u = 1.5 / 5), then 1.0 (rank 3) and 3.0 (rank 4)
    assert u.tolist() == [0.3, 0.9, 0.3, 0.7, 0.3]
