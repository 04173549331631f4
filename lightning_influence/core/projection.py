"""Per-example gradients projected on a set of directions: ``P[x, i] = <e_i, g_x>``.

Two routes compute the same numbers:

* ``jvp``: forward-mode directional derivatives, vmapped over directions, as in the paper. One
  batched forward pass per chunk of directions gives ``<e_i, g_x>`` for every example of the batch
  at once (the loss is per example), so the cost grows with the number of directions k.
* ``grad``: per-example gradients (``vmap(grad)``) ``[B, P]`` times the direction matrix ``[P, k]``.
  The cost is about one per-example-gradient pass, nearly flat in k, with ``B * P`` memory per chunk.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from lightning_influence.core import batch as _batch
from lightning_influence.core.functional_loss import FunctionalLoss
from lightning_influence.core.parameters import ParameterSpace

__all__ = ["ProjectionMode", "per_example_gradients", "project_grad", "project_jvp"]

ProjectionMode = Literal["auto", "jvp", "grad"]


def per_example_gradients(
    f: FunctionalLoss, params: dict[str, Tensor], batch: Any, space: ParameterSpace
) -> Tensor:
    """``[B, P]``: row b is ``d f(params, batch)_b / d params``, flattened.

    The loss function sees one-example batches (every batch-indexed leaf keeps a leading
    dimension of 1), so models and losses written for batches work unchanged.
    """
    dims = _batch.in_dims(batch)

    def single(p: dict[str, Tensor], example: Any) -> Tensor:
        return f(p, _batch.unsqueeze_mapped(example, dims)).reshape(())

    grads = vmap(grad(single), in_dims=(None, dims))(params, batch)
    return space.flatten_batched(grads)


def project_grad(
    f: FunctionalLoss,
    params: dict[str, Tensor],
    batch: Any,
    directions: Tensor,
    space: ParameterSpace,
    chunk_size: int,
) -> Tensor:
    """``[B, k]`` projections through per-example gradients, ``chunk_size`` examples at a time."""
    size = _batch.batch_size(batch)
    out = []
    for start in range(0, size, chunk_size):
        part = _batch.slice_batch(batch, start, min(start + chunk_size, size))
        g = per_example_gradients(f, params, part, space)
        out.append(g @ directions.to(g.device, g.dtype).T)
        del g  # else the previous chunk stays alive while the next one is built
    return torch.cat(out)


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
