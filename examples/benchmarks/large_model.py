"""A model of 10M+ parameters on this CPU: InfluenceCallback with n_iters >= 100, the Krylov basis
in a file (numpy memmap, float16) and the scores streamed in shards (issue 12, item 3).

An MLP (784 -> H -> 2H -> 10; H = 2048: 10,041,354 parameters) trains one epoch on synthetic data
(Gaussian inputs, labels from a fixed random linear rule, 10% flipped), then the callback fits
n=100 Arnoldi iterations on a 64-example HVP sample and scores every training example. Printed:
the fit and scoring times, examples per hour, the basis file's size, the process's resident
memory in each phase (``/proc/self/status``: the peak of each phase, and how much of the
resident memory at its end is anonymous and how much is file pages) and the peak beside the bound

    peak RSS  <=  base + 96 MiB + max(fit, scoring), with

    fit      = B + 2 k P4 + 4 C + 6 P4
    scoring  = k P4 + (2 or 3) G + 6 P4

    P4 = 4 P bytes (one float32 vector of the parameters), k = top_k;
    B  = the resident pages of the basis file, at most (n + 1) P x 2 bytes in float16: they count
         in RSS while the fit runs (the operating system may write them back and drop them);
    C  = the float32 conversion chunk of the low-precision basis, ~32 MiB, at least one row;
    G  = the chunk of per-example gradients, min(batch, 256 MiB / P4) rows: 2 G when one chunk
         holds the batch (the chunk, and the per-parameter pieces it is concatenated from), 3 G
         when a batch needs several (the previous chunk is still alive while the next is built);

where base is the resident memory when the analysis starts (after training: the model, the
data, the libraries). What the terms are, measured phase by phase (2026-12-02, P = 1.0M and
10.0M): the Arnoldi iterations add B and ~10 P4 of work vectors; ``distill`` then adds 2 k P4
(the eigenvectors, and the [k, P] product of each chunk of the basis before it is added to them)
plus, at P = 1M, ~50 MiB more (1.6 C; not traced further); the fit leaves k P4 (the
eigenvectors), the basis pages are released before scoring, and scoring adds the gradient chunks.
At P >= 3M the fit is the peak (distill; 4,096 MiB at 10M), at P <= 1M the scoring.

``--basis memory`` runs the callback's solver at the callback's defaults instead (thick-restart
Lanczos: ``top_k``, ``n_iters``, ``restart_tol`` and the HVP sample of ``AnalysisConfig()``, the
basis in RAM in float32, which the engine chooses when its estimate ``core.solvers.basis_bytes``
fits in half of the free memory) and reports the fit against its products (``fit_over_hvps``);
``--top-k``, ``--n-iters`` and ``--hvp-samples`` override them (the file basis' sample is 64).

Run: ``PYTHONPATH=. python examples/benchmarks/large_model.py [--quick] [--hidden H]
[--basis file|memory] [--hvp-samples S] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_OUT,
    machine_info,
    markdown_table,
    proc_memory,
    reset_peak_rss,
    set_threads,
    write_results,
)

import lightning_influence.core.solvers as engine_module
from lightning_influence import ArnoldiInfluence, InfluenceCallback
from lightning_influence.config import AnalysisConfig
from lightning_influence.losses import cross_entropy_loss

__all__ = ["MLP", "PhaseMemory", "bound_mib", "main", "run"]

MiB = 2**20
GRADIENT_CHUNK = 256 * MiB  # the engine's per-example-gradient chunk
CONVERT_CHUNK = 32 * MiB  # a low-precision basis is converted to float32 this much at a time
BATCH_SIZE = 64  # the scoring loader's
SLACK = 96 * MiB  # libraries' workspace and allocator slack, whatever P is (up to ~90 MiB seen)


class MLP(pl.LightningModule):
    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class PhaseMemory:
    """Peak resident memory per phase: ``mark(name)`` closes the phase that began at the previous
    mark (its peak is VmHWM since then) and resets VmHWM (Linux ``clear_refs`` 5)."""

    def __init__(self) -> None:
        self.phases: list[dict[str, Any]] = []
        self._wrapped: list[tuple[Any, str, Any]] = []
        self._name = "start"
        self._start = proc_memory()["VmRSS"]
        reset_peak_rss()

    def mark(self, name: str) -> None:
        now = proc_memory()
        self.phases.append(
            {
                "phase": self._name,
                "rss_at_start_MiB": round(self._start / MiB),
                "peak_MiB": round(now["VmHWM"] / MiB),
                "rss_at_end_MiB": round(now["VmRSS"] / MiB),
                "anon_at_end_MiB": round(now["RssAnon"] / MiB),
                "file_at_end_MiB": round(now["RssFile"] / MiB),
            }
        )
        self._name, self._start = name, now["VmRSS"]
        reset_peak_rss()

    @property
    def peak_mib(self) -> int:
        return max(p["peak_MiB"] for p in self.phases)

    def wrap(self, owner: Any, attr: str, before: str | None, after: str) -> None:
        """Mark ``before`` (unless None) when ``owner.attr`` is called and ``after`` when it
        returns."""
        fn: Callable[..., Any] = getattr(owner, attr)

        def marked(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                self.mark(before)
            try:
                return fn(*args, **kwargs)
            finally:
                self.mark(after)

        self._wrapped.append((owner, attr, fn))
        setattr(owner, attr, marked)

    def unwrap(self) -> None:
        """Put back what ``wrap`` replaced."""
        while self._wrapped:
            owner, attr, fn = self._wrapped.pop()
            setattr(owner, attr, fn)


def bound_mib(
    base_mib: float,
    num_params: int,
    n_iters: int,
    top_k: int,
    basis_bytes: int,
    batch_size: int = BATCH_SIZE,
) -> dict[str, float]:
    """The documented bound (see the module docstring) of the fit, of the scoring and of the
    whole analysis, MiB, for a low-precision (float16) basis of ``basis_bytes``."""
    p4 = num_params * 4
    kp = top_k * p4
    # a low-precision basis is converted to float32 in chunks of ~32 MiB (at least one row)
    convert = max(1, min(n_iters + 1, CONVERT_CHUNK // p4)) * p4
    # per-example gradients come in chunks of at most 256 MiB (at least one example), at most a
    # batch; when a batch needs several chunks, two are alive at once beside the pieces of one
    rows = min(batch_size, max(1, GRADIENT_CHUNK // p4))
    gradients = (2 if rows == batch_size else 3) * rows * p4
    fit = basis_bytes + 2 * kp + 4 * convert + 6 * p4
    scoring = kp + gradients + 6 * p4
    return {
        "fit_MiB": round(base_mib + (SLACK + fit) / MiB),
        "scoring_MiB": round(base_mib + (SLACK + scoring) / MiB),
        "bound_MiB": round(base_mib + (SLACK + max(fit, scoring)) / MiB),
    }


def run(
    hidden: int = 2048,
    n_iters: int = 100,
    top_k: int = 20,
    num_train: int = 2000,
    seed: int = 0,
    basis: str = "file",
    hvp_samples: int = 64,
) -> dict[str, Any]:
    """Train the MLP 784 -> hidden -> 2 hidden -> 10 one epoch and analyse it with the callback
    (scores streamed); the figures and the memory of each phase.

    ``basis="file"``: Arnoldi with a float16 basis in a file (the memory bound of the module
    docstring applies); ``basis="memory"``: the callback's default solver (thick-restart
    Lanczos to the callback's ``restart_tol``, the basis in RAM in float32; the engine's
    ``core.solvers.basis_bytes`` estimate is reported beside the measured peak).

    Call it in a fresh process: it measures the process's resident memory and wraps (for the
    measurement only) the engine's solver, ``distill``, ``fit`` and ``self_influence_shards``.
    """
    if basis not in ("file", "memory"):
        raise ValueError(f"basis={basis!r} is not 'file' or 'memory'")
    memory = PhaseMemory()
    try:
        return _run(memory, hidden, n_iters, top_k, num_train, seed, basis, hvp_samples)
    finally:
        memory.unwrap()


def _run(
    memory: PhaseMemory,
    hidden: int,
    n_iters: int,
    top_k: int,
    num_train: int,
    seed: int,
    basis: str,
    hvp_samples: int,
) -> dict[str, Any]:
    in_file = basis == "file"
    if in_file:
        memory.wrap(engine_module, "arnoldi", "arnoldi iterations", "distill")
        memory.wrap(engine_module, "distill", None, "projection route")
        solver_phases = ("arnoldi iterations", "distill")
    else:
        memory.wrap(
            engine_module, "thick_restart_lanczos", "lanczos iterations", "projection route"
        )
        solver_phases = ("lanczos iterations",)
    memory.wrap(ArnoldiInfluence, "fit", "HVP sample", "save eigenpairs")
    memory.wrap(ArnoldiInfluence, "self_influence_shards", "scoring", "gather and write event")

    widths = (784, hidden, 2 * hidden, 10)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_train, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    flip = torch.rand(num_train, generator=g) < 0.1
    y = torch.where(flip, (y + 1) % 10, y)
    torch.manual_seed(seed)
    model = MLP(widths)
    num_params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        basis_file = os.path.join(tmp, "basis.f16")
        storage: dict[str, Any] = {}
        if in_file:
            storage = {"basis_device": "cpu", "basis_dtype": "float16", "basis_file": basis_file}
        callback = InfluenceCallback(
            cross_entropy_loss,
            every_n_epochs=0,
            n_iters=n_iters,
            top_k=top_k,
            hvp_samples=hvp_samples,
            batch_size=BATCH_SIZE,
            projection="grad",
            **storage,
            shard_batches=4,
            dirpath=os.path.join(tmp, "influence"),
            on_error="raise",
            log_top_n=0,
            progress=False,
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=1,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        memory.mark("training")
        start = time.perf_counter()
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
        wall = time.perf_counter() - start
        memory.mark("end")
        event = callback.latest_event
        stats = event.manifest["fit_stats"]
        basis_bytes = (
            os.path.getsize(basis_file)
            if in_file
            else engine_module.basis_bytes("lanczos", n_iters, top_k, num_params, torch.float32)
        )
        timings = event.manifest["timings"]
        iterations = stats["iterations"]
        residuals = (event.residuals / event.eigenvalues.abs()).max().item()
    phases = {p["phase"]: p for p in memory.phases}
    base = phases["HVP sample"]["rss_at_start_MiB"]  # when the analysis starts
    bounds = bound_mib(base, num_params, n_iters, top_k, basis_bytes) if in_file else {}
    fit_s, hvp_s = timings["fit_seconds"], timings["hvp_seconds"]
    row = {
        "parameters": num_params,
        "basis": f"file float16, {stats['solver']}"
        if in_file
        else f"memory float32, {stats['solver']}",
        "n_iters": n_iters,
        "top_k": top_k,
        "hvp_samples": hvp_samples,
        "products": iterations,
        "restarts": stats.get("restarts", 0),
        "examples": num_train,
        "fit_s": round(fit_s, 2),
        "hvp_s": round(hvp_s, 2),
        "fit_over_hvps": round(fit_s / hvp_s, 2),
        "fit_s_per_iteration": round(fit_s / iterations, 4),
        "hvp_s_per_hvp": round(hvp_s / iterations, 4),
        "outside_hvps_pct": round(100 * (1 - hvp_s / fit_s), 1),
        "scoring_s": round(timings["scoring_seconds"], 2),
        "scoring_ms_per_example": round(1000 * timings["scoring_seconds"] / num_train, 3),
        "examples_per_hour": round(num_train / timings["scoring_seconds"] * 3600),
        "basis_file_MiB": round(basis_bytes / MiB) if in_file else 0,
        "basis_estimate_MiB": round(basis_bytes / MiB) if not in_file else 0,
        "basis_in_RAM_fp32_MiB": round((n_iters + 1) * num_params * 4 / MiB),
        "peak_rss_MiB": memory.peak_mib,
        "rss_before_analysis_MiB": base,
        "peak_fit_MiB": max(
            phases[p]["peak_MiB"] for p in ("HVP sample", *solver_phases, "projection route")
        ),
        "peak_scoring_MiB": phases["scoring"]["peak_MiB"],
        **bounds,
        "max_relative_residual": f"{residuals:.2e}",
        "run_wall_s": round(wall, 1),
    }
    return {"row": row, "phases": memory.phases}


ROW_COLUMNS = [
    "parameters",
    "basis",
    "n_iters",
    "top_k",
    "hvp_samples",
    "products",
    "restarts",
    "examples",
    "fit_s",
    "hvp_s",
    "fit_over_hvps",
    "scoring_s",
    "examples_per_hour",
    "basis_file_MiB",
    "basis_estimate_MiB",
    "peak_rss_MiB",
    "rss_before_analysis_MiB",
    "peak_fit_MiB",
    "fit_MiB",
    "peak_scoring_MiB",
    "scoring_MiB",
    "bound_MiB",
    "max_relative_residual",
    "run_wall_s",
]
PHASE_COLUMNS = [
    "phase",
    "rss_at_start_MiB",
    "peak_MiB",
    "rss_at_end_MiB",
    "anon_at_end_MiB",
    "file_at_end_MiB",
]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 0.3M-parameter model, n=20")
    parser.add_argument("--hidden", type=int, default=None, help="H (default 2048; quick 128)")
    parser.add_argument(
        "--n-iters", type=int, default=None, help="default 100, memory: the callback's (quick 20)"
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="default 20, memory: the callback's (quick 5)"
    )
    parser.add_argument("--num-train", type=int, default=None, help="default 2000 (quick 256)")
    parser.add_argument(
        "--basis",
        choices=("file", "memory"),
        default="file",
        help="file: Arnoldi, float16 basis in a file (default n=100, p=20, 64 HVP examples); "
        "memory: the callback's solver at its defaults, thick-restart Lanczos in RAM",
    )
    parser.add_argument(
        "--hvp-samples", type=int, default=None, help="default 64, memory: the callback's"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    quick, in_file = args.quick, args.basis == "file"
    defaults = AnalysisConfig()
    args.hvp_samples = args.hvp_samples or (64 if in_file else defaults.hvp_samples)
    result = run(
        hidden=args.hidden or (128 if quick else 2048),
        n_iters=args.n_iters or (20 if quick else 100 if in_file else defaults.n_iters),
        top_k=args.top_k or (5 if quick else 20 if in_file else defaults.top_k),
        num_train=args.num_train or (256 if quick else 2000),
        basis=args.basis,
        hvp_samples=args.hvp_samples,
    )
    if args.json:
        print(json.dumps(result))
        return result
    row = result["row"]
    name = "large_model_quick" if quick else "large_model"
    if not in_file:
        name += f"_memory_s{args.hvp_samples}"
    where = (
        "Basis on disk as float16 (numpy memmap), Arnoldi. `fit_MiB`, `scoring_MiB` and "
        "`bound_MiB` are the bounds of the script's docstring (base = `rss_before_analysis_MiB`)."
        if in_file
        else "Basis in RAM as float32 (the callback's default: thick-restart Lanczos to "
        f"restart_tol={defaults.restart_tol:g}); `basis_estimate_MiB` is the engine's estimate "
        "(`core.solvers.basis_bytes`: basis and eigenvectors) that decides RAM or file."
    )
    text = (
        f"# InfluenceCallback on a {row['parameters']:,}-parameter MLP\n\n"
        f"{markdown_table([row], [c for c in ROW_COLUMNS if c in row])}\n\n"
        f"{where} Scores streamed in shards of 4 batches. `fit_over_hvps` = fit time / the "
        "time of its Hessian-vector products.\n\n"
        "## Resident memory in each phase (MiB)\n\n"
        "`peak`: VmHWM during the phase; at its end, `anon` (heap, tensors) and `file` (pages of "
        "the basis file mapped into the process) of the resident set.\n\n"
        f"{markdown_table(result['phases'], PHASE_COLUMNS)}\n"
    )
    write_results(args.out, name, text, {**result, "machine": machine_info()})
    return row


if __name__ == "__main__":
    main()
