"""Ready-made per-example losses ``loss_fn(model, batch) -> Tensor[B]`` for common batch layouts.

Influence needs one loss per example (``reduction="none"``), computed from the batch exactly as
training computes it. These helpers cover the usual ``(inputs, targets)`` batches; anything else
is a three-line function, or an ``influence_loss(self, batch)`` method on the LightningModule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cross_entropy_loss", "mse_loss"]


def _inputs_targets(batch: Any, what: str) -> tuple[Any, Tensor]:
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in ("x", "input", "inputs") if k in batch), None)
        targets = next(
            (batch[k] for k in ("y", "target", "targets", "label", "labels") if k in batch), None
        )
        if inputs is not None and targets is not None:
            return inputs, targets
    elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"{what} expects a batch (inputs, targets) or a dict with keys 'x'/'input' and "
        f"'y'/'target'/'label', got {type(batch).__name__}: write your own "
        "loss_fn(model, batch) -> Tensor[B], or an influence_loss(self, batch) method on the "
        "LightningModule"
    )


def cross_entropy_loss(model: nn.Module, batch: Any) -> Tensor:
    """Per-example cross-entropy for ``(inputs, class-index targets)`` batches.

    ``loss[b] = -log softmax(model(x_b))[y_b]``; logits of shape ``[B, C]`` (or ``[B, C, ...]``
    with targets ``[B, ...]``, averaged over the trailing positions so each example gives one loss).

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 3)
        >>> cross_entropy_loss(model, (torch.randn(5, 4), torch.randint(0, 3, (5,)))).shape
        torch.Size([5])
    """
    inputs, targets = _inputs_targets(batch, "cross_entropy_loss")
    losses = F.cross_entropy(model(inputs), targets, reduction="none")
    return losses.reshape(losses.shape[0], -1).mean(dim=1) if losses.ndim > 1 else losses


def mse_loss(model: nn.Module, batch: Any) -> Tensor:
    """Per-example squared error ``loss[b] = mean_j (model(x_b)_j - y_b,j)^2`` for regression.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> mse_loss(model, (torch.randn(5, 4), torch.randn(5, 2))).shape
        torch.Size([5])
    """
    inputs, targets = _inputs_targets(batch, "mse_loss")
    outputs = model(inputs)
    losses = F.mse_loss(outputs, targets.to(outputs.dtype).reshape(outputs.shape), reduction="none")
    return losses.reshape(losses.shape[0], -1).mean(dim=1)
