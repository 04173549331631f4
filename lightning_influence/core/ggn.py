"""Gauss-Newton (GGN) vector products: the positive semi-definite part of the Hessian.

For a per-example loss ``L(x) = l(z(theta, x))`` of the model's outputs ``z``, the generalized
Gauss-Newton matrix of the mean loss over N examples is

    G = (1/N) sum_x J_x^T  (d^2 l / dz^2)  J_x,        J_x = dz(theta, x) / d theta,

the Hessian without the term that carries the outputs' own curvature. For convex losses of the
outputs (cross-entropy, squared error) G is positive semi-definite: no negative eigenvalues. One
product ``G v`` is a JVP through the model (``u = J v``), the loss' Hessian on the outputs
(``H_l u``, cheap: the loss alone), and a VJP back (``J^T H_l u``).

The user's ``loss_fn(model, batch)`` is split at the model call: ``OutputSplit`` runs it once with
a stand-in model that records the inputs the loss passes to ``model(...)``, then calls the model
functionally on those inputs, and evaluates the loss on given outputs with a stand-in that returns
them. The loss must call the model exactly once per batch (a clear error says so otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp
from torch.utils import _pytree as pytree

from lightning_influence.core import batch as _batch
from lightning_influence.core.curvature import (
    CurvatureInputs,
    DatasetOperator,
    ReduceFn,
    register_curvature,
)
from lightning_influence.core.functional_loss import LossFn, frozen_tensors
from lightning_influence.core.parameters import ParameterSpace

__all__ = ["DatasetGGN", "OutputSplit", "ggn_vector_product"]


class _StandIn(nn.Module):
    """Takes the model's place inside ``loss_fn``: records the call, returns ``outputs``.

    Attribute reads other than the call go to the real model (``model.num_classes``, ...). Not
    registered as a submodule: its parameters are not ours.
    """

    def __init__(self, model: nn.Module, outputs: Any = None, compute: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_outputs", outputs)
        object.__setattr__(self, "_compute", compute)
        object.__setattr__(self, "calls", [])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self._model(*args, **kwargs) if self._compute else self._outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_model"), name)


class OutputSplit:
    """``loss_fn(model, batch)`` as ``outputs(params, inputs)`` and ``loss(outputs, batch)``.

    Args:
        model: the model ``loss_fn`` calls.
        loss_fn: per-example loss ``loss_fn(model, batch) -> Tensor[B]`` that calls ``model(...)``
            once and computes the losses from its outputs.
        compute_dtype: as for ``make_functional_loss``: floating parameters, buffers and batch
            leaves are cast to it when given.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, compute_dtype: torch.dtype | None = None
    ) -> None:
        self.model, self.loss_fn, self.compute_dtype = model, loss_fn, compute_dtype
        self.fixed = frozen_tensors(model, compute_dtype)

    def _cast(self, batch: Any) -> Any:
        if self.compute_dtype is None:
            return batch
        return _batch.cast_floating(batch, self.compute_dtype)

    def inputs(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments ``loss_fn`` passes to the model for ``batch`` (it is run once to see)."""
        stand_in = _StandIn(self.model, compute=True)
        with torch.no_grad():
            self.loss_fn(stand_in, self._cast(batch))
        if len(stand_in.calls) != 1:
            raise ValueError(
                f"curvature='ggn' needs a loss_fn that calls the model exactly once per batch; this "
                f"one called it {len(stand_in.calls)} times: use curvature='hessian', or compute the "
                "loss from one model(...) call"
            )
        return stand_in.calls[0]

    def outputs(
        self, params: dict[str, Tensor], inputs: tuple[tuple[Any, ...], dict[str, Any]]
    ) -> Any:
        """The model's outputs on ``inputs`` with ``params`` swapped in."""
        args, kwargs = inputs
        swapped = dict(self.fixed)
        swapped.update(params)
        return functional_call(self.model, swapped, args, kwargs)

    def loss(self, outputs: Any, batch: Any) -> Tensor:
        """``loss_fn``'s per-example losses for the given model outputs."""
        return self.loss_fn(_StandIn(self.model, outputs), self._cast(batch))


def ggn_vector_product(
    split: OutputSplit,
    params: dict[str, Tensor],
    batch: Any,
    inputs: tuple[tuple[Any, ...], dict[str, Any]],
    tangent: dict[str, Tensor],
    mode: Literal["fwd-rev", "rev-rev"] = "fwd-rev",
) -> dict[str, Tensor]:
    """``(sum_b J_b^T H_l,b J_b) v`` at ``theta = params`` for one batch (summed, not averaged).

    ``fwd-rev`` takes ``J v`` by a JVP; ``rev-rev`` by the transpose of a VJP (two reverse
    passes: for backends where forward mode is wrong). ``H_l u`` is always reverse-over-reverse
    on the loss of the outputs, which costs little beside the model.
    """

    def out(p: dict[str, Tensor]) -> Any:
        return split.outputs(p, inputs)

    z, pullback = vjp(out, params)
    if mode == "fwd-rev":
        jv = jvp(out, (params,), (tangent,))[1]
    elif mode == "rev-rev":
        # J v is the VJP of the linear map u -> J^T u, at any u, with cotangent v
        zeros = pytree.tree_map(torch.zeros_like, z)
        jv = vjp(lambda u: pullback(u)[0], zeros)[1](tangent)[0]
    else:
        raise ValueError(f"mode={mode!r} is not one of 'fwd-rev', 'rev-rev'")

    def total_loss(outputs: Any) -> Tensor:
        return split.loss(outputs, batch).sum()

    h_jv = vjp(grad(total_loss), z)[1](jv)[0]
    return pullback(h_jv)[0]


class DatasetGGN(DatasetOperator):
    """The operator ``v -> G v`` (the ``"ggn"`` curvature) over a fixed list of batches.

    Args:
        split: the loss split at the model's outputs.
        params, space, batches, num_examples, reduce_fn: as for ``DatasetOperator``.
        mode: how ``J v`` is taken (see ``ggn_vector_product``).

    The model inputs of each batch are found once (the loss is run with a stand-in model) and
    kept when ``batches`` is a list or tuple.
    """

    def __init__(
        self,
        split: OutputSplit,
        params: dict[str, Tensor],
        space: ParameterSpace,
        batches: Sequence[Any],
        mode: Literal["fwd-rev", "rev-rev"],
        num_examples: int,
        reduce_fn: ReduceFn | None = None,
    ) -> None:
        super().__init__(params, space, batches, num_examples, reduce_fn)
        self.split, self.mode = split, mode
        self._inputs: dict[int, Any] = {}

    def batch_product(self, i: int, batch: Any, tangent: dict[str, Tensor]) -> dict[str, Tensor]:
        keep = isinstance(self.batches, (list, tuple))
        inputs = self._inputs.get(i) if keep else None
        if inputs is None:
            inputs = self.split.inputs(batch)
            if keep:
                self._inputs[i] = inputs
        return ggn_vector_product(self.split, self.params, batch, inputs, tangent, self.mode)


@register_curvature("ggn")
def _ggn(inputs: CurvatureInputs) -> DatasetGGN:
    if inputs.model is None or inputs.loss_fn is None:
        raise ValueError("curvature='ggn' needs the model and loss_fn (CurvatureInputs)")
    split = OutputSplit(inputs.model, inputs.loss_fn, inputs.compute_dtype)
    return DatasetGGN(
        split,
        inputs.params,
        inputs.space,
        inputs.batches,
        inputs.mode,
        inputs.num_examples,
        inputs.reduce_fn,
    )
