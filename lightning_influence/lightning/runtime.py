"""Where an analysis runs: a Trainer's strategy (one or many processes) or a single process.

An analysis needs a few things from its surroundings: how batches reach the device, how processes
sum, gather, broadcast and agree, which loggers to feed, and whether to show progress. ``Runtime``
gathers them, so that ``run_analysis`` is written once for ``trainer.fit``, on-demand calls and
saved checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch import Tensor, nn

from lightning_influence.lightning.compat import before_batch_transfer
from lightning_influence.lightning.namespaces import namespace_of

__all__ = ["Runtime", "preserved_rng_states", "score_shard"]


@dataclass
class Runtime:
    """What an analysis needs from its surroundings: a Trainer's strategy, or a single process."""

    module: nn.Module
    device: torch.device
    transfer: Callable[[Any], Any]
    strategy: Any = None
    world_size: int = 1
    rank: int = 0
    loggers: list[Logger] = dataclasses.field(default_factory=list)
    progress: bool = True
    precision: str = ""
    namespace: str | None = None

    @classmethod
    def of(
        cls, trainer: pl.Trainer, pl_module: pl.LightningModule, progress: bool | None
    ) -> Runtime:
        """The runtime of a Trainer: its strategy, ranks, loggers and precision."""
        strategy = trainer.strategy
        if progress is None:
            bar = trainer.progress_bar_callback
            progress = bar is not None and bool(getattr(bar, "is_enabled", True))
        return cls(
            module=pl_module,
            device=strategy.root_device,
            transfer=_transfer(pl_module, strategy.batch_to_device),
            strategy=strategy,
            world_size=trainer.world_size,
            rank=trainer.global_rank,
            loggers=list(trainer.loggers),
            progress=progress,
            precision=str(trainer.precision),
            namespace=namespace_of(trainer),
        )

    @classmethod
    def standalone(
        cls,
        module: pl.LightningModule,
        device: torch.device,
        loggers: Sequence[Logger] = (),
        progress: bool = True,
    ) -> Runtime:
        """One process without a Trainer (a saved checkpoint): the module's own transfer hooks."""

        def move(batch: Any) -> Any:
            batch = module.transfer_batch_to_device(batch, device, 0)
            return module.on_after_batch_transfer(batch, 0)

        dtype = next(module.parameters()).dtype
        return cls(
            module=module,
            device=device,
            transfer=_transfer(module, move),
            loggers=list(loggers),
            progress=progress,
            precision=_PRECISION_NAMES.get(dtype, str(dtype).removeprefix("torch.")),
            namespace=namespace_of(module),
        )

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    @property
    def reduce_sum(self) -> Callable[[Tensor], Tensor] | None:
        if self.world_size == 1:
            return None
        return lambda t: self.strategy.reduce(t, reduce_op="sum")

    def agree(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if it fails on any rank, raise on every rank."""
        try:
            result, error = fn(), None
        except Exception as err:
            result, error = None, err
        if self.world_size > 1 and not self.strategy.reduce_boolean_decision(
            error is None, all=True
        ):
            raise error or RuntimeError(
                "the influence analysis failed on another process (see its warning)"
            )
        if error is not None:
            raise error
        return result

    @contextlib.contextmanager
    def rank_zero_buffers(self) -> Iterator[None]:
        """Every rank analyses with global zero's buffers (restored afterwards).

        Under DDP each rank's BatchNorm running statistics drift apart between the buffer
        broadcasts DDP makes at each forward; eigenpairs and scores must come from one model.
        """
        buffers = [b for b in self.module.buffers() if b.is_floating_point()]
        if self.world_size == 1 or not buffers:
            yield
            return
        saved = [b.detach().clone() for b in buffers]
        try:
            with torch.no_grad():
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    for b in buffers:
                        torch.distributed.broadcast(b, src=0)
                else:  # a strategy without a torch.distributed process group
                    values = self.strategy.broadcast([b.detach().cpu() for b in buffers])
                    for b, value in zip(buffers, values, strict=True):
                        b.copy_(value)
            yield
        finally:
            with torch.no_grad():
                for b, old in zip(buffers, saved, strict=True):
                    b.copy_(old)

    def broadcast(self, obj: Any) -> Any:
        """Global zero's ``obj`` on every rank."""
        return obj if self.world_size == 1 else self.strategy.broadcast(obj)

    def gather(self, local: Tensor) -> Tensor:
        """Concatenate equal-sized per-rank shards in rank order."""
        if self.world_size == 1:
            return local
        gathered = self.strategy.all_gather(local.to(self.strategy.root_device))
        return gathered.reshape(-1)


def score_shard(num_examples: int, world_size: int, rank: int) -> list[int]:
    """Rank ``rank``'s contiguous block of dataset indices, padded to ``ceil(N / W)`` entries with
    copies of the last index (the padding is dropped after the gather, like DistributedSampler's)."""
    per_rank = math.ceil(num_examples / world_size)
    start = min(rank * per_rank, num_examples)
    block = list(range(start, min(start + per_rank, num_examples)))
    return block + [num_examples - 1] * (per_rank - len(block))


# Lightning's names (``Trainer(precision=...)``) for a model held in one dtype, so that manifests
# of saved checkpoints and of training runs say the same thing.
_PRECISION_NAMES = {
    torch.float64: "64-true",
    torch.float32: "32-true",
    torch.bfloat16: "bf16-true",
    torch.float16: "16-true",
}


def _transfer(module: pl.LightningModule, move: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The one batch-transfer path: ``on_before_batch_transfer``, then ``move`` to the device.

    Lightning >= 2.5 applies ``on_before_batch_transfer`` outside ``batch_to_device``. Its private
    ``_on_before_batch_transfer`` picks the DataModule's hook or the module's, as training does;
    there is no public equivalent (older Lightning has no such method: ``move`` applies the hook).
    """
    before = before_batch_transfer(module)

    def transfer(batch: Any) -> Any:
        if before is not None:
            batch = before(batch, dataloader_idx=0)
        return move(batch)

    return transfer


@contextlib.contextmanager
def preserved_rng_states() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and Python RNG states afterwards, so an analysis
    never shifts the training run's random streams (DataLoader iterators draw from them)."""
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
