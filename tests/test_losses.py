"""Ready-made per-example losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_influence.losses import cross_entropy_loss, mse_loss


def test_cross_entropy_is_per_example():
    model = nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    losses = cross_entropy_loss(model, (x, y))
    assert losses.shape == (5,)
    torch.testing.assert_close(losses.mean(), F.cross_entropy(model(x), y))
    torch.testing.assert_close(cross_entropy_loss(model, {"x": x, "label": y}), losses)
    torch.testing.assert_close(cross_entropy_loss(model, [x, y, "extra"]), losses)


def test_cross_entropy_of_sequences_averages_positions():
    model = nn.Conv1d(4, 3, 1)  # logits [B, C, T]
    x, y = torch.randn(2, 4, 7), torch.randint(0, 3, (2, 7))
    expected = F.cross_entropy(model(x), y, reduction="none").mean(dim=1)
    torch.testing.assert_close(cross_entropy_loss(model, (x, y)), expected)


def test_mse_is_per_example():
    model = nn.Linear(4, 2)
    x, y = torch.randn(5, 4), torch.randn(5, 2)
    losses = mse_loss(model, (x, y))
    assert losses.shape == (5,)
    torch.testing.assert_close(losses.mean(), F.mse_loss(model(x), y))
    assert mse_loss(nn.Linear(4, 1), (x, torch.randn(5))).shape == (5,)


def test_unknown_batch_layout_says_what_to_do():
    with pytest.raises(TypeError, match="influence_loss"):
        cross_entropy_loss(nn.Linear(4, 3), torch.randn(5, 4))
