"""Experimental block methods (issue 13), kept out of the engine's path: block products of a
curvature operator (``matmat``) and block Arnoldi (``block_arnoldi``, ``distill_block``).

They are exercised by ``tests/experimental`` and ``examples/benchmarks/speed.py``; no engine or
callback uses them. Measured there (digits CNN): block products add 1.0-1.4x on top of the cached
products, block Arnoldi with b=4 keeps 92 of ARPACK's top 100 within 1% at 1.28x the speed of
one-vector Arnoldi over the same cached products.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

from lightning_influence.core.arnoldi import (
    ArnoldiResult,
    Eigenpairs,
    NonFiniteError,
    ritz_values,
    ritz_vectors,
)
from lightning_influence.core.curvature import DatasetOperator
from lightning_influence.core.hvp import DatasetHessian

__all__ = ["block_arnoldi", "distill_block", "matmat"]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def matmat(operator: DatasetOperator, vectors: Tensor) -> Tensor:
    """``[b, P] -> [b, P]``: the rows' products ``C v_i`` in one pass over the operator's sample.

    Each batch's product is ``vmap``-ped over the b tangents, so its primal (forward pass and
    gradient) is computed once for the block; with a cached ``DatasetHessian`` the kept pullbacks
    are reused. Equal to ``torch.stack([operator(v) for v in V])`` up to rounding; ``calls``
    grows by b, and ``reduce_fn`` receives one flat ``[b * P]`` vector per block.
    """
    space = operator.space
    if vectors.ndim != 2 or vectors.shape[1] != space.dim:
        raise ValueError(
            f"matmat takes a [b, P={space.dim}] matrix of row vectors, got shape "
            f"{tuple(vectors.shape)}: stack the vectors as rows, or call the operator on one"
        )
    start = time.perf_counter()
    tangents = space.unflatten_batched(vectors)
    total = torch.zeros_like(vectors)
    cached = isinstance(operator, DatasetHessian) and operator.cache
    for i, batch in enumerate(operator.batches):
        if cached:
            # built outside vmap: a graph made under a vmap level must not outlive it
            pullback = operator.pullback(i, batch)

            def one(t: dict[str, Tensor], pullback: Any = pullback) -> dict[str, Tensor]:
                return pullback(t)[0]

        else:

            def one(t: dict[str, Tensor], i: int = i, batch: Any = batch) -> dict[str, Tensor]:
                return operator.batch_product(i, batch, t)

        total = total + space.flatten_batched(vmap(one)(tangents))
    if operator.reduce_fn is not None:
        total = operator.reduce_fn(total.reshape(-1)).reshape(total.shape)
    operator.seconds += time.perf_counter() - start
    operator.calls += vectors.shape[0]
    return total / operator.num_examples


def distill_block(result: ArnoldiResult, top_k: int) -> Eigenpairs:
    """``distill`` for a ``block_arnoldi`` result: the residuals of the Ritz pairs come from the
    last block row, ``||H[m:, :m] u||``."""
    m = result.iterations
    evals, evecs = ritz_values(result.hessenberg[:m, :m], top_k)
    residuals = (result.hessenberg[m:, :m] @ evecs).norm(dim=0)
    vectors = ritz_vectors(result.basis[:m], evecs, None)
    return Eigenpairs(eigenvalues=evals, eigenvectors=vectors, residuals=residuals)


def block_arnoldi(
    matmat: Callable[[Tensor], Tensor],
    start: Tensor,
    n_blocks: int,
    *,
    breakdown_tol: float | None = None,
) -> ArnoldiResult:
    """Block Arnoldi: an orthonormal basis of ``span{S, A S, ..., A^(s-1) S}`` for a block S.

    Each iteration applies ``A`` to b vectors at once (``matmat``: ``[b, P] -> [b, P]``, one pass
    over the data for the block, e.g. ``matmat``), orthogonalizes the block against
    the whole basis twice (block CGS2) and orthonormalizes it by a QR factorization. The result
    has ``m = s b`` basis rows (plus the next block) and a band Hessenberg matrix
    ``[m + b, m]`` with ``A Q_m^T = Q_{m+b}^T H``; ``distill_block`` reads it (the residuals come
    from the last block row). The basis stays in memory, in the work dtype of
    ``start`` (no offloading, no file: an experimental counterpart of ``arnoldi``, issue 13).
    It stops early when a new block loses rank (``|R_ii| <= breakdown_tol * ||A Q_k||``):
    there is no deflation.

    Args:
        matmat: ``V -> (A V^T)^T`` on rows, on ``start``'s device and dtype.
        start: the start block ``[b, P]`` (orthonormalized here).
        n_blocks: the maximum number of block products s (``s b`` products of A in all).
        breakdown_tol: relative breakdown threshold (default ``1000 * eps`` of the work dtype).

    Example:
        >>> A = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
        >>> r = block_arnoldi(lambda V: V @ A, torch.randn(2, 6, dtype=torch.float64), 3)
        >>> r.iterations, r.basis.shape
        (6, torch.Size([8, 6]))
        >>> distill_block(r, 2).eigenvalues.round(decimals=8).tolist()
        [6.0, 5.0]
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks={n_blocks} must be at least 1")
    if start.ndim != 2 or start.shape[0] < 1 or start.shape[0] > start.shape[1]:
        raise ValueError(
            f"start must be a [b, P] block with 1 <= b <= P, got shape {tuple(start.shape)}"
        )
    b, dim = start.shape
    work = _work_dtype(start.dtype)
    tol = breakdown_tol if breakdown_tol is not None else 1000 * torch.finfo(work).eps
    if not bool(torch.isfinite(start).all()):
        raise ValueError("the start block must be finite")
    basis = torch.zeros((n_blocks + 1) * b, dim, device=start.device, dtype=work)
    hess = torch.zeros((n_blocks + 1) * b, n_blocks * b, dtype=work, device=start.device)
    q, r = torch.linalg.qr(start.to(work).T)  # [P, b]
    if float(r.diagonal().abs().min()) <= tol * float(r.diagonal().abs().max()):
        raise ValueError("the start block must have full rank b")
    basis[:b] = q.T
    blocks, breakdown = n_blocks, False
    for k in range(n_blocks):
        rows = slice(k * b, (k + 1) * b)
        w = matmat(basis[rows].to(start.dtype)).to(work)  # [b, P]
        w_norm = float(w.norm())
        if not math.isfinite(w_norm):
            raise NonFiniteError(
                f"block product {k} returned NaN or Inf", iteration=k * b, vector=basis[rows]
            )
        active = basis[: (k + 1) * b]
        c1 = active @ w.T  # [(k + 1) b, b]
        w = w - c1.T @ active
        c2 = active @ w.T
        w = w - c2.T @ active
        q, r = torch.linalg.qr(w.T)  # w^T = q r, q [P, b]
        hess[: (k + 1) * b, rows] = c1 + c2
        hess[(k + 1) * b : (k + 2) * b, rows] = r
        if float(r.diagonal().abs().min()) <= tol * max(w_norm, torch.finfo(work).tiny):
            blocks, breakdown = k + 1, True
            hess[(k + 1) * b : (k + 2) * b, rows] = 0
            break
        basis[(k + 1) * b : (k + 2) * b] = q.T
    m = blocks * b
    return ArnoldiResult(
        basis=basis[: m + b],
        hessenberg=hess[: m + b, :m].to("cpu", torch.float64),
        iterations=m,
        breakdown=breakdown,
        reorthogonalized=m,
    )
