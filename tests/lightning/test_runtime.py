"""Pieces of the analysis runtime: scoring shards and RNG preservation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lightning_influence.lightning.runtime import preserved_rng_states, score_shard


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 3), (11, 2), (2, 4)])
def test_score_shards_cover_every_index_once_in_order(n, world):
    shards = [score_shard(n, world, rank) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # equal sizes: all_gather needs them
    assert [i for shard in shards for i in shard][:n] == list(range(n))  # padding comes last


def test_rng_states_are_restored():
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    with preserved_rng_states():
        torch.rand(5), np.random.rand(5), random.random()
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
