"""Hessian-vector products of the training loss.

``hvp`` is the per-batch primitive; ``DatasetHessian`` turns it into the operator
``v -> H v`` with ``H = (1/N) sum_x d^2 L(x) / d theta^2`` over a fixed HVP sample, optionally
summed across processes with one flattened collective per product. Given an ``OutputSplit`` it is
the Gauss-Newton operator ``v -> G v`` instead (``lightning_influence.core.ggn``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp

from lightning_influence.core import batch as _batch
from lightning_influence.core.functional_loss import FunctionalLoss
from lightning_influence.core.ggn import OutputSplit, ggn_vector_product
from lightning_influence.core.parameters import ParameterSpace

__all__ = ["DatasetHessian", "HVPMode", "hvp", "resolve_hvp_mode"]

HVPMode = Literal["auto", "fwd-rev", "rev-rev"]


def hvp(
    f: FunctionalLoss,
    params: dict[str, Tensor],
    batch: Any,
    tangent: dict[str, Tensor],
    mode: Literal["fwd-rev", "rev-rev"] = "fwd-rev",
) -> dict[str, Tensor]:
    """``(d^2/d theta^2 sum_b f(theta, batch)_b) v`` at ``theta = params``.

    ``fwd-rev`` is forward-over-reverse (``jvp`` of ``grad``), the paper's choice and usually the
    fastest. ``rev-rev`` (``vjp`` of ``grad``) is the fallback for backends where forward mode is
    wrong: on torch-xla 2.9, fwd-rev HVPs of ``F.cross_entropy`` are silently off.
    """

    def total(p: dict[str, Tensor]) -> Tensor:
        return f(p, batch).sum()

    if mode == "fwd-rev":
        return jvp(grad(total), (params,), (tangent,))[1]
    if mode == "rev-rev":
        _, pullback = vjp(grad(total), params)
        return pullback(tangent)[0]
    raise ValueError(f"hvp mode {mode!r} is not one of 'fwd-rev', 'rev-rev'")


def resolve_hvp_mode(mode: HVPMode, device: torch.device) -> Literal["fwd-rev", "rev-rev"]:
    """``auto`` picks ``rev-rev`` on XLA devices (fwd-rev is wrong there) and ``fwd-rev`` elsewhere."""
    if mode == "auto":
        return "rev-rev" if device.type == "xla" else "fwd-rev"
    if mode not in ("fwd-rev", "rev-rev"):
        raise ValueError(f"hvp_mode={mode!r} is not one of 'auto', 'fwd-rev', 'rev-rev'")
    return mode


ReduceFn = Callable[[Tensor], Tensor]


class DatasetHessian:
    """The operator ``v -> H v`` for the mean loss over a fixed list of batches.

    Args:
        f: functional per-example loss.
        params: the parameter dict at which H is taken (detached).
        space: flat layout of ``params``.
        batches: the HVP sample, already on the device; iterated in the same order every product.
        mode: HVP mode.
        reduce_fn: sum across processes (``None`` for a single process). It receives one flat
            vector per product: ``H v`` summed over this process's examples (the global count
            ``num_examples`` is known up front, so it does not travel with the vector).
        num_examples: the global number of examples N (the divisor).
        ggn: products of the Gauss-Newton matrix instead of the Hessian, through this split of
            the loss at the model's outputs.
    """

    def __init__(
        self,
        f: FunctionalLoss,
        params: dict[str, Tensor],
        space: ParameterSpace,
        batches: Sequence[Any],
        mode: Literal["fwd-rev", "rev-rev"],
        num_examples: int,
        reduce_fn: ReduceFn | None = None,
        *,
        ggn: OutputSplit | None = None,
    ) -> None:
        self.f, self.params, self.space, self.batches = f, params, space, batches
        self.mode, self.num_examples, self.reduce_fn = mode, num_examples, reduce_fn
        self.ggn = ggn
        # the model inputs of each cached batch (GGN): found once, not at every product
        self._inputs: dict[int, Any] = {}
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, v: Tensor) -> Tensor:
        start = time.perf_counter()
        tangent = self.space.unflatten(v)
        total = torch.zeros_like(v)
        for i, batch in enumerate(self.batches):
            total = total + self.space.flatten(self._product(i, batch, tangent))
        if self.reduce_fn is not None:
            total = self.reduce_fn(total)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return total / self.num_examples

    def _product(self, i: int, batch: Any, tangent: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.ggn is None:
            return hvp(self.f, self.params, batch, tangent, self.mode)
        inputs = self._inputs.get(i) if isinstance(self.batches, (list, tuple)) else None
        if inputs is None:
            inputs = self.ggn.inputs(batch)
            if isinstance(self.batches, (list, tuple)):
                self._inputs[i] = inputs
        return ggn_vector_product(self.ggn, self.params, batch, inputs, tangent, self.mode)

    def locate_non_finite(self, v: Tensor) -> str:
        """Which batch makes ``H v`` non-finite (called only after a failure, so it may sync)."""
        tangent = self.space.unflatten(v)
        for i, batch in enumerate(self.batches):
            out = self.space.flatten(self._product(i, batch, tangent))
            if not bool(torch.isfinite(out).all()):
                n = _batch.batch_size(batch)
                return f"batch {i} of the HVP sample ({n} examples)"
        if not math.isfinite(float(v.norm())):
            return "the Krylov vector itself (an earlier product overflowed)"
        return "the sum across processes (another rank's HVP sample)"
