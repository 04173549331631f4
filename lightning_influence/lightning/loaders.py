"""The DataLoaders an analysis reads and the one the DataModule wrapper trains on.

* ``loader_parts``: what an analysis takes from the training loader (dataset, collate, batch size).
* ``ordered_loader``: an unshuffled loader over dataset indices (the HVP sample, a score shard).
* ``with_sampler``: a copy of a training loader with another sampler, every other setting kept.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset

from lightning_influence.config import ConfigurationError

__all__ = ["LoaderParts", "loader_parts", "ordered_loader", "with_sampler"]

# ``DataLoader(in_order=...)`` exists from torch 2.6 on; passed only where the loader has it.
_HAS_IN_ORDER = "in_order" in inspect.signature(DataLoader.__init__).parameters


@dataclass(frozen=True)
class LoaderParts:
    """What an analysis reuses of the training loader."""

    dataset: Dataset
    collate_fn: Callable[[list[Any]], Any] | None
    batch_size: int


def loader_parts(loader: Any, batch_size: int | None = None, what: str = "training") -> LoaderParts:
    """The dataset, ``collate_fn`` and batch size (``batch_size`` overrides) of a training (or
    ``what``) loader.

    Raises:
        ConfigurationError: no loader, not a ``DataLoader``, an ``IterableDataset`` (no indices to
            score) or no batch size to reuse.
    """
    if loader is None:
        raise ConfigurationError(
            f"no {what} dataloader: analyse during or after trainer.fit, or pass "
            "analyze(..., dataloader=train_loader)"
        )
    if not isinstance(loader, DataLoader):
        raise ConfigurationError(
            f"the analysis reads one {what} DataLoader, got {type(loader).__name__}: pass a "
            "torch DataLoader"
        )
    if isinstance(loader.dataset, IterableDataset):
        raise ConfigurationError(
            f"the analysis reads a map-style dataset by index; the {what} dataset is an "
            "IterableDataset: wrap the data in a map-style Dataset"
        )
    size = batch_size or loader.batch_size
    if size is None:
        size = getattr(loader.batch_sampler, "batch_size", None)
    if size is None:
        raise ConfigurationError(
            f"the {what} DataLoader has no batch_size (it uses a custom batch_sampler): pass "
            "batch_size=... to the analysis"
        )
    if len(loader.dataset) < 1:  # type: ignore[arg-type]
        raise ConfigurationError(f"the {what} dataset is empty: there is nothing to score")
    return LoaderParts(loader.dataset, loader.collate_fn, int(size))


def ordered_loader(
    parts: LoaderParts, indices: Sequence[int] | None = None, *, num_workers: int = 0
) -> DataLoader:
    """An unshuffled loader over ``indices`` of the dataset (all of it when None).

    Its own ``torch.Generator`` keeps the global RNG out of the loader's seeding, so an analysis
    never shifts the training run's random streams.
    """
    data = parts.dataset if indices is None else Subset(parts.dataset, list(indices))
    return DataLoader(
        data,
        batch_size=parts.batch_size,
        shuffle=False,
        collate_fn=parts.collate_fn,
        num_workers=num_workers,
        generator=torch.Generator(),
    )


def with_sampler(loader: DataLoader, sampler: Sampler) -> DataLoader:
    """A copy of ``loader`` that draws its indices from ``sampler``; every other setting is kept."""
    kwargs: dict[str, Any] = {}
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
        kwargs["persistent_workers"] = loader.persistent_workers
    if _HAS_IN_ORDER:
        kwargs["in_order"] = getattr(loader, "in_order", True)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        pin_memory_device=loader.pin_memory_device,
        **kwargs,
    )
