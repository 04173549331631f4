"""Thick-restart Lanczos: the top eigenpairs of a symmetric operator to a residual tolerance.

``arnoldi`` runs a fixed number n of products and keeps what converged; the tail of the kept
spectrum may not have (issue 13: at n = 200 the digits CNN's top 100 had 92 eigenvalues within 1%
of ARPACK's). ``thick_restart_lanczos`` (Wu and Simon, 2000; for a symmetric operator it is
Stewart's Krylov-Schur method) keeps a basis of at most ``basis_size`` vectors: when it is full it
computes the Ritz pairs, stops if the wanted ones have converged, and otherwise restarts from the
best ``keep`` Ritz vectors plus the residual direction, whose Krylov relation
``A Y^T = Y^T diag(theta) + q b^T`` it extends with further products. Every product is first
orthogonalized against the vectors the exact recurrence touches (the whole basis for the first
product after a restart, whose projected matrix is an arrowhead; the last two vectors otherwise,
where it is tridiagonal again), then by one classical Gram-Schmidt pass over the whole basis that
subtracts only the components above rounding (a few: the recurrence leaves rounding), and by
a second pass only when the first removed more than ``1 - 1/sqrt(2)`` of what was left (the
Daniel-Gragg-Kaufman-Stewart criterion, as in ``arnoldi``): about one read of the basis per
product instead of the four of unconditional CGS2, which dominate the loop at large P. The product
is orthogonalized in place in one work vector (no temporaries of size P).

``ArnoldiInfluence(restart_tol=...)`` fits with it. The basis stays in memory in the work dtype
of ``start`` (at least float32); ``distill`` reads the final state like an ``arnoldi`` result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_influence.core.arnoldi import ArnoldiResult, Eigenpairs, NonFiniteError, distill

__all__ = ["RestartedEigenpairs", "thick_restart_lanczos"]


class RestartedEigenpairs(NamedTuple):
    """The output of ``thick_restart_lanczos``.

    Attributes:
        pairs: the top ``top_k`` Ritz pairs by ``|eigenvalue|`` (``distill``'s ``Eigenpairs``,
            with residual estimates ``||A e - lambda e||``).
        products: the matrix-vector products done.
        restarts: how many times the basis was compressed and extended again.
        converged: how many of the kept pairs meet ``residual <= tol * |lambda|``.
        breakdown: the Krylov space became invariant (its Ritz pairs are exact; fewer than
            ``top_k`` exist when it is smaller than that).
        reorthogonalized: how many products needed a second Gram-Schmidt pass.
    """

    pairs: Eigenpairs
    products: int
    restarts: int
    converged: int
    breakdown: bool = False
    reorthogonalized: int = 0


# Columns of the basis recombined at a time at a restart: about 8 MiB of it.
_RESTART_BLOCK_BYTES = 8 * 2**20

# A pass that leaves less than this fraction of the vector's norm needs a second one (DGKS).
_TWICE_IS_ENOUGH = 1 / math.sqrt(2)

# Gram-Schmidt coefficients below this many units of rounding (eps) of ||w|| are not subtracted.
_NEGLIGIBLE = 8


def _orthogonalize(basis: Tensor, w: Tensor, recent: int) -> tuple[Tensor, bool]:
    """``w`` orthogonalized in place against the rows of ``basis`` (``w -= basis^T c``):
    ``(c, second pass)``.

    The rows from ``recent`` on (those the exact recurrence touches) are removed first, then one
    classical Gram-Schmidt pass over all rows removes what rounding left, and a second pass runs
    only when that one removed more than ``1 - 1/sqrt(2)`` of the norm.

    The first pass subtracts only the rows whose coefficient exceeds ``_NEGLIGIBLE`` units of
    rounding of ``||w||``: a smaller component is below what the subtraction itself rounds off,
    and after the recurrence's rows most are that small (on the digits CNN a fit subtracted 15%
    of the rows, a median of 2 a product, the largest coefficient 22 eps), so the pass reads the
    basis about once instead of twice (all of it again when more than half the rows need it). Everything is in place (``addmv_``, ``add_``): at 10M parameters a temporary vector is
    a fresh 40 MB allocation whose page faults cost as much as the pass itself."""
    rows = basis[recent:]
    c = torch.zeros(basis.shape[0], dtype=w.dtype, device=w.device)
    c0 = rows @ w
    w.addmv_(rows.T, c0, alpha=-1)
    c[recent:] += c0
    before = float(w.norm())
    c1 = basis @ w
    floor = _NEGLIGIBLE * torch.finfo(w.dtype).eps * before
    wanted = (c1.abs() > floor).nonzero().flatten().tolist()
    if len(wanted) > basis.shape[0] // 2:
        w.addmv_(basis.T, c1, alpha=-1)
        c += c1
    elif wanted:
        values = c1.cpu().tolist()
        for i in wanted:
            w.add_(basis[i], alpha=-values[i])
        c[wanted] += c1[wanted]
    second = bool(w.norm() < _TWICE_IS_ENOUGH * before)
    if second:
        c2 = basis @ w
        w.addmv_(basis.T, c2, alpha=-1)
        c += c2
    return c, second


def _ritz(proj: Tensor, size: int, top_k: int, tol: float) -> tuple[Tensor, Tensor, Tensor, int]:
    """The Ritz values and vectors of the first ``size`` basis vectors (an ``eigh`` of the small
    projected matrix: no product), their order by ``|theta|``, and how many of the top ``top_k``
    have ``residual <= tol * |theta|``."""
    square = proj[:size, :size]
    theta, u = torch.linalg.eigh((square + square.T) / 2)
    order = torch.sort(theta.abs(), descending=True, stable=True).indices
    wanted = order[: min(top_k, size)]
    residuals = (proj[size, size - 1] * u[size - 1, wanted]).abs()
    return theta, u, order, int((residuals <= tol * theta[wanted].abs()).sum())


def thick_restart_lanczos(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    top_k: int,
    *,
    basis_size: int | None = None,
    keep: int | None = None,
    tol: float = 1e-2,
    max_products: int | None = None,
    breakdown_tol: float | None = None,
) -> RestartedEigenpairs:
    """The ``top_k`` eigenpairs of largest ``|lambda|`` of a symmetric ``A``, restarted until
    every one has ``||A e - lambda e|| <= tol * |lambda|`` or ``max_products`` are spent.

    Args:
        matvec: ``v -> A v`` (A symmetric: a Hessian, a GGN), called on ``start``'s device in
            the work dtype (``start``'s, at least float32, as the basis).
        start: the start vector ``[P]`` (normalized here).
        top_k: how many eigenpairs are wanted.
        basis_size: the most basis vectors held (default ``2 * top_k``, at least ``top_k + 2``).
        keep: Ritz vectors kept at a restart (default ``(top_k + basis_size) // 2``: the wanted
            ones and half of the rest, whose directions speed the wanted ones' convergence).
        tol: relative residual at which a pair counts as converged.
        max_products: the most products (default ``10 * basis_size``); when they are spent the
            current Ritz pairs are returned, ``converged`` says how many met ``tol``.
        breakdown_tol: a new vector whose norm falls below this times ``||A q||`` means an
            invariant subspace: its Ritz pairs are exact and the iteration stops (default
            ``1000 * eps`` of the work dtype).

    Returns:
        RestartedEigenpairs.

    Example:
        >>> A = torch.diag(1 / torch.arange(1.0, 401.0, dtype=torch.float64))
        >>> out = thick_restart_lanczos(lambda v: A @ v, torch.ones(400).double(), 5, tol=1e-9)
        >>> out.converged, out.restarts > 0, out.pairs.eigenvalues.round(decimals=6).tolist()
        (5, True, [1.0, 0.5, 0.333333, 0.25, 0.2])
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    if start.ndim != 1:
        raise ValueError(f"start must be a vector, got shape {tuple(start.shape)}")
    dim = start.numel()
    m = min(basis_size if basis_size is not None else 2 * top_k, dim)
    if m < min(top_k + 2, dim):
        raise ValueError(
            f"basis_size={basis_size} must be at least top_k + 2 = {top_k + 2}: the basis holds "
            "the wanted Ritz vectors, the residual direction and at least one new vector"
        )
    keep = keep if keep is not None else (top_k + m) // 2
    if not top_k <= keep < m:
        raise ValueError(f"keep={keep} must be at least top_k={top_k} and below basis_size={m}")
    budget = max_products if max_products is not None else 10 * m
    if budget < 1:
        raise ValueError(f"max_products={max_products} must be at least 1")
    work = torch.promote_types(start.dtype, torch.float32)
    eps_tol = breakdown_tol if breakdown_tol is not None else 1000 * torch.finfo(work).eps
    norm = float(start.norm())
    if not math.isfinite(norm) or norm == 0:
        raise ValueError("the start vector must be finite and non-zero")

    basis = torch.zeros(m + 1, dim, dtype=work, device=start.device)
    proj = torch.zeros(m + 1, m, dtype=torch.float64)  # the projected matrix, on the host
    basis[0] = start.to(work) / norm
    w = torch.empty(dim, dtype=work, device=start.device)  # each product, orthogonalized in place
    first, products, restarts, second_passes = 0, 0, 0, 0
    while True:
        size, breakdown = m, False
        for j in range(first, m):
            w.copy_(matvec(basis[j]))
            products += 1
            w_norm = float(w.norm())
            if not math.isfinite(w_norm):
                raise NonFiniteError(
                    f"matrix-vector product {products - 1} returned NaN or Inf",
                    iteration=products - 1,
                    vector=basis[j],
                )
            # after a restart the first product touches every kept vector (an arrowhead row)
            recent = 0 if j == first else max(0, j - 1)
            coeffs, second = _orthogonalize(basis[: j + 1], w, recent)
            second_passes += second
            beta = float(w.norm())
            proj[: j + 1, j] = coeffs.to("cpu", torch.float64)
            if beta <= eps_tol * max(w_norm, torch.finfo(work).tiny):
                size, breakdown = j + 1, True  # invariant subspace: exact Ritz pairs
                break
            proj[j + 1, j] = beta
            torch.div(w, beta, out=basis[j + 1])
            early = top_k + 1 <= j + 1 < m and _ritz(proj, j + 1, top_k, tol)[3] == top_k
            if products >= budget or early:
                size = j + 1  # spent, or every wanted pair converged before the basis filled
                break
        theta, u, order, converged = _ritz(proj, size, top_k, tol)
        done = breakdown or converged == min(top_k, size) or products >= budget or size < m
        if done:
            result = ArnoldiResult(
                basis=basis[: size + 1],
                hessenberg=proj[: size + 1, :size].clone(),
                iterations=size,
                breakdown=breakdown,
            )
            pairs = distill(result, top_k)
            return RestartedEigenpairs(
                pairs, products, restarts, converged, breakdown, second_passes
            )
        # Restart: Y = U_keep^T Q_m (the kept Ritz vectors), then the residual direction q_m.
        kept = order[:keep]
        coeffs = u[:, kept].T.to(basis.device, work)  # [keep, m]
        # in place, a block of columns at a time: no second [keep, P] beside the basis
        step = max(1, _RESTART_BLOCK_BYTES // (m * basis.element_size()))
        for col in range(0, dim, step):
            block = basis[:m, col : col + step]
            basis[:keep, col : col + step] = coeffs @ block
        basis[keep] = basis[m]
        basis[keep + 1 :] = 0
        arrow = proj[m, m - 1] * u[m - 1, kept]
        proj.zero_()
        proj[:keep, :keep] = torch.diag(theta[kept])
        proj[keep, :keep] = arrow
        first, restarts = keep, restarts + 1
