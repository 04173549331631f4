"""A sampler over the full training dataset that applies a keep-mask or weights, sharded by rank.

It subclasses ``DistributedSampler`` for one reason: Lightning (``use_distributed_sampler=True``)
replaces any other sampler of a distributed run with a ``DistributedSamplerWrapper``, which would
shard a snapshot of our index list and lose the mask updates; a ``DistributedSampler`` it leaves
alone. The sampler therefore shards itself, exactly like ``DistributedSampler``: one global index
list per epoch, identical on every rank (it depends only on the seed, the epoch and the plan),
padded by repetition to a multiple of the number of replicas, and rank ``r`` takes positions
``r, r + R, r + 2R, ...``. The union over ranks is the kept set (or the weighted draw), and shards
never overlap except for the padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from lightning_influence.pruning.plan import SamplingPlan

__all__ = ["InfluenceSampler"]


class InfluenceSampler(DistributedSampler):
    """Samples the dataset indices of ``plan_fn()``, sharded over ``num_replicas`` ranks.

    Args:
        dataset: the full training dataset (only its length is used).
        plan_fn: ``() -> SamplingPlan``, the current plan, asked at every ``__len__`` and
            ``__iter__``, so the plan may change between epochs without a new DataLoader.
        on_epoch: called with the epoch in ``set_epoch`` (which Lightning calls before each
            epoch), so the plan's owner can bring the plan up to date first.
        num_replicas: ranks sharing the epoch (the trainer's world size).
        rank: this process's rank.
        shuffle: permute the kept indices each epoch (seeded by ``seed + epoch``).
        seed: the same on every rank.
    """

    def __init__(
        self,
        dataset: Dataset,
        plan_fn: Callable[[], SamplingPlan],
        *,
        on_epoch: Callable[[int], None] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.plan_fn = plan_fn
        self.on_epoch = on_epoch
        # this rank's indices of the epoch being iterated, in order: which dataset examples each
        # training batch holds (InfluenceCallback records the training dynamics by them)
        self.last_indices: list[int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch; seeds the shuffle and refreshes the plan."""
        super().set_epoch(epoch)
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(self.plan_fn().num_examples() / self.num_replicas)

    def global_indices(self) -> Tensor:
        """This epoch's indices over all ranks, padded to a multiple of ``num_replicas``."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        idx = self.plan_fn().indices(generator, self.shuffle)
        total = math.ceil(len(idx) / self.num_replicas) * self.num_replicas
        if total > len(idx) and len(idx) > 0:
            idx = torch.cat([idx, idx.repeat(math.ceil(total / len(idx)))[: total - len(idx)]])
        return idx

    def __iter__(self) -> Iterator[int]:
        self.last_indices = self.global_indices()[self.rank :: self.num_replicas].tolist()
        return iter(self.last_indices)
