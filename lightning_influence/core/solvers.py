"""Eigensolvers: the top eigenpairs of a symmetric curvature operator, and the registry that
names them.

A solver takes the operator ``v -> C v``, a start vector and a ``SolveRequest`` and returns the
top ``top_k`` pairs by ``|lambda|`` with residual estimates and what it spent
(``SolveResult``). Built in:

* ``"arnoldi"``: ``n_iters`` Arnoldi iterations and ``distill`` (the paper's method; static
  shapes on XLA; the basis may live on the CPU, in a low-precision dtype or in a file);
* ``"lanczos"``: thick-restart Lanczos (``core.lanczos``) with a basis of ``n_iters`` vectors,
  restarted until every wanted pair has ``||C e - lambda e|| <= tol |lambda|``.

A new solver is one function and one registration::

    @register_solver("my-solver")
    def my_solver(matvec, start, request: SolveRequest) -> SolveResult: ...

after which ``ArnoldiConfig(solver="my-solver")`` uses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_influence.core.arnoldi import Eigenpairs, arnoldi, distill
from lightning_influence.core.lanczos import thick_restart_lanczos

__all__ = [
    "SolveRequest",
    "SolveResult",
    "basis_bytes",
    "register_solver",
    "solve",
    "solver_names",
    "warm_start",
]


@dataclass(frozen=True)
class SolveRequest:
    """What is wanted of a solver.

    Attributes:
        top_k: how many eigenpairs (largest ``|lambda|``).
        n_iters: ``"arnoldi"``: the number of products; ``"lanczos"``: the basis size.
        tol: the relative residual at which a pair counts as converged (residual-controlled
            solvers); None for solvers of a fixed number of products.
        max_products: the most products a residual-controlled solver may spend.
        basis_device, basis_dtype, basis_file: where and how the Krylov basis is kept.
        on_product: called after every product (progress bars).
        graph_cut: XLA's graph cut (static-shape iterations), or None.
        warm: ``[k, P]`` rows from an earlier fit (e.g. the previous analysis' eigenvectors) a
            solver may start from; None for a cold start.
    """

    top_k: int
    n_iters: int
    tol: float | None = None
    max_products: int | None = None
    basis_device: torch.device | str | None = None
    basis_dtype: torch.dtype | None = None
    basis_file: str | os.PathLike | None = None
    on_product: Callable[[], None] | None = None
    graph_cut: Callable[[list[Tensor]], None] | None = None
    warm: Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)


class SolveResult(NamedTuple):
    """A solver's answer: the pairs, the products spent, whether the Krylov space became
    invariant, and solver-specific statistics (for the manifest's ``fit_stats``)."""

    pairs: Eigenpairs
    products: int
    breakdown: bool
    stats: dict[str, Any]


Solver = Callable[[Callable[[Tensor], Tensor], Tensor, SolveRequest], SolveResult]
_REGISTRY: dict[str, tuple[Solver, bool]] = {}


def register_solver(name: str, *, residual_controlled: bool = False) -> Callable[[Solver], Solver]:
    """Register ``solver(matvec, start, request) -> SolveResult`` under ``name`` (a decorator).

    ``residual_controlled``: the solver stops at ``request.tol`` (it then needs a tolerance).
    """

    def decorate(solver: Solver) -> Solver:
        if name in _REGISTRY and _REGISTRY[name][0] is not solver:
            raise ValueError(f"a solver named {name!r} is already registered")
        _REGISTRY[name] = (solver, residual_controlled)
        return solver

    return decorate


def basis_bytes(solver: str, n_iters: int, top_k: int, dim: int, dtype: torch.dtype) -> int | None:
    """Bytes of the Krylov basis a built-in solver holds for ``dim`` parameters, with the
    ``top_k`` eigenvectors distilled from it (None for a registered solver of unknown needs).

    ``"arnoldi"``: ``n_iters + 1`` rows in the basis dtype, plus the ~32 MiB float32 conversion
    buffer of a low-precision basis; ``"lanczos"``: ``n_iters + 1`` rows in at least float32
    (restarts recombine it in place); both: ``top_k`` float32 (or wider) eigenvectors.

    Example:
        >>> basis_bytes("lanczos", 45, 30, 1_000_000, torch.float32) // 2**20
        289
    """
    work = torch.promote_types(dtype, torch.float32)
    vectors = top_k * dim * work.itemsize
    if solver == "arnoldi":
        convert = min(32 * 2**20, (n_iters + 1) * dim * 4) if work != dtype else 0
        return (n_iters + 1) * dim * dtype.itemsize + convert + vectors
    if solver == "lanczos":
        return (n_iters + 1) * dim * work.itemsize + vectors
    return None


def solver_names() -> tuple[str, ...]:
    """The registered solvers.

    Example:
        >>> solver_names()[:2]
        ('arnoldi', 'lanczos')
    """
    return tuple(_REGISTRY)


def residual_controlled(name: str) -> bool:
    """Whether solver ``name`` stops at a residual tolerance."""
    return _REGISTRY[name][1]


def solve(
    name: str, matvec: Callable[[Tensor], Tensor], start: Tensor, request: SolveRequest
) -> SolveResult:
    """Run solver ``name``.

    Raises:
        ValueError: no solver of that name (the message lists them).
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"solver={name!r} is not one of {', '.join(map(repr, _REGISTRY))} (register a new "
            "one with lightning_influence.core.solvers.register_solver)"
        )
    if request.warm is not None:
        start = warm_start(start, request.warm)
    return _REGISTRY[name][0](matvec, start, request)


def warm_start(start: Tensor, warm: Tensor, noise: float = 0.1) -> Tensor:
    """A start vector for a fit warmed by earlier eigenvectors: the normalized sum of the rows of
    ``warm`` (``[k, P]``, or one ``[P]`` vector) plus ``noise`` times the normalized cold
    ``start``, so that directions new since the earlier fit still enter the Krylov space.

    A Krylov space grown from a vector in (nearly) an invariant subspace of dimension k spans it
    in about k products, so the wanted pairs converge sooner than from a random start: on a
    perturbed 2000 x 2000 spectrum, thick-restart Lanczos needed 16-21 products instead of
    24-30 for the top 10 and 37-43 instead of 45-55 for the top 30 (``tol=1e-2``).

    Example:
        >>> e = torch.eye(4)[:2]
        >>> warm_start(torch.zeros(4), e).tolist() == (e.sum(0) / 2**0.5).tolist()
        True
    """
    direction = warm.reshape(-1, warm.shape[-1]).sum(0).to(start.device, start.dtype)
    if direction.shape != start.shape:
        raise ValueError(
            f"warm vectors of size {direction.numel()} do not match the start of size "
            f"{start.numel()}"
        )
    direction = direction / direction.norm().clamp_min(torch.finfo(direction.dtype).tiny)
    scale = start.norm()
    if float(scale) > 0:
        direction = direction + noise * start / scale
    return direction


@register_solver("arnoldi")
def _arnoldi(
    matvec: Callable[[Tensor], Tensor], start: Tensor, request: SolveRequest
) -> SolveResult:
    on_product = request.on_product
    result = arnoldi(
        matvec,
        start,
        request.n_iters,
        basis_device=request.basis_device,
        basis_dtype=request.basis_dtype,
        basis_file=request.basis_file,
        on_iteration=None if on_product is None else (lambda _: on_product()),
        graph_cut=request.graph_cut,
    )
    pairs = distill(result, request.top_k)
    stats = {"reorthogonalized": result.reorthogonalized}
    return SolveResult(pairs, result.iterations, result.breakdown, stats)


@register_solver("lanczos", residual_controlled=True)
def _lanczos(
    matvec: Callable[[Tensor], Tensor], start: Tensor, request: SolveRequest
) -> SolveResult:
    if request.graph_cut is not None:
        raise ValueError(
            "solver='lanczos' (thick restart) grows and compresses its basis on the host, which "
            "XLA would recompile at every product: use solver='arnoldi' on XLA devices"
        )
    if request.basis_file is not None:
        raise ValueError(
            "solver='lanczos' rewrites its basis in memory at every restart, so basis_file is not "
            "supported with it: pass basis_file=None, or solver='arnoldi'"
        )
    device, dtype = start.device, start.dtype
    where = torch.device(request.basis_device) if request.basis_device is not None else device
    # The restarted basis is rewritten in place: held in at least float32 (core.lanczos).
    kind = torch.promote_types(request.basis_dtype or dtype, torch.float32)
    on_product = request.on_product

    def product(v: Tensor) -> Tensor:
        if on_product is not None:
            on_product()
        return matvec(v.to(device, dtype)).to(where)

    out = thick_restart_lanczos(
        product,
        start.to(where, kind),
        request.top_k,
        basis_size=request.n_iters,
        tol=request.tol if request.tol is not None else 1e-2,
        max_products=request.max_products,
    )
    stats = {
        "reorthogonalized": out.reorthogonalized,
        "restarts": out.restarts,
        "converged": out.converged,
    }
    return SolveResult(out.pairs, out.products, out.breakdown, stats)
