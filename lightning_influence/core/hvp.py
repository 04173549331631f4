"""Hessian-vector products of the training loss.

``hvp`` is the per-batch primitive; ``DatasetHessian`` (the ``"hessian"`` curvature) turns it into
the operator ``v -> H v`` with ``H = (1/N) sum_x d^2 L(x) / d theta^2`` over a fixed HVP sample,
optionally summed across processes with one flattened collective per product
(``core.curvature.DatasetOperator``).

With ``cache=True`` (``hvp_cache``) the products are cheaper and exact up to rounding: the Hessian
is taken at fixed parameters over a fixed sample, so the forward and backward pass that every
product repeats (the primal of ``grad``) can be done once per batch. The operator keeps, per
batch, the pullback of ``grad`` (``vjp(grad(total), params)``, i.e. reverse-over-reverse with its
graph retained); a product is then one reverse pass through that graph. The price is memory: the
double-backward graph (activations and their gradients) of the whole HVP sample stays alive as
long as the operator does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp

from lightning_influence.core import batch as _batch
from lightning_influence.core.curvature import (
    CurvatureInputs,
    DatasetOperator,
    ReduceFn,
    register_curvature,
)
from lightning_influence.core.functional_loss import FunctionalLoss
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


def memory_in_use(device: torch.device) -> int:
    """Bytes in use: the CUDA allocator's on a CUDA device, else the process' resident set (0
    where neither can be read)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_available(device: torch.device) -> int | None:
    """Free bytes: the CUDA device's, else the host's ``MemAvailable``; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class DatasetHessian(DatasetOperator):
    """The operator ``v -> H v`` for the mean loss over a fixed list of batches.

    Args:
        f: functional per-example loss.
        params: the parameter dict at which H is taken (detached).
        space: flat layout of ``params``.
        batches: the HVP sample, already on the device; iterated in the same order every product.
        mode: HVP mode.
        num_examples: the global number of examples N (the divisor).
        reduce_fn: sum across processes (``None`` for a single process), see ``DatasetOperator``.
        cache: keep each batch's pullback of ``grad`` (built at the first product) so that a
            product is one reverse pass instead of a forward and two backward passes; ``mode``
            is then irrelevant (the cached product is reverse-over-reverse). Needs ``batches``
            as a list or tuple; holds the double-backward graph of the whole sample in memory.
            Call ``clear_cache()`` to free it.

    Example:
        >>> from lightning_influence.core.functional_loss import make_functional_loss
        >>> model = torch.nn.Linear(3, 2)
        >>> loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
        >>> params = {n: p.detach() for n, p in model.named_parameters()}
        >>> space = ParameterSpace.of(params)
        >>> batches = [(torch.randn(5, 3), torch.randint(0, 2, (5,)))]
        >>> f = make_functional_loss(model, loss)
        >>> plain = DatasetHessian(f, params, space, batches, "fwd-rev", 5)
        >>> cached = DatasetHessian(f, params, space, batches, "fwd-rev", 5, cache=True)
        >>> v = torch.randn(space.dim)
        >>> torch.allclose(cached(v), plain(v), atol=1e-5)
        True
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
        cache: bool = False,
    ) -> None:
        if cache and not isinstance(batches, (list, tuple)):
            raise ValueError(
                f"cache=True needs the HVP sample as a list or tuple of batches, got "
                f"{type(batches).__name__}: pass list(batches) (cache_batches=True), or cache=False"
            )
        super().__init__(params, space, batches, num_examples, reduce_fn)
        self.f, self.mode, self.cache = f, mode, cache
        # per batch: the pullback of grad(total) at params (cache=True), built at first use
        self._pullbacks: dict[int, Callable[[dict[str, Tensor]], tuple[dict[str, Tensor]]]] = {}

    def clear_cache(self) -> None:
        """Drop the cached pullbacks (``cache=True``): their graphs' memory is freed."""
        self._pullbacks.clear()

    def cache_estimate(self, device: torch.device) -> int:
        """Bytes the cache would hold for the whole sample: batch 0's pullback is built (and kept)
        and the memory it took (the device allocator's on CUDA, the resident set on CPU) scaled
        by the sample's examples over the batch's. 0 when it cannot be measured."""
        batches = self.batches
        if not self.cache or not batches:
            return 0
        before = memory_in_use(device)
        self.pullback(0, batches[0])
        grown = max(memory_in_use(device) - before, 0)
        first = _batch.batch_size(batches[0])
        total = sum(_batch.batch_size(b) for b in batches)
        return int(grown * total / max(first, 1))

    def pullback(self, i: int, batch: Any) -> Callable[[dict[str, Tensor]], Any]:
        """Batch ``i``'s pullback of ``grad`` at ``params`` (kept under ``cache=True``):
        ``pullback(v)[0]`` is ``H_i v``, one reverse pass through the kept graph."""
        pullback = self._pullbacks.get(i)
        if pullback is None:
            f = self.f

            def total(p: dict[str, Tensor]) -> Tensor:
                return f(p, batch).sum()

            # torch.func keeps the graph of grad(total) for repeated pullbacks: H v = v^T H
            # (H is symmetric), so each product is one reverse pass through that graph.
            pullback = vjp(grad(total), self.params)[1]
            if self.cache:
                self._pullbacks[i] = pullback
        return pullback

    def batch_product(self, i: int, batch: Any, tangent: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.cache:
            return self.pullback(i, batch)(tangent)[0]
        return hvp(self.f, self.params, batch, tangent, self.mode)


@register_curvature("hessian", supports_cache=True)
def _hessian(inputs: CurvatureInputs) -> DatasetHessian:
    return DatasetHessian(
        inputs.f,
        inputs.params,
        inputs.space,
        inputs.batches,
        inputs.mode,
        inputs.num_examples,
        inputs.reduce_fn,
        cache=inputs.cache,
    )
