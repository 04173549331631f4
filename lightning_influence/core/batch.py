"""Helpers for arbitrary batch structures (tuples, dicts, nested pytrees of tensors).

A batch is any pytree whose tensor leaves share a leading batch dimension; other leaves
(strings, ints, tensors of another leading size) ride along unchanged. A mapping that is not a
``dict`` (Hugging Face's ``BatchEncoding`` is a ``UserDict``) is registered as a pytree node the
first time one is seen (``as_pytree``), so it keeps its type (and attribute access) inside the
user's loss function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

__all__: list[str] = []


def as_pytree(batch: Any) -> Any:
    """``batch``, with every non-``dict`` mapping type in it registered as a pytree node (keys
    and values; rebuilt with ``type(m)(dict)``), so that torch's pytree and ``vmap`` see its
    tensors. Returns the batch unchanged.

    Example:
        >>> from collections import UserDict
        >>> batch_size(as_pytree(UserDict({"x": torch.zeros(3, 2)})))
        3
    """
    if isinstance(batch, Mapping):
        kind = type(batch)
        if kind is not dict and kind not in pytree.SUPPORTED_NODES:
            pytree.register_pytree_node(
                kind,
                lambda m: (list(m.values()), list(m.keys())),
                lambda values, keys, kind=kind: kind(dict(zip(keys, values, strict=True))),
            )
        for value in batch.values():
            as_pytree(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            as_pytree(value)
    return batch


def batch_size(batch: Any) -> int:
    """The leading size shared by the batch's tensor leaves (the first tensor's, by convention)."""
    # the common shapes without walking the pytree (called for every training batch)
    first = batch[0] if type(batch) in (tuple, list) and batch else batch
    if isinstance(first, Tensor) and first.ndim > 0:
        return int(first.shape[0])
    for leaf in pytree.tree_leaves(batch):
        if isinstance(leaf, Tensor) and leaf.ndim > 0:
            return int(leaf.shape[0])
    raise ValueError(
        f"batch of type {type(batch).__name__} holds no tensor with a batch dimension: "
        "a batch must contain at least one tensor whose first dimension indexes examples"
    )


def _is_mapped(leaf: Any, size: int) -> bool:
    return isinstance(leaf, Tensor) and leaf.ndim > 0 and leaf.shape[0] == size


def in_dims(batch: Any) -> Any:
    """A ``vmap`` ``in_dims`` pytree: 0 for leaves indexed by example, None for the rest."""
    size = batch_size(batch)
    return pytree.tree_map(lambda x: 0 if _is_mapped(x, size) else None, batch)


def unsqueeze_mapped(example: Any, dims: Any) -> Any:
    """Inside ``vmap``: give the leaves mapped by ``dims`` (see ``in_dims``) a batch dimension of 1."""
    leaves, spec = pytree.tree_flatten(example)
    dim_leaves = pytree.tree_flatten(dims)[0]
    out = [x.unsqueeze(0) if d == 0 else x for x, d in zip(leaves, dim_leaves, strict=True)]
    return pytree.tree_unflatten(out, spec)


def slice_batch(batch: Any, start: int, stop: int) -> Any:
    """Examples ``start:stop`` of a batch (leaves without the batch dimension are kept whole)."""
    size = batch_size(batch)
    return pytree.tree_map(lambda x: x[start:stop] if _is_mapped(x, size) else x, batch)


def _joinable(first: Any, other: Any) -> bool:
    """Whether two batches concatenate along examples: the same structure, mapped tensor leaves
    of the same trailing shape and dtype, and every other leaf equal."""
    leaves, spec = pytree.tree_flatten(first)
    others, other_spec = pytree.tree_flatten(other)
    if spec != other_spec:
        return False
    n, m = batch_size(first), batch_size(other)
    for a, b in zip(leaves, others, strict=True):
        mapped = _is_mapped(a, n)
        if mapped != _is_mapped(b, m):
            return False
        if mapped:
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype or a.device != b.device:
                return False
        elif isinstance(a, Tensor):
            if not (isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)):
                return False
        elif a is not b and a != b:
            return False
    return True


def merge_batches(batches: list[Any], limit: int) -> list[Any]:
    """Consecutive batches joined along examples into batches of at most ``limit`` examples,
    wherever they concatenate (``_joinable``: padded sequences of another length do not); the
    examples and their order are unchanged.

    Example:
        >>> parts = [(torch.zeros(3, 2), torch.ones(3)) for _ in range(3)]
        >>> [batch_size(b) for b in merge_batches(parts, limit=6)]
        [6, 3]
    """
    groups: list[list[Any]] = []
    for batch in batches:
        group = groups[-1] if groups else None
        if (
            group is not None
            and sum(batch_size(b) for b in group) + batch_size(batch) <= limit
            and _joinable(group[0], batch)
        ):
            group.append(batch)
        else:
            groups.append([batch])
    out = []
    for group in groups:
        if len(group) == 1:
            out.append(group[0])
            continue
        size = batch_size(group[0])
        spec = pytree.tree_structure(group[0])
        columns = zip(*(pytree.tree_leaves(b) for b in group), strict=True)
        leaves = [
            torch.cat(column) if _is_mapped(column[0], size) else column[0] for column in columns
        ]
        out.append(pytree.tree_unflatten(leaves, spec))
    return out


def map_tensors(fn: Callable[[Tensor], Tensor], batch: Any) -> Any:
    """Apply ``fn`` to every tensor leaf."""
    return pytree.tree_map(lambda x: fn(x) if isinstance(x, Tensor) else x, batch)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor leaf to ``device`` (a plain default; Lightning code uses the strategy)."""
    return map_tensors(lambda x: x.to(device, non_blocking=True), batch)


def to_autograd_tensors(batch: Any) -> Any:
    """Clone inference-mode tensors so autograd may save them (batches made under inference_mode)."""
    return map_tensors(lambda x: x.clone() if x.is_inference() else x, batch)


def cast_floating(batch: Any, dtype: torch.dtype) -> Any:
    """Cast floating-point tensor leaves to ``dtype``; integer leaves (labels) stay as they are."""
    return map_tensors(lambda x: x.to(dtype) if x.is_floating_point() else x, batch)


_TARGET_KEYS = ("labels", "label", "targets", "target", "y")


def class_targets(batch: Any) -> Tensor | None:
    """The class index of every example of a classification batch, or None when none is found.

    The class-index tensor (integer, one entry per example) is the last element of a tuple or
    list batch (``(inputs, targets)``), or the ``"labels"`` (``"label"``, ``"targets"``,
    ``"target"``, ``"y"``) entry of a dict batch (Hugging Face's spelling first).

    Example:
        >>> class_targets((torch.zeros(3, 2), torch.tensor([2, 0, 1]))).tolist()
        [2, 0, 1]
        >>> class_targets({"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": torch.tensor([1, 0])})
        tensor([1, 0])
        >>> class_targets((torch.zeros(3, 2), torch.zeros(3, 2))) is None
        True
    """
    size = batch_size(batch)
    candidate: Any = None
    if isinstance(batch, Mapping):
        candidate = next((batch[k] for k in _TARGET_KEYS if k in batch), None)
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        candidate = batch[-1]
    if (
        isinstance(candidate, Tensor)
        and not candidate.is_floating_point()
        and not candidate.is_complex()
        and candidate.dtype != torch.bool
        and candidate.shape == (size,)
    ):
        return candidate
    return None
