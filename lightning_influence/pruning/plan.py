"""What an epoch samples: the ``SamplingPlan`` that pruning produces and the sampler applies."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SamplingPlan"]


@dataclass(frozen=True)
class SamplingPlan:
    """What an epoch samples from the full dataset of ``size`` examples.

    Exactly one of: neither (every example once), ``keep`` (``[size]`` bool: the kept examples
    once each) or ``weights`` (``[size]`` float64 >= 0: ``size`` draws with replacement, with
    probability proportional to the weights).
    """

    size: int
    keep: Tensor | None = None
    weights: Tensor | None = None

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
