"""What an epoch samples: the ``SamplingPlan``, and ``plan_for`` that makes it from scoring events.

Pure functions of the events, the ``PruningConfig``, the dataset size and the previous plan:
testable without a Trainer. ``InfluenceDataModule`` calls ``plan_for`` before every epoch and
``InfluenceSampler`` applies the plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_influence.config import PruningConfig
from lightning_influence.io.events import ScoringEvent
from lightning_influence.pruning.functional import (
    _descending_order,
    combine_scores,
    drop_mask,
    reweight,
)
from lightning_influence.pruning.signals import resolve_selection, suspicion

__all__ = ["SamplingPlan", "plan_events", "plan_for", "scoring_candidates"]


@dataclass(frozen=True)
class SamplingPlan:
    """What an epoch samples from the full dataset of ``size`` examples.

    Exactly one of: neither (every example once), ``keep`` (``[size]`` bool: the kept examples
    once each) or ``weights`` (``[size]`` float64 >= 0: ``size`` draws with replacement, with
    probability proportional to the weights). ``scores`` are the combined suspicion scores the
    plan was made from (higher = more suspect), ``events`` the uids of their events (what the plan
    depends on) and ``signal`` the signals that ranked them.
    """

    size: int
    keep: Tensor | None = None
    weights: Tensor | None = None
    scores: Tensor | None = None
    events: tuple[str, ...] = ()
    signal: tuple[str, ...] = ()

    def num_examples(self) -> int:
        """Examples drawn in one epoch over all ranks (before padding)."""
        if self.keep is not None:
            return int(self.keep.sum())
        return self.size

    def indices(self, generator: torch.Generator, shuffle: bool) -> Tensor:
        """The epoch's global list of dataset indices."""
        if self.weights is not None:
            return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        idx = torch.arange(self.size) if self.keep is None else torch.nonzero(self.keep).flatten()
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        return idx


def plan_events(
    events: Sequence[ScoringEvent], config: PruningConfig, epoch: int
) -> list[ScoringEvent]:
    """The events (oldest first) a plan for ``epoch`` uses: none before ``start_epoch``, the newest
    one for ``combine="latest"``, all of them for ``"mean"``."""
    if epoch < config.start_epoch or not events:
        return []
    return list(events[-1:]) if config.combine == "latest" else list(events)


def plan_for(
    events: Sequence[ScoringEvent],
    config: PruningConfig,
    size: int,
    *,
    previous: SamplingPlan | None = None,
    labels: Tensor | None = None,
) -> SamplingPlan:
    """The plan made from ``events`` (already chosen by ``plan_events``).

    Args:
        events: the scoring events, oldest first; none gives the plan of every example once.
        config: mode, fraction, cap, combination and class safeguard.
        size: the training set's size N.
        previous: the plan in force, which ``cumulative`` drop mode keeps dropping from.
        labels: ``[N]`` class labels for the class safeguard, or None.

    Raises:
        ValueError: an event scores another number of examples than ``size``.
        KeyError: an event lacks the selected signal (the message lists what it holds).

    Example:
        >>> event = ScoringEvent(0, 4, {"loss": torch.tensor([0.1, 0.9, 0.5, 0.7])}, torch.ones(1))
        >>> plan = plan_for([event], PruningConfig(fraction=0.5), 4)
        >>> plan.keep.tolist(), plan.signal
        ([True, False, True, False], ('loss',))
    """
    if not events:
        return SamplingPlan(size)
    for e in events:
        if e.num_examples != size:
            raise ValueError(
                f"scoring event {e.name} ({e.directory or 'in memory'}) has "
                f"{e.num_examples} scores but the training dataset has {size} "
                "examples: scores must come from the same training set"
            )
    names = resolve_selection(config.signal, list(events[-1].signals))
    scores = combine_scores([suspicion(e.signals, names) for e in events], config.combine)
    uids = tuple(e.uid for e in events)
    if config.mode == "drop":
        kept = None
        if config.cumulative and previous is not None and previous.keep is not None:
            kept = previous.keep
        keep = drop_mask(
            scores,
            config.fraction,
            kept=kept,
            max_dropped=config.cap(size),
            labels=labels,
            min_per_class=config.min_per_class,
        )
        return SamplingPlan(size, keep=keep, scores=scores, events=uids, signal=names)
    weights = reweight(
        scores,
        config.fraction,
        temperature=config.temperature,
        floor=config.floor,
        labels=labels,
        min_per_class=config.min_per_class,
    )
    return SamplingPlan(size, weights=weights, scores=scores, events=uids, signal=names)


def scoring_candidates(
    config: PruningConfig,
    free: Mapping[str, Tensor],
    analysed: Sequence[str],
    multiple: float | None,
    *,
    kept: Tensor | None = None,
) -> Tensor | None:
    """The dataset indices (sorted) an analysis must score for a plan by ``config``, or None
    when it must score every example.

    A plan drops (or down-weights) ``fraction x N`` examples. When its signal needs the analysis
    (an influence signal among ``analysed``, the names the analysis will add), only the examples
    that the free AUM already ranks among the most suspect ``multiple x fraction x N`` can be
    among them in practice: they are the candidates (with every example the AUM has not seen, and
    in cumulative drop mode as many more as are already dropped). The others keep NaN influence
    signals, which rank below every scored example, so the plan drops among the candidates only.
    Measured (``examples/benchmarks/pruning.py``, candidates arms): at ``multiple=3`` the default
    signal's detection stays within 0.011 AP on digits and 0.003 on MNIST 10k.

    Args:
        config: the plan's configuration (signal, fraction, mode).
        free: the signals known before the analysis (the training dynamics: ``aum``, ...).
        analysed: the signals the analysis will compute.
        multiple: the candidates in multiples of ``fraction``; None: every example.
        kept: the plan in force's keep-mask (cumulative drop mode drops from the kept).

    Example:
        >>> aum = torch.tensor([2.0, -1.0, 0.5, 3.0, -0.2, 1.0, 2.5, 0.1, 1.5, 2.2])
        >>> cfg = PruningConfig(fraction=0.1)
        >>> scoring_candidates(cfg, {"aum": aum}, ["validation_influence_min"], 3).tolist()
        [1, 4, 7]
        >>> scoring_candidates(PruningConfig(signal="aum", fraction=0.1), {"aum": aum}, [], 3)
    """
    if multiple is None or config.fraction <= 0 or "aum" not in free:
        return None
    try:
        names = resolve_selection(config.signal, [*free, *analysed])
    except (KeyError, ValueError):
        return None
    if all(n in free for n in names):
        return None  # the plan does not read the analysis
    aum = free["aum"].detach().cpu().double()
    size = aum.numel()
    count = math.ceil(multiple * config.fraction * size - 1e-9)  # 3 x 0.1 x 10 is 3, not 4
    if config.mode == "drop" and config.cumulative and kept is not None:
        count += int((~kept.bool()).sum())
    if count >= size:
        return None
    chosen = torch.zeros(size, dtype=torch.bool)
    chosen[_descending_order(-aum)[:count]] = True  # the lowest AUMs; unseen (NaN) last...
    chosen |= torch.isnan(aum)  # ...and scored anyway
    if bool(chosen.all()):
        return None
    return torch.nonzero(chosen).flatten()
