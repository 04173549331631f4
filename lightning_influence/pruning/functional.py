"""The maths of pruning by self-influence: combine scores, choose who is dropped, weigh the rest.

Pure functions over tensors indexed by dataset index; nothing here knows about Lightning.
``InfluenceDataModule`` (``datamodule.py``) calls them and ``InfluenceSampler`` (``sampler.py``)
applies their result.

Scores are used only through their order, so that scores from events on different scales (the
Hessian's spectrum moves as the model trains) can be combined and so that the knobs mean the same
thing on every model. The quantile of example ``i`` among ``N`` is

    u_i = (r_i + 1/2) / N,        r_i = #{j : s_j < s_i} (ties broken by index)

so the most self-influential example has ``u`` close to 1. NaN scores (examples an analysis did
not score) count as the lowest (never dropped first): in ``quantiles`` they share the mean of the
lowest ranks, and under ``combine="normalized_sum"`` an example NaN in any event ranks last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_influence.config import CombineMode

__all__ = [
    "CombineMode",
    "combine_scores",
    "drop_mask",
    "quantiles",
    "reweight",
]


def _descending_order(scores: Tensor) -> Tensor:
    """Indices sorted by score descending, ties by index ascending, NaN last."""
    s = scores.detach().cpu().double()
    s = torch.where(torch.isnan(s), torch.full_like(s, -torch.inf), s)
    # A stable sort of the negated scores keeps ties in index order on every rank and platform.
    return torch.sort(-s, stable=True).indices


def quantiles(scores: Tensor) -> Tensor:
    """``u_i = (r_i + 1/2) / N`` with ``r_i`` the ascending rank of ``scores[i]`` (float64, ``[N]``).

    Example:
        >>> quantiles(torch.tensor([3.0, 1.0, 2.0])).tolist()
        [0.8333333333333334, 0.16666666666666666, 0.5]
    """
    n = scores.numel()
    order = _descending_order(scores)
    u = torch.empty(n, dtype=torch.float64)
    # position p in descending order has ascending rank n - 1 - p
    u[order] = (n - 1 - torch.arange(n, dtype=torch.float64) + 0.5) / max(n, 1)
    # NaN (an example not scored) share the mean of the lowest ranks: no order among them, so
    # that a rank mean or a mean over events does not order unscored examples by their index
    missing = torch.isnan(scores.detach().cpu())
    if bool(missing.any()):
        u[missing] = int(missing.sum()) / 2 / n
    return u


def combine_scores(scores: Sequence[Tensor], how: CombineMode = "latest") -> Tensor:
    """One score per example from the scores of several scoring events (oldest first).

    * ``latest``: the newest event's scores.
    * ``mean``: the mean over events of the quantiles ``u_i`` (see the module docstring), so that
      every event counts equally whatever its scale: ``c_i = (1/E) sum_e u_i^(e)``.
    * ``normalized_sum``: each event's scores divided by their mean over the examples, summed:
      ``c_i = sum_e s_i^(e) / mean_j s_j^(e)``. Unlike ranks it keeps how far an example stands
      out at each checkpoint (on MNIST, Arnoldi over 3 checkpoints combined this way gave the
      best detection of every method measured). NaN scores are left out of the means.

    Example:
        >>> combine_scores([torch.tensor([1.0, 2.0]), torch.tensor([4.0, 3.0])], "mean").tolist()
        [0.5, 0.5]
        >>> combine_scores([torch.tensor([1.0, 3.0]), torch.tensor([4.0, 4.0])], "normalized_sum").tolist()
        [1.5, 2.5]
    """
    if not scores:
        raise ValueError("combine_scores needs at least one event's scores")
    n = scores[0].numel()
    for s in scores:
        if s.numel() != n:
            raise ValueError(
                f"scoring events disagree on the dataset size ({s.numel()} vs {n} scores): "
                "combine only events of the same training set"
            )
    if how == "latest":
        return scores[-1].detach().cpu().double()
    if how == "mean":
        return torch.stack([quantiles(s) for s in scores]).mean(0)
    if how == "normalized_sum":
        total = torch.zeros(n, dtype=torch.float64)
        for s in scores:
            s = s.detach().cpu().double()
            scale = s.nanmean().abs()
            if not bool(torch.isfinite(scale)) or scale == 0:
                raise ValueError(
                    "combine='normalized_sum' needs events whose scores have a finite, non-zero "
                    "mean: use combine='mean' (ranks) for these scores"
                )
            total += s / scale
        return total
    raise ValueError(f"combine={how!r} is not one of 'latest', 'mean', 'normalized_sum'")


def _class_quota_ok(order: Tensor, labels: Tensor, kept: Tensor, min_per_class: int) -> Tensor:
    """For candidates in ``order``, whether dropping them greedily keeps ``min_per_class`` per class.

    A candidate is allowed if fewer than ``kept_c - min_per_class`` candidates of its class precede
    it in ``order`` (``kept_c``: the class's currently kept count).
    """
    classes, inverse = torch.unique(labels, return_inverse=True)
    quota = (torch.bincount(inverse[kept], minlength=len(classes)) - min_per_class).clamp(min=0)
    cand = inverse[order]
    # rank of each candidate among the candidates of its class, in `order`
    grouped = torch.sort(cand, stable=True).indices
    counts = torch.bincount(cand, minlength=len(classes))
    starts = torch.cumsum(counts, 0) - counts
    within = torch.empty_like(cand)
    within[grouped] = torch.arange(len(cand)) - starts[cand[grouped]]
    return within < quota[cand]


def drop_mask(
    scores: Tensor,
    fraction: float,
    *,
    kept: Tensor | None = None,
    max_dropped: int | None = None,
    labels: Tensor | None = None,
    min_per_class: int = 1,
) -> Tensor:
    """The keep-mask after dropping the highest-scoring ``fraction`` of the kept examples.

    Among the examples still kept (``kept``, default all), the ``floor(fraction * n_kept)`` with
    the highest scores are dropped, walking down the scores (ties by index) and skipping an example
    when dropping it would leave its class (``labels``) with fewer than ``min_per_class`` kept
    examples. The total dropped (earlier drops included) never exceeds ``max_dropped``.

    Args:
        scores: ``[N]`` scores by dataset index (higher = more suspect).
        fraction: in ``[0, 1)``.
        kept: ``[N]`` bool, the examples that may still be dropped; the others stay dropped.
        max_dropped: cap on ``N - kept.sum()`` after this call, or ``None``.
        labels: ``[N]`` integer class labels, or ``None`` (no class safeguard).
        min_per_class: the safeguard: never keep fewer than this many examples of a class.

    Returns:
        ``[N]`` bool keep-mask.

    Example:
        >>> drop_mask(torch.tensor([0.1, 0.9, 0.5, 0.7]), 0.5).tolist()
        [True, False, True, False]
    """
    n = scores.numel()
    keep = torch.ones(n, dtype=torch.bool) if kept is None else kept.detach().cpu().bool().clone()
    if keep.numel() != n:
        raise ValueError(f"kept has {keep.numel()} entries but scores has {n}")
    n_new = int(fraction * int(keep.sum()))
    if max_dropped is not None:
        n_new = min(n_new, max(0, max_dropped - (n - int(keep.sum()))))
    if n_new <= 0:
        return keep
    order = _descending_order(scores)
    order = order[keep[order]]
    if labels is not None:
        lab = labels.detach().cpu().long()
        if lab.numel() != n:
            raise ValueError(f"labels has {lab.numel()} entries but the dataset has {n}")
        order = order[_class_quota_ok(order, lab, keep, min_per_class)]
    keep[order[:n_new]] = False
    return keep


def reweight(
    scores: Tensor,
    fraction: float,
    *,
    temperature: float = 0.05,
    floor: float = 0.0,
    labels: Tensor | None = None,
    min_per_class: int = 1,
) -> Tensor:
    """Sampling weights that decrease with self-influence.

        w_i = floor + (1 - floor) * sigmoid((1 - fraction - u_i) / temperature)

    with ``u_i`` the quantile of ``scores[i]`` (module docstring). The examples below the
    ``1 - fraction`` quantile keep a weight near 1, the top ``fraction`` fall towards ``floor``;
    ``temperature`` is the width of the transition in quantile units (``temperature -> 0`` with
    ``floor=0`` is ``drop_mask`` without the cap). With ``labels``, the ``min_per_class``
    lowest-scoring examples of every class keep weight 1, so no class ever vanishes.

    Args:
        scores: ``[N]`` scores by dataset index.
        fraction: in ``[0, 1)``, the share of examples down-weighted.
        temperature: ``> 0``.
        floor: in ``[0, 1]``, the weight the most suspect examples tend to.
        labels: ``[N]`` integer labels or ``None``.
        min_per_class: see above.

    Returns:
        ``[N]`` float64 weights in ``[floor, 1]`` (not normalized).

    Example:
        >>> w = reweight(torch.arange(10.0), 0.2, temperature=0.01)
        >>> [round(v, 3) for v in w.tolist()]
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.993, 0.007, 0.0]
    """
    u = quantiles(scores)
    w = floor + (1.0 - floor) * torch.sigmoid((1.0 - fraction - u) / temperature)
    if labels is not None:
        lab = labels.detach().cpu().long()
        if lab.numel() != u.numel():
            raise ValueError(f"labels has {lab.numel()} entries but the dataset has {u.numel()}")
        ascending = torch.flip(_descending_order(scores), (0,))
        for c in torch.unique(lab).tolist():
            members = ascending[lab[ascending] == c]
            w[members[:min_per_class]] = 1.0
    return w
