"""Arnoldi iteration and distillation (Algorithm 1 of Schioppa et al., AAAI 2022).

Pure tensor code: a matrix-vector product in, an orthonormal Krylov basis and the top eigenpairs
out. Shapes are static (the basis is preallocated and Gram-Schmidt runs as full matmuls over it,
whose unused rows are zero), so a compiled backend such as XLA sees one graph per iteration.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ArnoldiResult",
    "Eigenpairs",
    "NonFiniteError",
    "arnoldi",
    "distill",
    "ritz_values",
    "ritz_vectors",
]


class NonFiniteError(FloatingPointError):
    """A matrix-vector product returned NaN or Inf."""

    def __init__(self, message: str, iteration: int, vector: Tensor | None = None) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.vector = vector  # the Krylov vector whose product failed


class ArnoldiResult(NamedTuple):
    """The output of ``arnoldi``.

    Attributes:
        basis: ``[m + 1, P]`` orthonormal rows ``q_0 .. q_m`` (row ``m`` is zero after breakdown).
        hessenberg: ``[m + 1, m]`` float64 on the CPU, with ``A Q_m^T = Q_{m+1}^T H``.
        iterations: m, the number of products done (fewer than asked after a breakdown).
        breakdown: whether the Krylov space became invariant before ``n_iters``.
        reorthogonalized: how many iterations needed a second Gram-Schmidt pass over the basis
            (``arnoldi``: see its docstring; every iteration of a static-shape run does two,
            counted here).
    """

    basis: Tensor
    hessenberg: Tensor
    iterations: int
    breakdown: bool
    reorthogonalized: int = 0


class Eigenpairs(NamedTuple):
    """Ritz pairs kept by ``distill``, sorted by ``|eigenvalue|`` descending.

    Attributes:
        eigenvalues: ``[k]`` float64.
        eigenvectors: ``[k, P]`` orthonormal rows.
        residuals: ``[k]`` float64 estimates of ``||A e - lambda e||`` (exact in exact arithmetic
            for a symmetric A: ``|h_{m+1,m}| |u_{m,i}|``), zero after a breakdown.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Low-precision storage of the basis is allowed; arithmetic is never below float32.
    return torch.promote_types(dtype, torch.float32)


def _rows_dot(basis: Tensor, w: Tensor, buffer: Tensor | None) -> Tensor:
    """``basis @ w`` in the work dtype; a low-precision basis goes through ``buffer`` in chunks."""
    if buffer is None:
        return basis @ w
    out = []
    for b in basis.split(buffer.shape[0]):
        rows = buffer[: b.shape[0]]
        rows.copy_(b)  # converts into the reused buffer: no allocation per chunk
        out.append(rows @ w)
    return torch.cat(out)


def _rows_combine(basis: Tensor, c: Tensor, buffer: Tensor | None) -> Tensor:
    """``basis^T @ c`` in the work dtype."""
    if buffer is None:
        return basis.T @ c
    out = torch.zeros(basis.shape[1], dtype=c.dtype, device=c.device)
    _rows_add(out, basis, c, buffer)
    return out


def _rows_add(
    w: Tensor, basis: Tensor, c: Tensor, buffer: Tensor | None, alpha: float = 1.0
) -> None:
    """``w += alpha basis^T @ c`` in place, a low-precision basis converted through ``buffer`` in
    chunks: no temporary of ``w``'s size (at 10M parameters each one is a fresh 40 MB allocation
    whose page faults cost as much as the arithmetic)."""
    if buffer is None:
        w.addmv_(basis.T, c, alpha=alpha)
        return
    for b, cc in zip(basis.split(buffer.shape[0]), c.split(buffer.shape[0]), strict=True):
        rows = buffer[: b.shape[0]]
        rows.copy_(b)
        w.addmv_(rows.T, cc, alpha=alpha)


_NUMPY_DTYPES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16"}


