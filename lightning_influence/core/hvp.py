"""Hessian-vector products of the training loss.

``hvp`` is the per-batch primitive; ``DatasetHessian`` turns it into the operator
``v -> H v`` with ``H = (1/N) sum_x d^2 L(x) / d theta^2`` over a fixed HVP sample, optionally
summed across processes with one flattened collective per product. Given an ``OutputSplit`` it is
the Gauss-Newton operator ``v -> G v`` instead (``lightning_influence.core.ggn``).

Two ways to make products cheaper (issue 13), both exact up to rounding:

* ``cache=True``: the Hessian is taken at fixed parameters over a fixed sample, so the forward
  and backward pass that every product repeats (the primal of ``grad``) can be done once per
  batch. The operator keeps, per batch, the pullback of ``grad`` (``vjp(grad(total), params)``,
  i.e. reverse-over-reverse with its graph retained); a product is then one reverse pass through
  that graph. The price is memory: the double-backward graph (activations and their gradients)
  of the whole HVP sample stays alive as long as the operator does.
* ``matmat(V)``: b products in one pass over the sample, ``vmap`` over the b tangents, so the
  primal is shared by the block (and batched kernels replace b small ones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

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
        cache: keep each batch's pullback of ``grad`` (built at the first product) so that a
            product is one reverse pass instead of a forward and two backward passes; ``mode``
            is then irrelevant (the cached product is reverse-over-reverse). Needs ``batches``
            as a list or tuple and the Hessian (not ``ggn``); holds the double-backward graph of
            the whole sample in memory. Call ``clear_cache()`` to free it.

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
        >>> V = torch.randn(4, space.dim)
        >>> torch.allclose(cached.matmat(V), torch.stack([plain(v) for v in V]), atol=1e-5)
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
        ggn: OutputSplit | None = None,
        cache: bool = False,
    ) -> None:
        if cache and ggn is not None:
            raise ValueError(
                "cache=True caches Hessian products; with ggn (curvature='ggn') pass cache=False"
            )
        if cache and not isinstance(batches, (list, tuple)):
            raise ValueError(
                f"cache=True needs the HVP sample as a list or tuple of batches, got "
                f"{type(batches).__name__}: pass list(batches) (cache_batches=True), or cache=False"
            )
        self.f, self.params, self.space, self.batches = f, params, space, batches
        self.mode, self.num_examples, self.reduce_fn = mode, num_examples, reduce_fn
        self.ggn = ggn
        self.cache = cache
        # per batch: the pullback of grad(total) at params (cache=True), built at first use
        self._pullbacks: dict[int, Callable[[dict[str, Tensor]], tuple[dict[str, Tensor]]]] = {}
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

    def matmat(self, vectors: Tensor) -> Tensor:
        """``[b, P] -> [b, P]``: the rows' products ``H v_i`` in one pass over the HVP sample.

        Each batch's product is ``vmap``-ped over the b tangents, so its primal (forward pass and
        gradient) is computed once for the block. Equal to ``torch.stack([self(v) for v in V])``
        up to rounding; ``calls`` grows by b, and ``reduce_fn`` receives one flat ``[b * P]``
        vector per block.
        """
        if vectors.ndim != 2 or vectors.shape[1] != self.space.dim:
            raise ValueError(
                f"matmat takes a [b, P={self.space.dim}] matrix of row vectors, got shape "
                f"{tuple(vectors.shape)}: stack the vectors as rows, or call the operator on one"
            )
        start = time.perf_counter()
        tangents = self.space.unflatten_batched(vectors)
        total = torch.zeros_like(vectors)
        for i, batch in enumerate(self.batches):
            if self.cache:
                # built outside vmap: a graph made under a vmap level must not outlive it
                pullback = self._pullback(i, batch)

                def one(t: dict[str, Tensor], pullback: Any = pullback) -> dict[str, Tensor]:
                    return pullback(t)[0]

            else:

                def one(t: dict[str, Tensor], i: int = i, batch: Any = batch) -> dict[str, Tensor]:
                    return self._product(i, batch, t)

            total = total + self.space.flatten_batched(vmap(one)(tangents))
        if self.reduce_fn is not None:
            total = self.reduce_fn(total.reshape(-1)).reshape(total.shape)
        self.seconds += time.perf_counter() - start
        self.calls += vectors.shape[0]
        return total / self.num_examples

    def clear_cache(self) -> None:
        """Drop the cached pullbacks (``cache=True``): their graphs' memory is freed."""
        self._pullbacks.clear()

    def _pullback(self, i: int, batch: Any) -> Callable[[dict[str, Tensor]], Any]:
        pullback = self._pullbacks.get(i)
        if pullback is None:
            f = self.f

            def total(p: dict[str, Tensor]) -> Tensor:
                return f(p, batch).sum()

            # torch.func keeps the graph of grad(total) for repeated pullbacks: H v = v^T H
            # (H is symmetric), so each product is one reverse pass through that graph.
            pullback = vjp(grad(total), self.params)[1]
            self._pullbacks[i] = pullback
        return pullback

    def _product(self, i: int, batch: Any, tangent: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.cache:
            return self._pullback(i, batch)(tangent)[0]
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
