"""Per-example gradients projected on a set of directions: ``P[x, i] = <e_i, g_x>``.

Four routes compute the same numbers (``project`` dispatches, returning the per-example losses
too):

* ``hooks``: one ordinary forward and backward pass and a contraction per layer
  (``core.hooks``), for models whose selected parameters all sit in Linear, Conv, Embedding,
  LayerNorm or BatchNorm layers; the cheapest where it applies.
* ``loop``: ``grad`` of one example at a time, no ``vmap``: for models ``vmap`` cannot trace
  (data-dependent control flow, e.g. an attention mask checked with ``if mask.all()``), the
  route that always works.
* ``jvp``: forward-mode directional derivatives, vmapped over directions, as in the paper. One
  batched forward pass per chunk of directions gives ``<e_i, g_x>`` for every example of the batch
  at once (the loss is per example), so the cost grows with the number of directions k.
* ``grad``: per-example gradients (``vmap(grad)``) times the directions, one parameter tensor at a
  time: ``sum_l G_l [B, P_l] @ E_l [P_l, k]``. The flat ``[B, P]`` matrix is never built: its
  concatenation was a second ``B * P`` buffer per chunk, and with glibc's default allocator its
  fresh pages cost more than the products (digits CNN, interleaved in one run: self-influence at
  p=10 1.65x faster, at p=100 1.08x; 1.06x and 1.03x with the benchmarks' tuned allocator). The
  cost is about one per-example-gradient pass, nearly flat in k, with ``B * P`` memory per chunk.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, jvp, vmap

from lightning_influence.core import batch as _batch
from lightning_influence.core.functional_loss import FunctionalLoss
from lightning_influence.core.hooks import project_hooks
from lightning_influence.core.parameters import ParameterSpace

__all__ = [
    "ROUTES",
    "ProjectionMode",
    "per_example_gradients",
    "project",
    "project_grad",
    "project_jvp",
    "project_loop",
]

ProjectionMode = Literal["auto", "hooks", "grad", "jvp", "loop"]
ROUTES: tuple[str, ...] = ("hooks", "grad", "jvp", "loop")


def per_example_gradients(
    f: FunctionalLoss, params: dict[str, Tensor], batch: Any, space: ParameterSpace
) -> Tensor:
    """``[B, P]``: row b is ``d f(params, batch)_b / d params``, flattened.

    The loss function sees one-example batches (every batch-indexed leaf keeps a leading
    dimension of 1), so models and losses written for batches work unchanged.
    """
    return space.flatten_batched(_gradient_tree(f, params, batch))


def _gradient_tree(f: FunctionalLoss, params: dict[str, Tensor], batch: Any) -> dict[str, Tensor]:
    """Per-example gradients as a dict of ``[B, *shape]`` tensors (``vmap(grad)``)."""
    return _gradients_and_losses(f, params, batch)[0]


def _gradients_and_losses(
    f: FunctionalLoss, params: dict[str, Tensor], batch: Any
) -> tuple[dict[str, Tensor], Tensor]:
    dims = _batch.in_dims(batch)

    def single(p: dict[str, Tensor], example: Any) -> Tensor:
        return f(p, _batch.unsqueeze_mapped(example, dims)).reshape(())

    return vmap(grad_and_value(single), in_dims=(None, dims))(params, batch)


def project_grad(
    f: FunctionalLoss,
    params: dict[str, Tensor],
    batch: Any,
    directions: Tensor,
    space: ParameterSpace,
    chunk_size: int,
) -> Tensor:
    """``[B, k]`` projections through per-example gradients, ``chunk_size`` examples at a time.

    Each parameter tensor's gradients ``[B, P_l]`` meet their block of the directions
    ``[k, P_l]`` directly: no ``[B, P]`` concatenation.
    """
    return _grad_route(f, params, batch, directions, space, chunk_size)[0]


def _grad_route(
    f: FunctionalLoss,
    params: dict[str, Tensor],
    batch: Any,
    directions: Tensor,
    space: ParameterSpace,
    chunk_size: int,
    *,
    vectorized: bool = True,
) -> tuple[Tensor, Tensor]:
    size, k = _batch.batch_size(batch), directions.shape[0]
    first = next(iter(params.values()))
    blocks = space.unflatten_batched(directions.to(first.device, first.dtype))
    blocks = {n: b.reshape(k, -1) for n, b in blocks.items()}
    out, losses = [], []
    step = chunk_size if vectorized else 1
    for start in range(0, size, step):
        part = _batch.slice_batch(batch, start, min(start + step, size))
        if vectorized:
            grads, values = _gradients_and_losses(f, params, part)
        else:
            grads, values = grad_and_value(lambda p, part=part: f(p, part).sum())(params)
            grads = {n: g.unsqueeze(0) for n, g in grads.items()}
            values = values.reshape(1)
        total = first.new_zeros(_batch.batch_size(part), k)
        for name in space.names:
            g = grads.pop(name)  # freed once used: the chunk's peak stays one [B, P]
            total.addmm_(g.reshape(g.shape[0], -1), blocks[name].T)
            del g
        out.append(total)
        losses.append(values.detach())
    return torch.cat(out), torch.cat(losses)


def project_loop(
    f: FunctionalLoss,
    params: dict[str, Tensor],
    batch: Any,
    directions: Tensor,
    space: ParameterSpace,
) -> Tensor:
    """``[B, k]`` projections through ``grad`` of one example at a time (no ``vmap``).

    The route for models that ``vmap`` cannot trace: the example's batch dimension is a real
    size-1 dimension, so data-dependent control flow inside the model runs as in training.
    """
    return _grad_route(f, params, batch, directions, space, 1, vectorized=False)[0]


def project(
    route: str,
    f: FunctionalLoss,
    params: dict[str, Tensor],
    batch: Any,
    directions: Tensor,
    space: ParameterSpace,
    *,
    example_chunk: int,
    direction_chunk: int,
    model: nn.Module | None = None,
    owners: Any = None,
    check: bool = False,
) -> tuple[Tensor, Tensor]:
    """``([B, k] projections, [B] per-example losses)`` of one batch by ``route``.

    Args:
        route: one of ``ROUTES``.
        example_chunk: examples per ``vmap`` chunk (``grad``).
        direction_chunk: directions per ``vmap`` chunk (``jvp``).
        model, owners, check: for ``hooks`` (see ``core.hooks.project_hooks``).
    """
    if route == "hooks":
        if model is None or owners is None:
            raise ValueError("route='hooks' needs the model and its hooked layers (owners)")
        return project_hooks(f, params, batch, directions, space, model, owners, check=check)
    if route == "grad":
        return _grad_route(f, params, batch, directions, space, example_chunk)
    if route == "loop":
        return _grad_route(f, params, batch, directions, space, 1, vectorized=False)
    if route == "jvp":
        with torch.no_grad():
            losses = f(params, batch).detach()
        return project_jvp(f, params, batch, directions, space, direction_chunk), losses
    raise ValueError(f"route={route!r} is not one of {', '.join(map(repr, ROUTES))}")


def project_jvp(
    f: FunctionalLoss,
    params: dict[str, Tensor],
    batch: Any,
    directions: Tensor,
    space: ParameterSpace,
    chunk_size: int,
) -> Tensor:
    """``[B, k]`` projections through forward-mode JVPs, ``chunk_size`` directions at a time."""

    def directional(tangent: dict[str, Tensor]) -> Tensor:
        return jvp(lambda p: f(p, batch), (params,), (tangent,))[1]

    device = next(iter(params.values())).device
    dtype = next(iter(params.values())).dtype
    out = []
    for start in range(0, directions.shape[0], chunk_size):
        block = directions[start : start + chunk_size].to(device, dtype)
        out.append(vmap(directional)(space.unflatten_batched(block)))  # [k_chunk, B]
    return torch.cat(out).T