def _file_backed(
    path: str | os.PathLike, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A zero tensor whose storage is the file ``path`` (a numpy memmap, created or truncated)."""
    if device.type != "cpu":
        raise ValueError(f"a file-backed basis lives on the CPU, not on basis_device={device}")
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(
            f"a file-backed basis stores float64, float32 or float16, not {dtype} (numpy has no "
            "bfloat16): pass basis_dtype='float16' or 'float32'"
        )
    import numpy as np

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    array = np.memmap(path, dtype=_NUMPY_DTYPES[dtype], mode="w+", shape=shape)
    return torch.from_numpy(array)  # zero-filled by the operating system


# A Gram-Schmidt pass that leaves less than this fraction of the vector's norm has cancelled
# enough digits to need a second pass (Daniel, Gragg, Kaufman and Stewart, 1976).
_TWICE_IS_ENOUGH = 1 / math.sqrt(2)

# Rows of a low-precision basis converted to the work dtype at a time: about 32 MiB, so that
# the conversion buffer stays small beside the basis it saves memory on.
_CONVERT_BYTES = 32 * 2**20


def arnoldi(
    matvec: Callable[[Tensor], Tensor],
    start: Tensor,
    n_iters: int,
    *,
    basis_device: torch.device | str | None = None,
    basis_dtype: torch.dtype | None = None,
    breakdown_tol: float | None = None,
    basis_file: str | os.PathLike | None = None,
    on_iteration: Callable[[int], None] | None = None,
    graph_cut: Callable[[list[Tensor]], None] | None = None,
) -> ArnoldiResult:
    """Build an orthonormal basis of the Krylov space ``span{q, Aq, ..., A^(n-1) q}``.

    Each iteration applies ``A`` once, orthogonalizes the product against the basis and
    normalizes it. Orthogonalization: the components along the last two basis vectors are removed
    first (for a symmetric ``A``, as a Hessian is, that is the Lanczos recurrence: all that is
    left in exact arithmetic), then one classical Gram-Schmidt pass over the whole basis removes
    what rounding left along the older vectors, and a second pass runs only when the first
    removed more than ``1 - 1/sqrt(2)`` of the vector's norm (the Daniel-Gragg-Kaufman-Stewart
    criterion, "twice is enough"): orthogonality as with two full passes (CGS2) at half the reads
    of the basis, which dominate the loop at large P. A non-symmetric ``A`` (or a resampled,
    drifting one) simply triggers the second pass. With ``graph_cut`` (static shapes, XLA) every
    iteration does two full passes, so that one graph serves all iterations. The iteration
    stops early when the new vector's norm falls below ``breakdown_tol`` times the norm of
    ``A q_k`` (the space is invariant; its eigenpairs are then exact).

    Args:
        matvec: ``v -> A v`` on ``start``'s device and dtype.
        start: the start vector ``[P]`` (normalized here).
        n_iters: the maximum number of products n.
        basis_device: where the ``[n + 1, P]`` basis lives (default: ``start``'s device). The CPU
            offloads a basis that would not fit beside the model on an accelerator.
        basis_dtype: storage dtype of the basis (default: ``start``'s dtype). Arithmetic is done
            in at least float32.
        breakdown_tol: relative breakdown threshold (default ``1000 * eps`` of the work dtype).
        basis_file: keep the basis in this file (a numpy memmap) instead of in memory, for when
            (n + 1) x P does not fit in RAM; the operating system pages rows in and out. Needs a
            CPU ``basis_device`` and a float32, float64 or float16 ``basis_dtype``.
        on_iteration: called after every iteration with its index (progress bars).
        graph_cut: called once per iteration, before the host reads the new norms, with the
            tensors the loop carries on (basis, Hessenberg matrix, next vector, norms); on XLA it
            materializes exactly those, so that every iteration runs one compiled graph once.

    Returns:
        ArnoldiResult.

    Example:
        >>> A = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
        >>> r = arnoldi(lambda v: A @ v, torch.ones(3, dtype=torch.float64), 5)
        >>> r.iterations, r.breakdown
        (3, True)
    """
    if n_iters < 1:
        raise ValueError(f"n_iters={n_iters} must be at least 1")
    if start.ndim != 1:
        raise ValueError(f"start must be a vector, got shape {tuple(start.shape)}")
    device, dtype = start.device, start.dtype
    bdevice = torch.device(basis_device) if basis_device is not None else device
    bdtype = basis_dtype or dtype
    work = _work_dtype(bdtype)
    tol = breakdown_tol if breakdown_tol is not None else 1000 * torch.finfo(work).eps
    dim = start.numel()

    if basis_file is not None:
        basis = _file_backed(basis_file, (n_iters + 1, dim), bdtype, bdevice)
    else:
        basis = torch.zeros(n_iters + 1, dim, device=bdevice, dtype=bdtype)
    # The Hessenberg matrix lives beside the basis until the end, so that the loop moves one
    # pair of scalars to the host per iteration and nothing else.
    hess = torch.zeros(n_iters + 1, n_iters, device=bdevice, dtype=work)

    start_norm = float(start.norm())
    if not math.isfinite(start_norm) or start_norm == 0:
        raise ValueError("the start vector must be finite and non-zero")
    q = start / start_norm
    basis[0] = q.to(bdevice, bdtype)
    buffer = None
    if bdtype != work:
        rows = max(1, min(n_iters + 1, _CONVERT_BYTES // (dim * torch.finfo(work).bits // 8)))
        buffer = torch.empty(rows, dim, device=bdevice, dtype=work)
    # A compiled backend (XLA: graph_cut given) needs static shapes: Gram-Schmidt then runs over
    # the whole preallocated basis, whose unused rows are zero. Elsewhere it runs over the k + 1
    # filled rows only, half the work on average.
    static = graph_cut is not None
    # Elsewhere each product is copied into one work vector and orthogonalized there in place.
    work_vector = None if static else torch.empty(dim, device=bdevice, dtype=work)
    iterations, breakdown, second_passes = n_iters, False, 0
    for k in range(n_iters):
        product = matvec(q)
        w = product.to(bdevice, work) if work_vector is None else work_vector.copy_(product)
        w_norm = w.norm()
        if static:
            # CGS2 over the whole preallocated basis: the same graph at every iteration.
            c1 = _rows_dot(basis, w, buffer)
            w = w - _rows_combine(basis, c1, buffer)
            c2 = _rows_dot(basis, w, buffer)
            w = w - _rows_combine(basis, c2, buffer)
            beta = w.norm()
            second_passes += 1
            column = (c1 + c2).index_copy(0, torch.tensor([k + 1], device=bdevice), beta.reshape(1))
        else:
            active = basis[: k + 1]
            last = max(0, k - 1)
            recent = active[last:].to(work)  # q_{k-1}, q_k: the Lanczos recurrence
            c0 = recent @ w
            w.addmv_(recent.T, c0, alpha=-1)
            before = w.norm()
            c1 = _rows_dot(active, w, buffer)
            _rows_add(w, active, c1, buffer, alpha=-1)
            c1[last:] += c0
            beta = w.norm()
            if float(beta) < _TWICE_IS_ENOUGH * float(before):
                c2 = _rows_dot(active, w, buffer)
                _rows_add(w, active, c2, buffer, alpha=-1)
                c1 += c2
                beta = w.norm()
                second_passes += 1
            column = torch.zeros(n_iters + 1, device=bdevice, dtype=work)
            column[: k + 1] = c1
            column[k + 1] = beta
        hess.index_copy_(1, torch.tensor([k], device=bdevice), column.reshape(-1, 1))
        next_q = w / beta
        basis.index_copy_(
            0, torch.tensor([k + 1], device=bdevice), next_q.to(bdtype).reshape(1, -1)
        )
        norms = torch.stack([beta, w_norm])  # in the iteration's graph: no graph of its own
        if graph_cut is not None:
            graph_cut([basis, hess, next_q, norms])
        beta_val, w_norm_val = norms.tolist()  # the one host sync
        if on_iteration is not None:
            on_iteration(k)
        if not (math.isfinite(beta_val) and math.isfinite(w_norm_val)):
            raise NonFiniteError(
                f"matrix-vector product {k} returned NaN or Inf", iteration=k, vector=q
            )
        if beta_val <= tol * max(w_norm_val, torch.finfo(work).tiny):
            iterations, breakdown = k + 1, True
            basis[k + 1] = 0
            hess[k + 1, k] = 0
            break
        q = next_q.to(device, dtype)
    return ArnoldiResult(
        basis=basis[: iterations + 1],
        hessenberg=hess[: iterations + 1, :iterations].to("cpu", torch.float64),
        iterations=iterations,
        breakdown=breakdown,
        reorthogonalized=min(second_passes, iterations),
    )


def distill(
    result: ArnoldiResult, top_k: int, *, out_dtype: torch.dtype | None = None
) -> Eigenpairs:
    """Keep the ``top_k`` Ritz pairs of largest ``|eigenvalue|``.

    The last row of the Hessenberg matrix is dropped, the square part symmetrized (it is
    tridiagonal for a symmetric operator in exact arithmetic; symmetrizing removes rounding
    asymmetry) and diagonalized with ``eigh``. Eigenvectors ``e_i = Q_m^T u_i`` are normalized and
    given a deterministic sign: the entry of largest magnitude is positive.

    Args:
        result: from ``arnoldi``.
        top_k: how many pairs to keep; at most ``result.iterations`` are available.
        out_dtype: dtype of the eigenvectors (default: the work dtype of the basis).
    """
    m = result.iterations
    evals, evecs = ritz_values(result.hessenberg[:m, :m], top_k)
    beta = result.hessenberg[m, m - 1] if result.hessenberg.shape[0] > m else torch.tensor(0.0)
    residuals = (beta * evecs[m - 1, :]).abs()
    vectors = ritz_vectors(result.basis[:m], evecs, out_dtype)
    return Eigenpairs(eigenvalues=evals, eigenvectors=vectors, residuals=residuals)


def ritz_values(square: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """The ``top_k`` eigenpairs of largest ``|lambda|`` of the symmetrized projected matrix
    ``(T + T^T) / 2`` (``[m, m]``, float64): eigenvalues ``[k]`` and coefficients ``[m, k]``."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1")
    k = min(top_k, square.shape[0])
    sym = (square + square.T) / 2
    evals, evecs = torch.linalg.eigh(sym)
    # Stable sort on |lambda| (ties keep ascending eigh order) for reproducibility.
    order = torch.sort(evals.abs(), descending=True, stable=True).indices[:k]
    return evals[order], evecs[:, order]


def ritz_vectors(basis: Tensor, coefficients: Tensor, out_dtype: torch.dtype | None) -> Tensor:
    """``[k, P]`` unit Ritz vectors ``Q^T u_i`` of the basis rows ``Q`` (``[m, P]``) and the
    coefficients ``[m, k]``, each with its largest-magnitude entry positive."""
    m, k = basis.shape[0], coefficients.shape[1]
    work = _work_dtype(basis.dtype)
    coeffs = coefficients.T.to(basis.device, work)  # [k, m]
    if basis.dtype == work:
        vectors = coeffs @ basis
    else:
        vectors = torch.zeros(k, basis.shape[1], dtype=work, device=basis.device)
        # rows converted to the work dtype at a time: about 32 MiB, as in the iteration (a fixed
        # 64 rows were 2.5 GB at P = 10M, the largest allocation of a large fit)
        step = max(1, _CONVERT_BYTES // (basis.shape[1] * torch.finfo(work).bits // 8))
        for start in range(0, m, step):
            # in place: `vectors += coeffs @ chunk` would allocate a second [k, P] for the product
            vectors.addmm_(coeffs[:, start : start + step], basis[start : start + step].to(work))
    vectors.div_(vectors.norm(dim=1, keepdim=True))
    # The sign that makes each vector's largest-magnitude entry positive, from the row maxima and
    # minima: `vectors.abs().argmax(1)` would allocate another [k, P] (the fit's peak at 10M).
    # torch.where, not masked assignment: no data-dependent shape (a CPU fallback on XLA).
    largest, smallest = vectors.amax(dim=1, keepdim=True), vectors.amin(dim=1, keepdim=True)
    signs = torch.where(largest >= -smallest, 1.0, -1.0).to(vectors.dtype)
    vectors.mul_(signs)
    if out_dtype is not None:
        vectors = vectors.to(out_dtype)
    return vectors
