"""The loaders an analysis reads, and the copy of the train loader the DataModule trains on."""

import inspect

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler, TensorDataset

from lightning_influence.config import ConfigurationError
from lightning_influence.lightning.loaders import loader_parts, ordered_loader, with_sampler


def collate(batch):
    return torch.stack([x for (x,) in batch])


def test_with_sampler_keeps_every_setting():
    data = TensorDataset(torch.arange(10.0))
    loader = DataLoader(data, batch_size=3, shuffle=True, drop_last=True, collate_fn=collate)
    copy = with_sampler(loader, SequentialSampler(data))
    assert copy.dataset is data and copy.batch_size == 3 and copy.drop_last
    assert copy.collate_fn is collate
    assert [b.tolist() for b in copy] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # `in_order` exists from torch 2.6 only: passed through where the loader has it
    if "in_order" in inspect.signature(DataLoader.__init__).parameters:
        unordered = DataLoader(data, batch_size=3, num_workers=1, in_order=False)
        assert with_sampler(unordered, SequentialSampler(data)).in_order is False


def test_loader_parts_and_ordered_loader():
    data = TensorDataset(torch.arange(10.0))
    parts = loader_parts(DataLoader(data, batch_size=4, shuffle=True))
    assert parts.batch_size == 4 and parts.dataset is data
    assert loader_parts(DataLoader(data, batch_size=4), batch_size=2).batch_size == 2
    batches = [b[0].tolist() for b in ordered_loader(parts, [7, 1, 3])]
    assert batches == [[7.0, 1.0, 3.0]]

    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(1)

    with pytest.raises(ConfigurationError, match="IterableDataset"):
        loader_parts(DataLoader(Stream(), batch_size=1))
    with pytest.raises(ConfigurationError, match="no training dataloader"):
        loader_parts(None)
    with pytest.raises(ConfigurationError, match="got list"):
        loader_parts([1, 2])
    with pytest.raises(ConfigurationError, match="empty"):
        loader_parts(DataLoader(TensorDataset(torch.zeros(0)), batch_size=1))
