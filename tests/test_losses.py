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


def test_padded_positions_do_not_count_in_a_sequence_loss():
    # Bug: the mean over all positions counted ignore_index padding, biasing padded examples.
    model = nn.Conv1d(4, 3, 1)
    x, y = torch.randn(3, 4, 6), torch.randint(0, 3, (3, 6))
    y[0, 4:] = -100  # example 0: 4 real tokens
    y[2, :] = -100  # example 2: all padding
    token = F.cross_entropy(model(x), y, reduction="none")  # 0 at padded positions
    losses = cross_entropy_loss(model, (x, y))
    torch.testing.assert_close(losses[0], token[0, :4].mean())
    torch.testing.assert_close(losses[1], token[1].mean())
    assert losses[2] == 0
    y2 = y.clamp(min=0)
    y2[1, 5] = 7  # another ignore index
    token2 = F.cross_entropy(model(x), y2, reduction="none", ignore_index=7)
    torch.testing.assert_close(
        cross_entropy_loss(model, (x, y2), ignore_index=7)[1], token2[1, :5].mean()
    )


def test_resolve_and_check_losses():
    from lightning_influence.config import ConfigurationError
    from lightning_influence.losses import check_losses, loss_name, resolve_loss

    class WithMethod(nn.Linear):
        def influence_loss(self, batch):
            return cross_entropy_loss(self, batch)

    assert resolve_loss(mse_loss, nn.Linear(2, 2)) is mse_loss
    method = resolve_loss(None, WithMethod(4, 3))
    assert loss_name(method) == "influence_loss" and loss_name(None) == "influence_loss"
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    torch.testing.assert_close(method(WithMethod(4, 3), (x, y)).shape, torch.Size([5]))
    with pytest.raises(ConfigurationError, match="def influence_loss"):
        resolve_loss(None, nn.Linear(2, 2))
    # a wrong shape or type is a mistake of configuration, not numerical trouble
    with pytest.raises(ConfigurationError, match=r"shape \[5\] \(use reduction='none'\)"):
        check_losses(torch.zeros(()), 5, "batch 0")
    with pytest.raises(ConfigurationError, match="must return a Tensor"):
        check_losses([0.0], 1, "batch 0")
    nan = torch.tensor([0.0, float("nan")])
    where = "batch 3 of the HVP sample loader"
    with pytest.raises(FloatingPointError, match=r"in batch 3 .*positions \[1\] within the batch"):
        check_losses(nan, 2, where)
    # the dataset indices when known, and whether the weights themselves broke
    with pytest.raises(FloatingPointError, match=r"dataset indices \[17\].*the weights are finite"):
        check_losses(nan, 2, where, indices=[4, 17], weights={"w": torch.ones(2)})
    with pytest.raises(FloatingPointError, match=r"weights are themselves NaN or Inf \(w\)"):
        check_losses(nan, 2, where, weights={"w": torch.tensor([float("inf")])})


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


def test_loss_names_are_the_same_in_every_process():
    # Bug: a functools.partial was named by its repr, which holds a memory address: the default
    # analysis name (a hash of the arguments) changed from process to process.
    import functools
    import subprocess
    import sys

    from lightning_influence.losses import loss_name

    partial = functools.partial(cross_entropy_loss, ignore_index=0)
    assert loss_name(partial) == "lightning_influence.losses.cross_entropy_loss(ignore_index=0)"
    assert "0x" not in loss_name(lambda m, b: 0) and "0x" not in loss_name(torch.nn.MSELoss())
    code = (
        "import functools; from lightning_influence import InfluenceCallback; from lightning_influence.losses import cross_entropy_loss; "
        "print(InfluenceCallback(functools.partial(cross_entropy_loss, ignore_index=0)).name)"
    )
    names = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(names) == 1
