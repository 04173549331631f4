"""Shared pieces of the benchmark scripts: noisy labels, timing, metrics, result files.

Not part of the package: the scripts under ``examples/benchmarks/`` import this module from their
own folder.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from lightning_influence.losses import cross_entropy_loss

__all__ = [
    "DEFAULT_OUT",
    "Timer",
    "arpack_eigenvalues",
    "clock",
    "cross_entropy_loss",
    "detection_metrics",
    "eigenvalues_found",
    "flip_labels",
    "machine_info",
    "markdown_table",
    "per_example_gradient_pass",
    "proc_memory",
    "reset_peak_rss",
    "set_threads",
    "tune_allocator",
    "write_results",
]

# Runs write outside the tracked tree unless --out names a folder: ./benchmark_results (ignored by
# git). The published tables in examples/benchmarks/results/ are refreshed with
# --out examples/benchmarks/results.
DEFAULT_OUT = os.path.join(os.getcwd(), "benchmark_results")


def flip_labels(
    labels: Tensor, fraction: float, num_classes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Flip ``fraction`` of the labels (exactly ``round(fraction * N)``) to another class, seeded.

    Returns:
        ``(noisy_labels, flipped_mask)``.
    """
    gen = torch.Generator().manual_seed(seed)
    n = labels.numel()
    chosen = torch.randperm(n, generator=gen)[: round(fraction * n)]
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[chosen] = True
    shift = torch.randint(1, num_classes, (n,), generator=gen)
    noisy = torch.where(flipped, (labels + shift) % num_classes, labels)
    return noisy, flipped


def detection_metrics(scores: Tensor, flipped: Tensor) -> dict[str, float]:
    """AUC and AP (torchmetrics) of ``scores`` for finding ``flipped``, and recall in the top 5/10/20%.

    ``found@q`` is the fraction of flipped examples among the ``q`` highest-scored examples'
    share of all flipped ones (the fraction found when inspecting the top q of the data).

    AUC and AP depend on the scores' order only, and torchmetrics reads scores outside [0, 1] as
    logits and applies a sigmoid: in float64 every score above ~36.7 then becomes exactly 1.0,
    a tie. Self-influence on the mean loss reaches the hundreds, so the raw scores tied the
    strongest examples and understated AP (digits, Arnoldi p=100: 74.4 instead of 97.4; MNIST
    Table 1 likewise). The scores are therefore min-max scaled into [0, 1] first, a monotone map
    that keeps their order and ties exactly.
    """
    s = scores.detach().double().cpu()
    t = flipped.long().cpu()
    span = s.max() - s.min()
    unit = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
    out = {
        "auc": float(binary_auroc(unit, t)),
        "ap": float(binary_average_precision(unit, t)),
    }
    order = torch.argsort(s, descending=True)
    total = max(int(t.sum()), 1)
    for q in (0.05, 0.10, 0.20):
        top = order[: max(1, round(q * s.numel()))]
        out[f"found@{round(q * 100)}%"] = float(t[top].sum()) / total
    return out


def arpack_eigenvalues(operator: Callable[[Tensor], Tensor], dim: int, k: int) -> Tensor:
    """The top ``k`` eigenvalues by |lambda| of a symmetric float32 ``operator`` on ``R^dim``.

    scipy's ARPACK (``eigsh``, implicitly restarted Lanczos, ``which="LM"``, ``tol=1e-6``), the
    benchmarks' reference for "converged"; sorted by |lambda| descending, float64. Count the
    products on the operator (``DatasetHessian.calls``).
    """
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    def mv(v: np.ndarray) -> np.ndarray:
        out = operator(torch.from_numpy(np.ascontiguousarray(v.reshape(-1))).float())
        return out.double().numpy()

    values = eigsh(
        LinearOperator((dim, dim), matvec=mv, dtype=np.float64), k=k, which="LM", tol=1e-6
    )
    ref = torch.from_numpy(values[0])
    return ref[ref.abs().argsort(descending=True)]


