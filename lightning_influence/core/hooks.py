"""Projected per-example gradients from one ordinary backward pass, through module hooks.

For the layers whose per-example weight gradient is a contraction of the layer's input ``a`` and
the gradient ``delta`` of the summed loss at its output, the projection ``<e_i, g_x>`` needs no
``vmap``: one forward pass records every hooked layer's input and output, one backward pass of
``sum_x L(x)`` gives ``delta`` at every output (the examples are independent in eval mode, so
``delta_x`` is example x's own), and per layer

* ``nn.Linear`` (any leading dimensions, a sequence's positions ``t``):
  ``G_x = sum_t delta_xt a_xt^T`` and the bias ``sum_t delta_xt``;
* ``Conv1D`` of Hugging Face transformers (GPT-2's; weight ``[in, out]``): ``G_x = sum_t a_xt delta_xt^T``;
* ``nn.Conv1d`` / ``nn.Conv2d`` (``groups=1``): ``G_x = delta_x unfold(a_x)^T``;
* ``nn.Embedding``: ``<E_i, G_x> = sum_t <E_i[idx_xt], delta_xt>`` (``padding_idx`` rows excluded);
* ``nn.LayerNorm`` and ``nn.BatchNorm1d/2d`` in eval mode (elementwise affine):
  ``sum_t delta_xt * xhat_xt`` and ``sum_t delta_xt``;

then ``P[x, i] = <E_i, G_x>`` one layer at a time (``G`` for one layer of one batch at most).
A Linear layer that sees one position per example (``a_x`` a vector: an MLP's, a classifier
head's) skips ``G``: ``<E_i, delta_x a_x^T> = delta_x^T (E_i a_x)``, so ``a @ E^T`` (one matrix
product over the stacked ``E_i``) and a dot with ``delta`` give ``P`` at the cost of the
projection alone, without writing the ``[B, out, in]`` outer products.

The route is exact where it applies. It does not apply when a selected parameter belongs to
another kind of module, is used outside its module's ``forward`` (``F.linear(x, m.weight)``), or
a layer sees inputs that are not indexed by example (a position embedding called on
``position_ids`` of batch size 1 and broadcast): ``hook_support`` says so up front for the first
case, and ``project_hooks(..., check=True)`` compares the sum over the batch with the gradient of
the summed loss for the others (``HooksUnsupported``), so a caller can fall back to ``vmap``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_influence.core import batch as _batch
from lightning_influence.core.functional_loss import FunctionalLoss
from lightning_influence.core.parameters import ParameterSpace

__all__ = ["HooksUnsupported", "hook_support", "project_hooks"]


class HooksUnsupported(RuntimeError):
    """The hooks route cannot compute this model's per-example gradients exactly (the message
    says which parameter or layer); the ``vmap`` routes can."""


def _is_hf_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D, recognised without importing transformers
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.ndim == 2


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "linear"
    if _is_hf_conv1d(module):
        return "conv1d_hf"
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1:
        if isinstance(module.padding, str) and module.padding != "valid":
            return None  # 'same' padding: F.unfold takes numbers only
        if module.padding_mode != "zeros":
            return None
        return "conv"
    if isinstance(module, nn.Embedding) and module.max_norm is None:
        return "embedding"
    if isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        return "layernorm"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.affine:
        return "batchnorm"
    return None


@dataclass
class _Owner:
    module: nn.Module
    kind: str
    prefix: str
    params: dict[str, str] = field(default_factory=dict)  # attribute (weight, bias) -> full name


def hook_support(model: nn.Module, names: tuple[str, ...]) -> dict[str, _Owner] | str:
    """The layers owning the parameters ``names`` (keyed by module path), or why the hooks route
    cannot serve them (a string naming the first parameter of an unsupported layer)."""
    owners: dict[str, _Owner] = {}
    for name in names:
        prefix, _, attribute = name.rpartition(".")
        try:
            module = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            return f"parameter {name} has no owning module"
        kind = _kind(module)
        if kind is None or attribute not in ("weight", "bias"):
            return f"parameter {name} belongs to {type(module).__name__}, which the hooks route does not cover"
        owner = owners.setdefault(prefix, _Owner(module, kind, prefix))
        owner.params[attribute] = name
    return owners


@dataclass
class _Record:
    owner: _Owner
    inputs: Tensor
    output: Tensor


@contextmanager
def _recording(owners: dict[str, _Owner]) -> Iterator[list[_Record]]:
    records: list[_Record] = []
    handles = []
    for owner in owners.values():

        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any, owner: _Owner = owner):
            inputs = args[0] if args else next(iter(kwargs.values()))
            records.append(_Record(owner, inputs, output))

        handles.append(owner.module.register_forward_hook(hook, with_kwargs=True))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _per_example(
    record: _Record, delta: Tensor, params: dict[str, Tensor], size: int
) -> dict[str, Tensor]:
    """Per-example gradients ``{full name: [B, *shape]}`` of one recorded call of a layer."""
    owner, a = record.owner, record.inputs.detach()
    module, out = owner.module, {}
    if a.shape[0] != size or delta.shape[0] != size:
        raise HooksUnsupported(
            f"layer {owner.prefix or type(module).__name__} saw inputs of leading size "
            f"{a.shape[0]} in a batch of {size} examples (inputs not indexed by example, e.g. "
            "position ids broadcast over the batch)"
        )
    weight, bias = owner.params.get("weight"), owner.params.get("bias")
    if owner.kind in ("linear", "conv1d_hf"):
        a3 = a.reshape(size, -1, a.shape[-1])
        d3 = delta.reshape(size, -1, delta.shape[-1])
        if weight is not None:
            g = torch.bmm(d3.transpose(1, 2), a3)  # [B, out, in]
            out[weight] = g.transpose(1, 2) if owner.kind == "conv1d_hf" else g
        if bias is not None:
            out[bias] = d3.sum(1)
    elif owner.kind == "conv":
        two_d = isinstance(module, nn.Conv2d)
        x = a if two_d else a.unsqueeze(-2)
        d = delta if two_d else delta.unsqueeze(-2)

        def pair(v: Any, dummy: int = 1) -> tuple[int, int]:
            # a 1-d convolution is a 2-d one over a dummy height of 1 (kernel 1, no padding)
            return tuple(v) if two_d else (dummy, v[0])  # type: ignore[return-value]

        padding = (0, 0) if module.padding == "valid" else pair(module.padding, dummy=0)
        cols = F.unfold(
            x,
            pair(module.kernel_size),
            dilation=pair(module.dilation),
            padding=padding,
            stride=pair(module.stride),
        )  # [B, C_in * K, L]
        d = d.reshape(size, d.shape[1], -1)  # [B, C_out, L]
        if weight is not None:
            out[weight] = torch.bmm(d, cols.transpose(1, 2)).reshape(size, *params[weight].shape)
        if bias is not None:
            out[bias] = d.sum(-1)
    elif owner.kind == "layernorm":
        normalized = len(module.normalized_shape)
        dims = tuple(range(a.ndim - normalized, a.ndim))
        mean = a.mean(dims, keepdim=True)
        var = a.var(dims, keepdim=True, unbiased=False)
        xhat = (a - mean) / torch.sqrt(var + module.eps)
        positions = tuple(range(1, a.ndim - normalized))  # summed per example
        _affine(out, weight, bias, delta, xhat, positions)
    elif owner.kind == "batchnorm":
        if module.training or module.running_mean is None:
            raise HooksUnsupported(
                f"layer {owner.prefix} is a BatchNorm in training mode (its examples are "
                "coupled through the batch statistics)"
            )
        shape = (1, -1) + (1,) * (a.ndim - 2)
        mean = module.running_mean.reshape(shape).to(a)
        var = module.running_var.reshape(shape).to(a)
        xhat = (a - mean) / torch.sqrt(var + module.eps)
        _affine(out, weight, bias, delta, xhat, tuple(range(2, a.ndim)))
    return out


def _affine(
    out: dict[str, Tensor],
    weight: str | None,
    bias: str | None,
    delta: Tensor,
    xhat: Tensor,
    positions: tuple[int, ...],
) -> None:
    """Per-example gradients of an elementwise affine ``y = xhat * w + b``, summed over the
    ``positions`` dimensions of each example."""
    if weight is not None:
        g = delta * xhat
        out[weight] = g.sum(positions) if positions else g
    if bias is not None:
        out[bias] = delta.sum(positions) if positions else delta


def _single_position(record: _Record, size: int) -> bool:
    """A Linear (or HF Conv1D) layer that sees exactly one input vector per example."""
    a = record.inputs
    return (
        record.owner.kind in ("linear", "conv1d_hf")
        and "weight" in record.owner.params
        and a.shape[0] == size
        and a.numel() == size * a.shape[-1]
    )


def _linear_projection(
    record: _Record, delta: Tensor, blocks: dict[str, Tensor], size: int
) -> dict[str, Tensor]:
    """``{name: [B, k]}`` of a single-position Linear layer without its per-example gradients:
    ``<E_i, delta a^T> = delta^T E_i a`` (``a^T E_i delta`` for HF's Conv1D, weight ``[in, out]``)."""
    owner = record.owner
    a = record.inputs.detach().reshape(size, -1)
    d = delta.reshape(size, -1)
    weight = owner.params["weight"]
    block = blocks[weight]  # [k, out, in] (Conv1D: [k, in, out])
    k = block.shape[0]
    if owner.kind == "linear":
        z = a @ block.reshape(k * block.shape[1], block.shape[2]).T  # [B, k * out]: E_i a
        out = {weight: (z.reshape(size, k, -1) * d.unsqueeze(1)).sum(-1)}
    else:
        z = d @ block.reshape(k * block.shape[1], block.shape[2]).T  # [B, k * in]: E_i delta
        out = {weight: (z.reshape(size, k, -1) * a.unsqueeze(1)).sum(-1)}
    bias = owner.params.get("bias")
    if bias is not None:
        out[bias] = d @ blocks[bias].reshape(k, -1).T
    return out


def _embedding_projection(record: _Record, delta: Tensor, block: Tensor, size: int) -> Tensor:
    """``[B, k]``: ``sum_t <E_i[idx_t], delta_t>`` for an embedding's weight block ``[k, V, D]``."""
    idx = record.inputs
    if idx.shape[0] != size or delta.shape[0] != size:
        raise HooksUnsupported(
            f"embedding {record.owner.prefix} saw indices of leading size {idx.shape[0]} in a "
            f"batch of {size} examples (e.g. position ids broadcast over the batch)"
        )
    idx = idx.reshape(size, -1)
    d = delta.reshape(size, idx.shape[1], -1)  # [B, T, D]
    padding = record.owner.module.padding_idx
    if padding is not None:
        d = d * (idx != padding).unsqueeze(-1).to(d)
    rows = block[:, idx]  # [k, B, T, D]
    return torch.einsum("kbtd,btd->bk", rows, d)


def project_hooks(
    f: FunctionalLoss,
    params: dict[str, Tensor],
    batch: Any,
    directions: Tensor,
    space: ParameterSpace,
    model: nn.Module,
    owners: dict[str, _Owner],
    *,
    check: bool = False,
) -> tuple[Tensor, Tensor]:
    """``([B, k] projections <e_i, g_x>, [B] losses)`` of one batch from one backward pass.

    Args:
        f: the functional per-example loss (``f(params, batch) -> [B]``).
        params: the selected parameters (detached); made leaves that require grad here.
        batch: the batch.
        directions: ``[k, P]`` rows in ``space``'s layout.
        space: the selected parameters' layout.
        model: the module ``f`` calls (its submodules carry the hooks).
        owners: ``hook_support(model, space.names)``.
        check: compare the sum over the batch with ``E @ grad(sum_x L(x))`` per parameter
            (one more matrix product) and raise ``HooksUnsupported`` where they differ.
    """
    size = _batch.batch_size(batch)
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    with _recording(owners) as records:
        losses = f(leaves, batch)
    if losses.ndim != 1 or losses.shape[0] != size:
        raise HooksUnsupported(f"the loss gave shape {tuple(losses.shape)} for {size} examples")
    outputs = [r.output for r in records]
    wanted = outputs + (list(leaves.values()) if check else [])
    grads = torch.autograd.grad(losses.sum(), wanted, allow_unused=True)
    deltas, full = grads[: len(outputs)], grads[len(outputs) :]
    k = directions.shape[0]
    first = next(iter(params.values()))
    blocks = space.unflatten_batched(directions.to(first.device, first.dtype))
    total = first.new_zeros(size, k)
    per_param = {n: first.new_zeros(size, k) for n in space.names} if check else None
    for record, delta in zip(records, deltas, strict=True):
        if delta is None:
            continue  # the layer's output did not reach the loss
        if record.owner.kind == "embedding":
            name = record.owner.params["weight"]
            part = _embedding_projection(record, delta, blocks[name], size)
            total += part
            if per_param is not None:
                per_param[name] += part
            continue
        if _single_position(record, size):
            for name, part in _linear_projection(record, delta, blocks, size).items():
                total += part
                if per_param is not None:
                    per_param[name] += part
            continue
        for name, g in _per_example(record, delta, params, size).items():
            part = g.reshape(size, -1) @ blocks[name].reshape(k, -1).T
            total += part
            if per_param is not None:
                per_param[name] += part
            del g
    if check and per_param is not None:
        for (name, leaf), g in zip(leaves.items(), full, strict=True):
            expected = blocks[name].reshape(k, -1) @ (
                torch.zeros_like(leaf) if g is None else g
            ).reshape(-1)
            got = per_param[name].sum(0)
            scale = float(expected.abs().max()) + float(got.abs().max())
            tol = 1e-5 if first.dtype == torch.float64 else 1e-3
            if float((got - expected).abs().max()) > tol * max(scale, 1e-30):
                raise HooksUnsupported(
                    f"parameter {name}: the per-example gradients from its layer's hooks do not "
                    "add up to its gradient (it is used outside its module's forward, or its "
                    "layer sees inputs not indexed by example)"
                )
    return total, losses.detach()
