"""Scaling of ArnoldiInfluence: time against N and against the number of parameters, memory of the basis.

Three tables:

1. **Time against N** (digits CNN, 9,258 parameters, inputs resampled from the digits with noise
   so N can grow): the fit runs on a fixed HVP sample, so its time is flat in N; scoring is one
   pass over the N examples, so its time is linear in N (seconds per 1,000 examples shown).
2. **Time against the number of parameters P** (MLPs on 8x8 inputs, widths growing): fit time,
   the share of the fit spent outside the HVPs (orthogonalization, distillation: the engine's own
   ``fit_stats``, both measured in the same fit), and scoring time per example.
3. **Peak memory of the Krylov basis** ([n+1, P]) with and without CPU offload
   (``basis_device='cpu'``) and with bfloat16 storage (``basis_dtype='bfloat16'``): the basis
   tensor's bytes as measured on the result of ``arnoldi``, and the peak resident memory that a
   fresh process adds during the fit. On a CUDA machine the accelerator's peak allocated memory
   is measured too (``torch.cuda.max_memory_allocated``); on a CPU-only machine offload has
   nothing to move, which the table says.

Times are CPU seconds of a single-threaded process (see README).

Run: ``PYTHONPATH=. python examples/benchmarks/scaling.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_OUT,
    Timer,
    cross_entropy_loss,
    machine_info,
    markdown_table,
    set_threads,
    tune_allocator,
    write_results,
)
from digits import build_cnn

from lightning_influence import ArnoldiInfluence
from lightning_influence.core.arnoldi import arnoldi
from lightning_influence.core.context import analysis_context
from lightning_influence.core.hvp import DatasetHessian


def digits_like(n: int, seed: int, flat: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` inputs resampled from the digits with Gaussian noise (timing only), and their labels."""
    digits = load_digits()
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target)
    idx = torch.randint(0, len(y), (n,), generator=gen)
    x = x[idx] + 0.05 * torch.randn(n, 1, 8, 8, generator=gen)
    return (x.flatten(1) if flat else x), y[idx]


def mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def time_vs_n(sizes, n_iters: int, top_k: int, sample: int, timer: Timer) -> list[dict]:
    model = build_cnn().eval()
    xs, ys = digits_like(sample, seed=1)
    hvp_loader = DataLoader(TensorDataset(xs, ys), batch_size=256)
    rows = []
    ArnoldiInfluence(  # warm-up, not timed
        model, cross_entropy_loss, n_iters=min(5, n_iters), top_k=1, progress=False
    ).fit(hvp_loader)
    for n in sizes:
        x, y = digits_like(n, seed=2)
        loader = DataLoader(TensorDataset(x, y), batch_size=256)
        engine = ArnoldiInfluence(
            model, cross_entropy_loss, n_iters=n_iters, top_k=top_k, progress=False
        )
        with timer("fit"):
            engine.fit(hvp_loader)
        engine.self_influence(DataLoader(TensorDataset(x[:256], y[:256]), batch_size=256))
        with timer("score"):  # the projection route is chosen above, outside the timing
            engine.self_influence(loader)
        rows.append(
            {
                "N": n,
                "fit_s": timer.seconds["fit"],
                "score_s": timer.seconds["score"],
                "score_s per 1k": 1000 * timer.seconds["score"] / n,
            }
        )
    return rows