def eigenvalues_found(reference: torch.Tensor, eigenvalues, tol: float = 0.01) -> tuple[int, float]:
    """How many reference eigenvalues a method found to ``tol`` (relative), and the median error.

    Paired by rank within each sign: the reference's i-th largest positive eigenvalue with the
    method's i-th largest positive one, and likewise for the negative ones (pairing by rank of
    |lambda| would pair +x with -x where the two signs interleave). A method that misses one
    eigenvalue shifts every later pair, and a reference eigenvalue without a partner (Captum keeps
    the algebraically largest eigenvalues only, so it has no negative ones) counts as not found
    with error 1.
    """
    if eigenvalues is None or len(eigenvalues) == 0:
        return 0, float("nan")
    found = torch.as_tensor(eigenvalues).double().cpu()
    errors = []
    for sign in (1.0, -1.0):
        ref = (sign * reference[sign * reference > 0]).sort(descending=True).values
        got = (sign * found[sign * found > 0]).sort(descending=True).values[: len(ref)]
        err = torch.ones(len(ref), dtype=torch.float64)
        err[: len(got)] = (ref[: len(got)] - got).abs() / ref[: len(got)]
        errors.append(err)
    err = torch.cat(errors)
    return int((err <= tol).sum()), float(err.median())


def clock() -> float:
    """The benchmarks' clock: CPU seconds of this process (see ``set_threads``)."""
    return time.process_time()


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads.

    The benchmarks time with the process's CPU clock and one thread by default: on a machine
    shared with other jobs, wall time swings several-fold within a run, while the CPU time of a
    single-threaded process moves much less, so ratios measured in one run stay meaningful.
    """
    torch.set_num_threads(threads)


_ALLOCATOR = {"tuned": False}


def tune_allocator(enable: bool = True) -> bool:
    """Keep large CPU buffers in glibc's heap instead of fresh ``mmap`` pages (Linux/glibc only).

    Per-example gradients come in chunks of up to 256 MiB. glibc serves every allocation above
    its mmap threshold (at most 32 MiB by default) with fresh pages and returns them on free, so
    each chunk page-faults its whole buffer again: for the 800k-parameter MNIST CNN that was
    three quarters of the CPU time of a per-example-gradient pass (2.8 s instead of 0.7 s for
    512 examples, nearly all of it system time). Raising the thresholds (``mallopt``, the same as
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``) lets the buffers be reused. It applies
    to the whole process, hence to every method compared in a run alike.
    """
    if not enable or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = (
        libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    )
    _ALLOCATOR["tuned"] = ok
    return ok


class Timer:
    """Stopwatch for ``with timer("name"):`` blocks: ``seconds`` (CPU, ``clock``) and ``wall``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start, wall = clock(), time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = clock() - start
            self.wall[name] = time.perf_counter() - wall


def per_example_gradient_pass(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    loader: Any,
    chunk: int | None = None,
) -> float:
    """CPU seconds for one pass of per-example gradients ``vmap(grad)`` over ``loader`` (the unit of cost).

    Uses the engine's own ``per_example_gradients`` on the engine's functional loss, in chunks of
    about 256 MiB of gradients like the engine, and reduces each chunk to its squared norms so the
    gradients are materialized and then dropped.
    """
    from lightning_influence.core.context import analysis_context
    from lightning_influence.core.functional_loss import make_functional_loss
    from lightning_influence.core.parameters import ParameterSpace, select_parameters
    from lightning_influence.core.projection import per_example_gradients

    space = ParameterSpace.of(select_parameters(model, None))
    if chunk is None:
        chunk = max(1, (256 * 2**20) // (4 * space.dim))
    start = clock()
    with analysis_context(model):
        f = make_functional_loss(model, loss_fn)
        params = {n: p.detach() for n, p in select_parameters(model, None).items()}
        for x, y in loader:
            for s in range(0, len(y), chunk):
                g = per_example_gradients(f, params, (x[s : s + chunk], y[s : s + chunk]), space)
                g.square().sum(1)
    return clock() - start


def proc_memory() -> dict[str, int]:
    """The memory fields of ``/proc/self/status`` (VmRSS, VmHWM, RssAnon, RssFile, ...), bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key.startswith(("Vm", "Rss")):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss() -> None:
    """Reset VmHWM (the peak resident set) to the current RSS (Linux: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "malloc_tuned": _ALLOCATOR["tuned"],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_results(out_dir: str, name: str, markdown: str, payload: dict[str, Any]) -> None:
    """Write ``name.md`` and ``name.json`` under ``out_dir`` and print the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as fh:
        fh.write(markdown.rstrip() + "\n")
    with open(os.path.join(out_dir, f"{name}.json"), "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
        fh.write("\n")
    print(markdown)
    print(f"\nwrote {os.path.join(out_dir, name)}.md and .json")
