"""Curvature operators over a fixed sample, and the registry that names them.

A curvature is the matrix whose inverse weighs influence: the Hessian of the mean training loss
(``"hessian"``, the paper's) or its Gauss-Newton part (``"ggn"``). Each is an operator
``v -> C v`` built on ``DatasetOperator``: it sums one product per batch of the HVP sample,
optionally across processes (one flattened collective per product), and divides by the global
number of examples. A new curvature is one class with ``batch_product`` and one registration::

    @register_curvature("my-curvature")
    def _make(inputs: CurvatureInputs) -> DatasetOperator:
        return MyOperator(inputs)

after which ``ArnoldiConfig(curvature="my-curvature")`` (the callback, the command line) uses it.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_influence.core import batch as _batch
from lightning_influence.core.functional_loss import FunctionalLoss, LossFn
from lightning_influence.core.parameters import ParameterSpace

__all__ = [
    "CurvatureInputs",
    "DatasetOperator",
    "curvature_names",
    "make_curvature",
    "register_curvature",
    "supports_cache",
]

ReduceFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class CurvatureInputs:
    """What a curvature factory may use to build its operator.

    Attributes:
        f: the functional per-example loss ``f(params, batch) -> Tensor[B]``.
        params: the parameter dict at which the curvature is taken (detached).
        space: the flat layout of ``params``.
        batches: the HVP sample, on the device; iterated in the same order at every product.
        num_examples: the global number of examples N (the divisor).
        mode: ``"fwd-rev"`` or ``"rev-rev"`` (how second derivatives are taken).
        reduce_fn: sum across processes, or None for one process.
        model, loss_fn, compute_dtype: the model and the user's ``loss_fn(model, batch)``, for
            curvatures that split the loss at the model's outputs (``"ggn"``).
        cache: keep what products share (``hvp_cache``); only curvatures registered with
            ``supports_cache=True`` see True.
    """

    f: FunctionalLoss
    params: dict[str, Tensor]
    space: ParameterSpace
    batches: Sequence[Any]
    num_examples: int
    mode: Literal["fwd-rev", "rev-rev"] = "fwd-rev"
    reduce_fn: ReduceFn | None = None
    model: nn.Module | None = None
    loss_fn: LossFn | None = None
    compute_dtype: torch.dtype | None = None
    cache: bool = False


class DatasetOperator:
    """``v -> C v`` for the mean over a fixed list of batches of a per-batch product.

    Subclasses implement ``batch_product(i, batch, tangent)``: the product summed over the
    examples of batch ``i`` (not averaged), as a dict like ``params``.

    Args:
        params: the parameter dict at which the curvature is taken (detached).
        space: flat layout of ``params``.
        batches: the sample, already on the device; iterated in the same order every product.
        num_examples: the global number of examples N (the divisor).
        reduce_fn: sum across processes (``None`` for a single process). It receives one flat
            vector per product: the product summed over this process's examples (the global
            count is known up front, so it does not travel with the vector).

    Attributes:
        seconds: time spent in products so far; ``calls``: products so far.
    """

    def __init__(
        self,
        params: dict[str, Tensor],
        space: ParameterSpace,
        batches: Sequence[Any],
        num_examples: int,
        reduce_fn: ReduceFn | None = None,
    ) -> None:
        self.params, self.space, self.batches = params, space, batches
        self.num_examples, self.reduce_fn = num_examples, reduce_fn
        self.seconds = 0.0
        self.calls = 0

    def batch_product(self, i: int, batch: Any, tangent: dict[str, Tensor]) -> dict[str, Tensor]:
        """The product of batch ``i`` (summed over its examples) with ``tangent``."""
        raise NotImplementedError

    def __call__(self, v: Tensor) -> Tensor:
        start = time.perf_counter()
        tangent = self.space.unflatten(v)
        # Summed and scaled in place in the first batch's flat product (``flatten`` concatenates:
        # a new tensor): at 10M parameters every temporary vector is a fresh 40 MB allocation,
        # which glibc serves with new pages, and their page faults cost about as much as the
        # arithmetic (three temporaries were ~15% of a fit).
        total: Tensor | None = None
        for i, batch in enumerate(self.batches):
            part = self.space.flatten(self.batch_product(i, batch, tangent))
            if total is None:
                total = part.to(torch.promote_types(v.dtype, part.dtype))
            else:
                total.add_(part)
        if total is None:
            total = torch.zeros_like(v)
        if self.reduce_fn is not None:
            total = self.reduce_fn(total)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return total.div_(self.num_examples)

    def clear_cache(self) -> None:
        """Free what the operator keeps between products (nothing, unless it caches)."""

    def locate_non_finite(self, v: Tensor) -> str:
        """Which batch makes ``C v`` non-finite (called only after a failure, so it may sync)."""
        tangent = self.space.unflatten(v)
        for i, batch in enumerate(self.batches):
            out = self.space.flatten(self.batch_product(i, batch, tangent))
            if not bool(torch.isfinite(out).all()):
                n = _batch.batch_size(batch)
                return f"batch {i} of the HVP sample ({n} examples)"
        if not math.isfinite(float(v.norm())):
            return "the Krylov vector itself (an earlier product overflowed)"
        return "the sum across processes (another rank's HVP sample)"


CurvatureFactory = Callable[[CurvatureInputs], DatasetOperator]
_REGISTRY: dict[str, tuple[CurvatureFactory, bool]] = {}


def register_curvature(
    name: str, *, supports_cache: bool = False
) -> Callable[[CurvatureFactory], CurvatureFactory]:
    """Register ``factory(inputs) -> DatasetOperator`` under ``name`` (a decorator).

    ``supports_cache``: whether the operator honours ``inputs.cache`` (``hvp_cache=True``); the
    config refuses ``hvp_cache`` with a curvature that does not.
    """

    def decorate(factory: CurvatureFactory) -> CurvatureFactory:
        if name in _REGISTRY and _REGISTRY[name][0] is not factory:
            raise ValueError(f"a curvature named {name!r} is already registered")
        _REGISTRY[name] = (factory, supports_cache)
        return factory

    return decorate


def _builtins() -> None:
    # The built-in curvatures register themselves when their modules are imported.
    for module in ("hvp", "ggn"):
        importlib.import_module(f"lightning_influence.core.{module}")


def curvature_names() -> tuple[str, ...]:
    """The registered curvatures.

    Example:
        >>> {"hessian", "ggn"} <= set(curvature_names())
        True
    """
    _builtins()
    return tuple(_REGISTRY)


def supports_cache(name: str) -> bool:
    """Whether curvature ``name`` can keep what its products share (``hvp_cache``)."""
    _builtins()
    return _REGISTRY[name][1]


def make_curvature(name: str, inputs: CurvatureInputs) -> DatasetOperator:
    """The operator of curvature ``name`` for ``inputs``.

    Raises:
        ValueError: no curvature of that name is registered (the message lists them).
    """
    _builtins()
    if name not in _REGISTRY:
        raise ValueError(
            f"curvature={name!r} is not one of {', '.join(map(repr, _REGISTRY))} "
            "(register a new one with lightning_influence.core.curvature.register_curvature)"
        )
    return _REGISTRY[name][0](inputs)
