"""The user's ``loss_fn(model, batch)`` as a pure function of a parameter dict (torch.func)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from lightning_influence.core import batch as _batch

__all__ = ["FunctionalLoss", "LossFn", "frozen_tensors", "make_functional_loss"]

LossFn = Callable[[nn.Module, Any], Tensor]
FunctionalLoss = Callable[[dict[str, Tensor], Any], Tensor]


class _LossModule(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``, so that ``functional_call`` can swap the
    parameters of ``model`` while the user's loss function calls ``model(...)`` as usual."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        # Not registered as a submodule even when it is an nn.Module: its parameters (if any)
        # are not ours to differentiate.
        object.__setattr__(self, "_loss_fn", loss_fn)

    def forward(self, batch: Any) -> Tensor:
        return self._loss_fn(self.model, batch)


def frozen_tensors(model: nn.Module, compute_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """Every parameter of ``model`` detached, and the buffers that need casting, in the compute
    dtype: what ``functional_call`` uses for what the caller does not swap in."""
    fixed: dict[str, Tensor] = {}
    for name, t in model.named_parameters():
        t = t.detach()
        if compute_dtype is not None and t.is_floating_point() and t.dtype != compute_dtype:
            t = t.to(compute_dtype)
        fixed[name] = t
    if compute_dtype is not None:
        for name, t in model.named_buffers():
            if t.is_floating_point() and t.dtype != compute_dtype:
                fixed[name] = t.detach().to(compute_dtype)
    return fixed


def make_functional_loss(
    model: nn.Module, loss_fn: LossFn, compute_dtype: torch.dtype | None = None
) -> FunctionalLoss:
    """``f(params, batch) -> Tensor[B]``: per-example losses with ``params`` swapped in.

    When ``compute_dtype`` differs from a floating tensor's dtype (a model trained in bf16, say),
    every floating parameter, buffer and batch leaf is cast to it: HVPs in float32 or better.
    Parameters left out of ``params`` take part detached: a parameter subset never builds an
    autograd graph through the others (nor returns results that require grad).
    """
    wrapper = _LossModule(model, loss_fn)
    fixed = {"model." + name: t for name, t in frozen_tensors(model, compute_dtype).items()}

    def f(params: dict[str, Tensor], batch: Any) -> Tensor:
        if compute_dtype is not None:
            batch = _batch.cast_floating(batch, compute_dtype)
        swapped = dict(fixed)
        swapped.update({"model." + n: p for n, p in params.items()})
        return functional_call(wrapper, swapped, (batch,))

    return f