def time_vs_params(widths, n_iters: int, top_k: int, sample: int, timer: Timer) -> list[dict]:
    xs, ys = digits_like(sample, seed=1, flat=True)
    hvp_loader = DataLoader(TensorDataset(xs, ys), batch_size=256)
    x, y = digits_like(1024, seed=2, flat=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    rows = []
    for width in widths:
        torch.manual_seed(0)
        model = mlp(width).eval()
        engine = ArnoldiInfluence(
            model, cross_entropy_loss, n_iters=n_iters, top_k=top_k, progress=False
        )
        with timer("fit"):
            engine.fit(hvp_loader)
        stats = engine.fit_stats
        engine.self_influence(DataLoader(TensorDataset(x[:256], y[:256]), batch_size=256))
        with timer("score"):
            engine.self_influence(loader)
        rows.append(
            {
                "width": width,
                "P": engine.space.dim,
                "fit_s": timer.seconds["fit"],
                "fit_s per HVP": timer.seconds["fit"] / stats["iterations"],
                "outside HVPs %": 100 * (1 - stats["hvp_seconds"] / stats["fit_seconds"]),
                "score_ms per example": 1000 * timer.seconds["score"] / len(y),
                "projection": engine.projection_mode_,
            }
        )
    return rows


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    """Reset VmHWM (the peak resident set) to the current RSS (Linux: ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def memory_child(spec: dict) -> dict:
    """Run one fit (in a fresh process) and measure the basis and the peak memory it adds."""
    set_threads(1)
    tune_allocator(spec["tune_malloc"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    model = mlp(spec["width"]).to(device).eval()
    xs, ys = digits_like(spec["sample"], seed=1, flat=True)
    batches = [(xs.to(device), ys.to(device))]
    engine = ArnoldiInfluence(model, cross_entropy_loss, progress=False)
    with analysis_context(model):
        f, params = engine.functional_loss(), engine.parameters()
        hessian = DatasetHessian(f, params, engine.space, batches, "fwd-rev", len(ys))
        start = torch.randn(engine.space.dim, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda_before = torch.cuda.memory_allocated()
        _reset_peak_rss()
        rss_before = _status_bytes("VmRSS")
        result = arnoldi(
            hessian,
            start,
            spec["n_iters"],
            basis_device=spec["basis_device"] or device,
            basis_dtype=getattr(torch, spec["basis_dtype"]) if spec["basis_dtype"] else None,
        )
        peak_rss = _status_bytes("VmHWM")
        out = {
            "P": engine.space.dim,
            "basis_MiB": result.basis.numel() * result.basis.element_size() / 2**20,
            "basis_on": str(result.basis.device),
            "basis_dtype": str(result.basis.dtype).removeprefix("torch."),
            "host_peak_added_MiB": max(0, peak_rss - rss_before) / 2**20,
        }
        if device.type == "cuda":
            torch.cuda.synchronize()
            out["accel_peak_added_MiB"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    return out


def memory_table(width: int, n_iters: int, sample: int, tune: bool) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for label, basis_device, basis_dtype in (
        ("on the model's device, float32", None, None),
        ("on the model's device, bfloat16", None, "bfloat16"),
        ("offloaded to CPU, float32", "cpu", None),
        ("offloaded to CPU, bfloat16", "cpu", "bfloat16"),
    ):
        spec = {
            "device": device,
            "width": width,
            "sample": sample,
            "n_iters": n_iters,
            "basis_device": basis_device,
            "basis_dtype": basis_dtype,
            "tune_malloc": tune,
        }
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--memory-child", json.dumps(spec)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"basis": label, "model on": device, **result})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--n-iters", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--sample", type=int, default=256, help="examples in the HVP sample")
    parser.add_argument("--default-malloc", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return {}
    set_threads(args.threads)
    tune_allocator(not args.default_malloc)
    if args.quick:
        args.n_iters, args.top_k = 30, 10
        sizes, widths, mem_width = [500, 1000, 2000], [64, 256], 256
    else:
        sizes, widths, mem_width = [1000, 2000, 4000, 8000, 16000], [64, 256, 512, 1024], 1024
    name = "scaling_quick" if args.quick else "scaling"

    timer = Timer()
    n_rows = time_vs_n(sizes, args.n_iters, args.top_k, args.sample, timer)
    p_rows = time_vs_params(widths, args.n_iters, args.top_k, args.sample, timer)
    m_rows = memory_table(mem_width, args.n_iters, args.sample, not args.default_malloc)

    info = machine_info()
    md = [
        f"# Scaling{' (quick)' if args.quick else ''}",
        "",
        f"Arnoldi n={args.n_iters}, top_k={args.top_k}, HVP sample of {args.sample} examples. "
        "CPU seconds of a single-threaded process.",
        "",
        "## Time against the number of scored examples N (digits CNN, 9,258 parameters)",
        "",
        "The fit sees only the fixed HVP sample (flat in N); scoring is linear in N.",
        "",
        markdown_table(n_rows, ["N", "fit_s", "score_s", "score_s per 1k"]),
        "",
        "## Time against the number of parameters P (3-layer MLPs on 8x8 inputs)",
        "",
        "`outside HVPs %`: the share of the fit's wall time not spent in HVPs "
        "(Gram-Schmidt against the basis, distillation), from the engine's `fit_stats`.",
        "",
        markdown_table(
            p_rows,
            [
                "width",
                "P",
                "fit_s",
                "fit_s per HVP",
                "outside HVPs %",
                "score_ms per example",
                "projection",
            ],
        ),
        "",
        f"## Peak memory of the Krylov basis (MLP width {mem_width}, n={args.n_iters})",
        "",
        "`basis_MiB`: bytes of the [n+1, P] basis tensor; `host_peak_added_MiB`: peak resident "
        "memory added by the fit in a fresh process (basis, HVP workspace, temporaries)."
        + (
            ""
            if m_rows[0]["model on"] == "cuda"
            else " This machine has no accelerator: the model is on the CPU, so offloading moves "
            "nothing; on an accelerator it moves `basis_MiB` off the device."
        ),
        "",
        markdown_table(
            m_rows,
            ["basis", "model on", "P", "basis_on", "basis_dtype", "basis_MiB"]
            + ["host_peak_added_MiB"]
            + (["accel_peak_added_MiB"] if m_rows[0]["model on"] == "cuda" else []),
        ),
        "",
        f"Machine: {info['processor']}, {info['cpu_count']} cores shared with other jobs, torch "
        f"{info['torch']} ({info['torch_threads']} thread), {info['date_utc']}.",
    ]
    payload = {
        "config": vars(args),
        "machine": info,
        "time_vs_n": n_rows,
        "time_vs_params": p_rows,
        "memory": m_rows,
    }
    write_results(args.out, name, "\n".join(md), payload)
    return payload


if __name__ == "__main__":
    main()
