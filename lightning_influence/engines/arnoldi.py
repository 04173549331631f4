"""``ArnoldiInfluence``: influence functions through the top eigenpairs of the Hessian."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_influence.config import (
    ArnoldiConfig,
    ConfigurationError,
    parse_dtype,
    with_overrides,
)
from lightning_influence.core import batch as _batch
from lightning_influence.core.arnoldi import NonFiniteError
from lightning_influence.core.context import analysis_context
from lightning_influence.core.curvature import CurvatureInputs, ReduceFn, make_curvature
from lightning_influence.core.functional_loss import LossFn
from lightning_influence.core.hvp import memory_available, memory_in_use, resolve_hvp_mode
from lightning_influence.core.parameters import ParamSelector
from lightning_influence.core.solvers import (
    SolveRequest,
    basis_bytes,
    residual_controlled,
    solve,
)
from lightning_influence.core.xla import graph_cut
from lightning_influence.engines.base import ProjectedInfluence, TransferFn, sync_device

__all__ = ["ArnoldiInfluence"]

_FORMAT_VERSION = 1

# Examples per batch of a cached HVP sample (the sample's batches are joined up to this size).
_HVP_BATCH = 256


class ArnoldiInfluence(ProjectedInfluence):
    """Influence functions with the Arnoldi method of Schioppa et al. (AAAI 2022).

    ``fit`` runs ``n_iters`` Arnoldi iterations on the Hessian H of the mean training loss over
    an HVP sample and keeps the ``top_k`` eigenpairs ``(lambda_i, e_i)`` by ``|lambda_i|``. Scores
    then cost O(top_k) per example:

    * ``influence``: ``I(x, z) = sum_i w_i <e_i, g_z><e_i, g_x>``, approximately
      ``<g_z, H^-1 g_x>``; positive when removing training example x would raise the loss on z;
    * ``self_influence``: ``I(x, x) = sum_i w_i <e_i, g_x>^2`` (high for mislabeled examples);

    with ``w_i ~ 1 / lambda_i`` under ``eigenvalue_policy`` (see ``scores.inverse_eigenvalues``).

    Args:
        model: the model; its current parameters are where H is taken.
        loss_fn: ``loss_fn(model, batch) -> Tensor[B]``, one loss per example (``reduction="none"``).
            It is called with the model's parameters swapped functionally (``torch.func``).
        params: which parameters to analyse (names, module prefixes, globs or a predicate; default:
            all that require grad).
        config: an ``ArnoldiConfig``; or pass its fields as keyword arguments.
        transfer_batch: moves a batch to the device (default: every tensor to the model's device).
        **kwargs: fields of ``ArnoldiConfig`` (``n_iters``, ``top_k``, ``seed``, ``hvp_mode``,
            ``projection``, ``eigenvalue_policy``, ``basis_device``, ``basis_dtype``, ...).
            ``hvp_cache=True`` keeps each HVP-sample batch's pullback of ``grad`` for the whole
            fit, so that every product is one reverse pass instead of a forward and two backward
            passes (``core.hvp.DatasetHessian(cache=True)``; about 2.2x fewer CPU seconds per fit on the
            digits CNN, the same eigenpairs up to rounding), at the memory of the double-backward
            graph of the whole HVP sample during the fit. Off by default.
            ``restart_tol=1e-2`` replaces the fixed ``n_iters`` iterations by thick-restart
            Lanczos (``core.lanczos``) with a basis of at most ``n_iters`` vectors, restarted
            until the ``top_k`` pairs reach that relative residual: on the digits CNN, all of the
            top 100 within 1% of ARPACK's with ``n_iters=150`` in 225 products, where plain
            Arnoldi with ``n_iters=200`` finds 92 (``examples/benchmarks/results/peers.md``).

    Example:
        >>> import torch.nn.functional as F
        >>> model = torch.nn.Linear(4, 3)
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> loss = lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none")
        >>> engine = ArnoldiInfluence(model, loss, n_iters=15, top_k=5, progress=False).fit(data)
        >>> engine.eigenvalues.shape, engine.self_influence(data).shape
        (torch.Size([5]), torch.Size([8]))
    """

    config: ArnoldiConfig

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        params: ParamSelector = None,
        config: ArnoldiConfig | None = None,
        transfer_batch: TransferFn | None = None,
        **kwargs: Any,
    ) -> None:
        config = with_overrides(ArnoldiConfig, config, kwargs)
        super().__init__(model, loss_fn, config, params=params, transfer_batch=transfer_batch)
        self.residuals_: Tensor | None = None
        self.fit_stats: dict[str, Any] = {}

    @property
    def eigenvalues(self) -> Tensor:
        """``[k]`` eigenvalues, sorted by ``|lambda|`` descending (float64, CPU)."""
        return self._require_fitted()[1]

    @property
    def eigenvectors(self) -> Tensor:
        """``[k, P]`` orthonormal eigenvectors as rows, matching ``eigenvalues``.

        ``self.space.unflatten(engine.eigenvectors[i])`` gives eigenvector i by parameter name.
        """
        return self._require_fitted()[0]

    @property
    def ritz_residuals(self) -> Tensor:
        """``[k]`` ``||H e_i - lambda_i e_i||`` estimates (float64): small means converged.

        The tail of the kept spectrum converges last; ``relative_residuals`` divides by ``|lambda|``.
        """
        if self.residuals_ is None:
            self._require_fitted()
            raise RuntimeError("residuals are not available for an engine loaded without them")
        return self.residuals_

    @property
    def relative_residuals(self) -> Tensor:
        """``ritz_residuals / |eigenvalues|`` (``inf`` for an exactly zero eigenvalue)."""
        return self.ritz_residuals / self.eigenvalues.abs()

    def _directions_device(self) -> torch.device:
        if self.config.basis_device is not None:
            return torch.device(self.config.basis_device)
        return self.device

    def _settle_cache(self, operator: Any, device: torch.device) -> str:
        """Keep the product cache under ``hvp_cache='auto'`` only when its estimated memory fits in
        half of what is free; say what was decided (``fit_stats["hvp_cache"]``)."""
        self._cache_bytes, self._cache_measured = 0, False
        if not getattr(operator, "cache", False):
            return "off"
        estimator = getattr(operator, "cache_estimate", None)
        if estimator is None:
            return "on"
        # measured under "on" too (batch 0's graph is built now instead of at the first
        # product): the memory per example also sizes the scoring batches
        estimate = estimator(device)
        self._cache_bytes = estimate
        self._cache_measured = memory_in_use(device) > 0  # 0: the memory cannot be read
        mib = estimate / 2**20
        if self.config.hvp_cache == "on":
            return f"on (hvp_cache='on'): estimated {mib:.0f} MiB"
        free = memory_available(device)
        if free is not None and estimate >= free / 2:
            operator.cache = False
            operator.clear_cache()
            self._cache_bytes, self._cache_measured = 0, False
            self._warn(
                f"hvp_cache='auto': the HVP sample's cached graphs would take about {mib:.0f} MiB, "
                f"more than half of the {free / 2**20:.0f} MiB free, so every product recomputes "
                "its graph (about 2x the time); lower hvp_samples, or pass hvp_cache='on' to "
                "cache regardless"
            )
            return f"off: estimated {mib:.0f} MiB, {free / 2**20:.0f} MiB free"
        return f"on: estimated {mib:.0f} MiB"

    def _settle_basis(
        self, solver: str, scratch: str, reduce_fn: ReduceFn | None
    ) -> tuple[str, SolveRequest, str]:
        """Where the Krylov basis goes: in memory (the basis device's) when its estimate fits in
        half of what is free there beside the HVP cache, else in host RAM, else in a float16
        file under ``scratch`` with the ``arnoldi`` solver (a restarted basis is rewritten in
        place, which a file does not suit); an explicit ``basis_file`` is kept. Under data
        parallelism (``reduce_fn``) every process takes the most cautious process' choice, so
        that all run the same solver. Returns the solver, the basis fields of the request and
        what was decided (``fit_stats["basis"]``)."""
        cfg = self.config
        where = self._directions_device()
        dtype = parse_dtype(cfg.basis_dtype, "basis_dtype") or self.compute_dtype
        fields = SolveRequest(
            top_k=cfg.top_k,
            n_iters=cfg.n_iters,
            basis_device=where,
            basis_dtype=dtype,
            basis_file=cfg.basis_file,
        )
        if cfg.basis_file is not None:
            return solver, fields, f"file: {cfg.basis_file} (basis_file)"
        need = basis_bytes(solver, cfg.n_iters, cfg.top_k, self.space.dim, dtype)
        if need is None or where.type == "xla":
            return solver, fields, f"{where.type} memory"
        mib = 2**20
        cache = getattr(self, "_cache_bytes", 0) if where == self.device else 0
        free = memory_available(where)
        host = memory_available(torch.device("cpu"))
        file_dtype = torch.float16
        file_need = basis_bytes("arnoldi", cfg.n_iters, cfg.top_k, self.space.dim, file_dtype)
        assert file_need is not None
        disk = shutil.disk_usage(scratch).free
        # 0: on the basis device, 1: in host memory, 2: in a file, 3: nowhere
        choice = 0 if free is None or need < (free - cache) / 2 else 2
        if choice and where.type != "cpu" and host is not None and need < host / 2:
            choice = 1
        if choice == 2 and file_need > disk:
            choice = 3
        if reduce_fn is not None:
            votes = torch.zeros(4, device=self.device, dtype=self.compute_dtype)
            votes[choice] = 1
            choice = int(torch.nonzero(reduce_fn(votes).cpu()).max())
        if choice == 0:
            shown = "unknown" if free is None else f"{free // mib:,}"
            return solver, fields, f"{where.type} memory: {need // mib:,} MiB ({shown} MiB free)"
        free = free or 0
        if choice == 1:
            self._warn(
                f"the Krylov basis ({need // mib:,} MiB) does not fit in half of the "
                f"{free // mib:,} MiB free on {where}: it is kept in host memory "
                "(pass basis_device='cpu' to say so, or lower n_iters)"
            )
            note = f"cpu memory: {need // mib:,} MiB ({(host or 0) // mib:,} MiB free on the host)"
            return solver, dataclasses.replace(fields, basis_device=torch.device("cpu")), note
        if choice == 3:
            raise ConfigurationError(
                f"the Krylov basis of n_iters={cfg.n_iters} vectors of {self.space.dim:,} "
                f"parameters needs {need // mib:,} MiB of memory ({free // mib:,} MiB free) or a "
                f"{file_need // mib:,} MiB file ({disk // mib:,} MiB free in {scratch}): lower "
                "n_iters, select fewer parameters (params=...), or pass basis_file= on a larger "
                "disk (TMPDIR sets where the temporary file goes)"
            )
        path = str(Path(scratch) / "krylov-basis.bin")
        self._warn(
            f"the Krylov basis ({need // mib:,} MiB) does not fit in half of the "
            f"{free // mib:,} MiB of free memory: it goes to a float16 file in {scratch} "
            f"({file_need // mib:,} MiB, removed after the fit) with solver='arnoldi' "
            f"(n_iters={cfg.n_iters} products); pass basis_file= to choose the place, or lower "
            "n_iters to keep it in memory"
        )
        fields = dataclasses.replace(
            fields, basis_device=torch.device("cpu"), basis_dtype=file_dtype, basis_file=path
        )
        note = f"file: {file_need // mib:,} MiB float16 ({free // mib:,} MiB of memory free)"
        return "arnoldi", fields, note

    def fit(
        self,
        loader: Iterable[Any],
        *,
        reduce_fn: ReduceFn | None = None,
        warm: Tensor | None = None,
    ) -> ArnoldiInfluence:
        """Run Arnoldi on the Hessian of the mean loss over ``loader`` and keep the top eigenpairs.

        Args:
            loader: the HVP sample, iterated once up front (losses checked, examples counted) and
                then, unless ``cache_batches`` is off, held on the device for every iteration.
            reduce_fn: for data-parallel runs, a sum across processes (each process passes its own
                share of the sample); it receives one flat vector per HVP.
            warm: eigenvectors ``[k, P]`` (or their sum ``[P]``) of an earlier fit of the same
                parameters, e.g. the previous analysis of a run: the solver starts from them
                (``core.solvers.warm_start``) and the wanted pairs converge in fewer products
                (a residual-controlled solver stops sooner). Of another size: refused with a
                warning, cold fit (``fit_stats["warm_start"]`` says which).

        Returns:
            self.
        """
        cfg = self.config
        wall = time.perf_counter()
        solver = cfg.resolved_solver
        if cfg.solver == "auto" and self.device.type == "xla":
            solver = "arnoldi"  # thick restart reshapes its basis on the host: XLA recompiles
        with analysis_context(self.model):
            f, params = self.functional_loss(), self.parameters()
            device = self.device
            mode = resolve_hvp_mode(cfg.hvp_mode, device)
            sample = self.load_sample(
                f, params, loader, "HVP sample", keep=cfg.cache_batches, reduce_fn=reduce_fn
            )
            self.check_parameters_used(f, params, sample.first)
            batches = sample.batches if cfg.cache_batches else _Reiterable(self, loader)
            model_dtype = next(iter(self.model.parameters())).dtype
            operator = make_curvature(
                cfg.curvature,
                CurvatureInputs(
                    f,
                    params,
                    self.space,
                    batches,
                    sample.count,
                    mode,
                    reduce_fn,
                    model=self.model,
                    loss_fn=self.loss_fn,
                    compute_dtype=None if self.compute_dtype == model_dtype else self.compute_dtype,
                    cache=cfg.cache_wanted and device.type != "xla",
                ),
            )
            cache_note = self._settle_cache(operator, device)
            loaded = None  # the sample's batches as loaded, when they were joined
            if getattr(operator, "cache", False) and isinstance(batches, list):
                # The cache holds every example's graph anyway: products over batches of up to
                # 256 examples do the same work in fewer, larger kernels (a model trained in
                # batches of 32 spent most of each product in per-batch overhead).
                merged = _batch.merge_batches(batches, _HVP_BATCH)
                if len(merged) < len(batches):
                    operator.clear_cache()
                    operator.batches, loaded = merged, batches
                    batches = merged
            # removed after the solver returns (a basis file, when memory does not suffice)
            scratch = tempfile.TemporaryDirectory(prefix="lightning-influence-")
            solver, basis, basis_note = self._settle_basis(solver, scratch.name, reduce_fn)

            generator = torch.Generator().manual_seed(cfg.seed)
            start = torch.randn(self.space.dim, generator=generator, dtype=torch.float64)
            start = start.to(device, self.compute_dtype)

            restarted = residual_controlled(solver)
            budget = 10 * cfg.n_iters
            bar = tqdm(
                total=budget if restarted else cfg.n_iters,
                desc=solver.capitalize(),
                unit="hvp",
                disable=not cfg.progress,
                leave=False,
            )
            warm_note = "cold"
            if warm is not None and not residual_controlled(solver):
                # A fixed number of products from a start inside a nearly invariant subspace
                # spends the later ones on rounding noise: only a solver that checks its
                # residuals (and stops) gains from a warm start.
                warm_note, warm = f"cold: {solver} runs a fixed number of products", None
            elif warm is not None and warm.shape[-1] != self.space.dim:
                warm_note = (
                    f"refused: warm vectors of size {warm.shape[-1]} for "
                    f"{self.space.dim} parameters (another parameter selection or model)"
                )
                self._warn(f"warm start {warm_note}; fitting from a cold start")
                warm = None
            elif warm is not None:
                warm_note = "warm"
            request = dataclasses.replace(
                basis,
                tol=cfg.restart_tol,
                max_products=budget,
                on_product=bar.update,
                graph_cut=graph_cut(device),
                warm=warm if residual_controlled(solver) else None,
            )
            try:
                out = solve(solver, operator, start, request)
            except NonFiniteError as err:
                where = "unknown"
                if loaded is not None:  # name the batch as the user's loader made it
                    operator.clear_cache()
                    operator.batches = loaded
                if err.vector is not None:
                    where = operator.locate_non_finite(err.vector.to(device, self.compute_dtype))
                raise FloatingPointError(
                    f"Hessian-vector product {err.iteration} returned NaN or Inf; the first "
                    f"non-finite contribution comes from {where}. Check that batch for extreme "
                    "inputs, or the model for overflowing activations"
                ) from err
            finally:
                bar.close()
                operator.clear_cache()  # the cached graphs are the fit's largest allocation
                scratch.cleanup()
            pairs, iterations, breakdown = out.pairs, out.products, out.breakdown
            self._settle_projection(f, params, sample.first, pairs.eigenvectors)
            sync_device(device)

        found = len(pairs.eigenvalues)
        converged = out.stats.get("converged")
        if restarted and not breakdown and converged is not None and converged < found:
            self._warn(
                f"thick-restart Lanczos spent its {budget} products with "
                f"{converged} of {found} eigenpairs at "
                f"restart_tol={cfg.restart_tol}: raise n_iters (the basis size) or restart_tol; "
                "relative_residuals says which pairs fell short"
            )
        if found < cfg.top_k:
            self._warn(
                f"the Krylov space became invariant after {iterations} products (the Hessian "
                f"has rank at most {found} on this sample), so only {found} of "
                f"top_k={cfg.top_k} eigenpairs exist"
            )
        self.directions = pairs.eigenvectors
        self.eigenvalues_ = pairs.eigenvalues
        self.residuals_ = pairs.residuals
        fit_seconds = time.perf_counter() - wall
        self.fit_stats = {
            "solver": solver,
            "warm_start": warm_note,
            "iterations": iterations,
            "breakdown": breakdown,
            **out.stats,
            "hvp_mode": mode,
            "hvp_cache": cache_note,
            "hvp_batches": len(batches) if isinstance(batches, list) else None,
            # the cached double-backward graph per example, when it was measured (hvp_cache)
            "graph_bytes_per_example": (
                self._cache_bytes // max(sample.count, 1) if self._cache_measured else None
            ),
            "basis": basis_note,
            "curvature": cfg.curvature,
            "num_examples": sample.count,
            "num_params": self.space.dim,
            "hvp_seconds": operator.seconds,
            "fit_seconds": fit_seconds,
        }
        return self

    def state_dict(self) -> dict[str, Any]:
        """Eigenpairs, residuals, the parameter layout and the config, to score later without refitting."""
        state = super().state_dict()
        state.update(
            format_version=_FORMAT_VERSION,
            residuals=None if self.residuals_ is None else self.residuals_.cpu(),
            fit_stats=dict(self.fit_stats),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved (the config too, except ``progress``)."""
        super().load_state_dict(state)
        self.residuals_ = state.get("residuals")
        self.fit_stats = dict(state.get("fit_stats", {}))


class _Reiterable:
    """Re-reads the loader (moved and checked like the first pass) for every HVP."""

    def __init__(self, engine: ArnoldiInfluence, loader: Iterable[Any]) -> None:
        self.engine, self.loader = engine, loader

    def __iter__(self):
        return self.engine.batches(self.loader, "HVP sample")
