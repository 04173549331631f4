"""Batch helpers: joining batches along examples."""

from collections import UserDict

import pytest
import torch

from lightning_influence.core.batch import as_pytree, batch_size, merge_batches


def test_batches_join_in_order_up_to_the_limit():
    parts = [(torch.arange(3.0) + 3 * i, torch.full((3,), i)) for i in range(5)]
    merged = merge_batches(parts, limit=7)
    assert [batch_size(b) for b in merged] == [6, 6, 3]
    torch.testing.assert_close(torch.cat([b[0] for b in merged]), torch.arange(15.0))
    torch.testing.assert_close(
        torch.cat([b[1] for b in merged]), torch.arange(5).repeat_interleave(3)
    )


def test_only_batches_that_concatenate_are_joined():
    def enc(n, t):
        return as_pytree(UserDict({"ids": torch.zeros(n, t, dtype=torch.long), "scale": 2.0}))

    # padded to other lengths, or a shared leaf that differs: kept apart; a mapping keeps its type
    merged = merge_batches([enc(2, 5), enc(2, 5), enc(2, 7)], limit=100)
    assert [tuple(b["ids"].shape) for b in merged] == [(4, 5), (2, 7)]
    assert isinstance(merged[0], UserDict) and merged[0]["scale"] == 2.0
    mask = torch.ones(4)  # not indexed by example (another leading size)
    a, b = (torch.zeros(2, 3), mask), (torch.zeros(2, 3), mask * 2)
    assert len(merge_batches([a, b], limit=100)) == 2
    assert len(merge_batches([a, (torch.zeros(2, 3), mask.clone())], limit=100)) == 1


def test_batch_size_is_the_first_tensor_leaf_whatever_the_shape():
    x, y = torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)
    assert batch_size((x, y)) == batch_size([x, y]) == batch_size(x) == 5
    assert batch_size({"input_ids": torch.zeros(4, 7), "labels": torch.zeros(4)}) == 4
    # a first element that is not a tensor with a batch dimension: the pytree's first one that is
    assert batch_size((["a", "b"], torch.tensor(1.0), torch.zeros(2, 3))) == 2
    assert batch_size(((x, y), torch.zeros(9))) == 5
    with pytest.raises(ValueError, match="holds no tensor with a batch dimension"):
        batch_size(("text", torch.tensor(2.0)))
