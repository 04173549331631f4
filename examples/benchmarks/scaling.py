"""Scaling of ArnoldiInfluence: time and memory against N and against the number of parameters P.

Four tables, and two plots (``<name>_vs_n.png``, ``<name>_vs_params.png``; skipped with a note
when matplotlib is missing):

1. **Time and memory against N** (digits CNN, 9,258 parameters, N from 1,000 to 1,000,000
   synthetic inputs: a digit plus noise, made per index when a batch is loaded, so the data takes
   no memory): each N is scored in a fresh process, once into a score directory
   (``self_influence_shards``, streamed) and once in memory (``self_influence``); CPU seconds of
   the scoring, and the peak resident memory it adds. Streamed, memory is flat in N; in memory
   it grows with the ``[N, k]`` projections.
2. **Time against P, float32 basis in RAM** (3-layer MLPs on 8x8 inputs, widths growing,
   n=200): fit time, the share of the fit spent outside the HVPs (orthogonalization,
   distillation: the engine's own ``fit_stats``, both measured in the same fit), and scoring time
   per example.
3. **Time and memory against P on the large-model path** (``large_model.py``: MLPs 784 -> H ->
   2H -> 10 trained one epoch, then ``InfluenceCallback`` with n=100, k=20, the basis in a
   float16 file, scores streamed), each P in a fresh process, from 10k to 3M parameters measured
   here; the 10M row is read from ``results/large_model.json`` (that script's own run): fit
   seconds per iteration and per HVP, the share outside HVPs, scoring time per example, peak
   RSS against the bound documented in ``large_model.py``.
4. **Peak memory of the Krylov basis** ([n+1, P]) with and without CPU offload
   (``basis_device='cpu'``) and with bfloat16 storage (``basis_dtype='bfloat16'``): the basis
   tensor's bytes as measured on the result of ``arnoldi``, and the peak resident memory that a
   fresh process adds during the fit. On a CUDA machine the accelerator's peak allocated memory
   is measured too (``torch.cuda.max_memory_allocated``); on a CPU-only machine offload has
   nothing to move, which the table says.

Times in tables 1, 2 and 4 are CPU seconds of a single-threaded process (see README); table 3
reports the callback's own wall-clock timings (``manifest["timings"]``), as ``large_model.py``.

Run: ``PYTHONPATH=. python examples/benchmarks/scaling.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_OUT,
    Timer,
    clock,
    cross_entropy_loss,
    machine_info,
    markdown_table,
    proc_memory,
    reset_peak_rss,
    set_threads,
    tune_allocator,
    write_results,
)
from digits import build_cnn

from lightning_influence import ArnoldiInfluence
from lightning_influence.core.arnoldi import arnoldi
from lightning_influence.core.context import analysis_context
from lightning_influence.core.hvp import DatasetHessian

__all__ = ["SyntheticDigits", "main"]

RESULTS = Path(__file__).resolve().parent / "results"


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


class SyntheticDigits(torch.utils.data.Dataset):
    """``n`` inputs, each a digit plus Gaussian noise, made from the index when loaded (timing only).

    Example ``i`` is digit ``i mod 1797`` plus ``0.05 x`` row ``(7919 i) mod 4096`` of a fixed noise
    bank: deterministic per index, and the data set holds 1,797 digits and the bank whatever N is.
    ``__getitems__`` builds a whole batch at once (use ``collate_fn=as_batch``).
    """

    def __init__(self, n: int, seed: int = 2) -> None:
        digits = load_digits()
        self.n = n
        self.images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
        self.labels = torch.tensor(digits.target)
        gen = torch.Generator().manual_seed(seed)
        self.bank = 0.05 * torch.randn(4096, 1, 8, 8, generator=gen)

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        digit = idx % len(self.labels)
        return self.images[digit] + self.bank[(idx * 7919) % len(self.bank)], self.labels[digit]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]


def as_batch(batch: Any) -> Any:
    """The collate function of ``SyntheticDigits``: its ``__getitems__`` returns the batch."""
    return batch


def n_child(spec: dict) -> dict:
    """Score ``spec['N']`` synthetic digits (streamed or in memory) in this fresh process."""
    set_threads(1)
    tune_allocator(spec["tune_malloc"])
    saved = torch.load(spec["state"], weights_only=False)
    model = build_cnn()
    model.load_state_dict(saved["model"])
    model.eval()
    engine = ArnoldiInfluence(model, cross_entropy_loss, progress=False)
    engine.load_state_dict(saved["engine"])
    batch = spec["batch_size"]
    warm = DataLoader(SyntheticDigits(batch), batch_size=batch, collate_fn=as_batch)
    engine.self_influence(warm)  # the projection route and the libraries' first call, untimed
    loader = DataLoader(SyntheticDigits(spec["N"]), batch_size=batch, collate_fn=as_batch)
    out_dir = Path(spec["out"]) / f"scores-{spec['N']}"
    reset_peak_rss()
    rss_before = proc_memory()["VmRSS"]
    cpu, wall = clock(), time.perf_counter()
    if spec["mode"] == "streamed":
        engine.self_influence_shards(loader, out_dir, shard_batches=spec["shard_batches"])
    else:
        scores = engine.self_influence(loader)
    cpu, wall = clock() - cpu, time.perf_counter() - wall
    peak = proc_memory()["VmHWM"]
    if spec["mode"] == "streamed":  # after the measurement: reading them holds all N scores
        from lightning_influence.io.shards import read_scores

        scores = read_scores(out_dir)
    assert scores.numel() == spec["N"], (scores.numel(), spec["N"])
    return {
        "score_s": cpu,
        "score_wall_s": wall,
        "rss_before_MiB": rss_before / 2**20,
        "peak_added_MiB": max(0, peak - rss_before) / 2**20,
        "peak_rss_MiB": peak / 2**20,
    }


def _child(flag: str, spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), flag, json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{flag} {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def time_vs_n(sizes, n_iters: int, top_k: int, sample: int, tune: bool, timer: Timer) -> list[dict]:
    """Table 1: one fit, then every N scored streamed and in memory, each in a fresh process."""
    torch.manual_seed(0)
    model = build_cnn().eval()
    xs, ys = digits_like(sample, seed=1)
    engine = ArnoldiInfluence(
        model, cross_entropy_loss, n_iters=n_iters, top_k=top_k, progress=False
    )
    with timer("fit"):
        engine.fit(DataLoader(TensorDataset(xs, ys), batch_size=256))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "engine.pt")
        torch.save({"model": model.state_dict(), "engine": engine.state_dict()}, state)
        for n in sizes:
            for mode in ("streamed", "in memory"):
                spec = {
                    "state": state,
                    "N": n,
                    "mode": "streamed" if mode == "streamed" else "memory",
                    "batch_size": 256,
                    "shard_batches": 64,
                    "out": tmp,
                    "tune_malloc": tune,
                }
                result = _child("--n-child", spec)
                rows.append(
                    {
                        "N": n,
                        "scores": mode,
                        "fit_s": timer.seconds["fit"],
                        **result,
                        "score_s per 1k": 1000 * result["score_s"] / n,
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


def large_path_child(spec: dict) -> dict:
    """One P of table 3 in this fresh process: ``large_model.run`` (the callback, float16 basis file)."""
    import large_model

    set_threads(1)
    return large_model.run(
        hidden=spec["hidden"],
        n_iters=spec["n_iters"],
        top_k=spec["top_k"],
        num_train=spec["num_train"],
    )


LARGE_COLUMNS = [
    "parameters",
    "source",
    "n_iters",
    "fit_s",
    "fit_s_per_iteration",
    "hvp_s_per_hvp",
    "outside_hvps_pct",
    "scoring_ms_per_example",
    "examples_per_hour",
    "basis_file_MiB",
    "rss_before_analysis_MiB",
    "peak_rss_MiB",
    "bound_MiB",
    "peak / bound",
]


def _committed_large_model(path: Path) -> dict | None:
    """The 10M row of ``large_model.py``'s published run, in table 3's columns (None if absent)."""
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    if "row" not in payload:  # written before the phases were measured: not comparable
        return None
    row = {**payload["row"], "phases": payload["phases"]}
    row["source"] = f"large_model.py, {payload['machine']['date_utc']}"
    return row


PHASES = ("HVP sample", "arnoldi iterations", "distill", "projection route", "scoring")


def _phase_table(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows: the phases and the bound's terms; columns: one per P."""
    columns = [f"P={row['parameters']:,}" for row in rows]
    table = []
    for phase in PHASES:
        line: dict[str, Any] = {"phase": phase}
        for col, row in zip(columns, rows, strict=True):
            peaks = {p["phase"]: p["peak_MiB"] for p in row["phases"]}
            line[col] = peaks[phase] - row["rss_before_analysis_MiB"] if phase in peaks else None
        table.append(line)
    for term in ("fit_MiB", "scoring_MiB"):
        line = {"phase": f"bound: {term.removesuffix('_MiB')}"}
        for col, row in zip(columns, rows, strict=True):
            line[col] = row[term] - row["rss_before_analysis_MiB"]
        table.append(line)
    return table, ["phase", *columns]


def time_vs_params_large(
    hiddens, n_iters: int, top_k: int, num_train: int, committed: Path | None
) -> list[dict]:
    """Table 3: ``large_model.run`` for each hidden width H, each in a fresh process, and the
    committed 10M row."""
    rows = []
    for hidden in hiddens:
        spec = {"hidden": hidden, "n_iters": n_iters, "top_k": top_k, "num_train": num_train}
        result = _child("--large-child", spec)
        rows.append({**result["row"], "source": "measured", "phases": result["phases"]})
    if committed is not None:
        row = _committed_large_model(committed)
        if row is not None:
            rows.append(row)
    return rows


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
        reset_peak_rss()
        rss_before = proc_memory()["VmRSS"]
        result = arnoldi(
            hessian,
            start,
            spec["n_iters"],
            basis_device=spec["basis_device"] or device,
            basis_dtype=getattr(torch, spec["basis_dtype"]) if spec["basis_dtype"] else None,
        )
        peak_rss = proc_memory()["VmHWM"]
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
        result = _child("--memory-child", spec)
        rows.append({"basis": label, "model on": device, **result})
    return rows


def plot_vs_n(rows: list[dict], path: Path) -> bool:
    """Scoring time and peak memory against N, streamed and in memory (False: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, marker in (("streamed", "o"), ("in memory", "s")):
        sub = [r for r in rows if r["scores"] == mode]
        ns = [r["N"] for r in sub]
        left.loglog(ns, [r["score_s"] for r in sub], marker=marker, label=mode)
        right.semilogx(ns, [r["peak_added_MiB"] for r in sub], marker=marker, label=mode)
    left.set(xlabel="examples scored N", ylabel="scoring, CPU s", title="time against N")
    right.set(
        xlabel="examples scored N",
        ylabel="peak RSS added by scoring, MiB",
        title="memory against N",
    )
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("self-influence, digits CNN (9,258 parameters), k=100, one thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_vs_params(in_ram: list[dict], large: list[dict], path: Path) -> bool:
    """Fit, Gram-Schmidt share, scoring and peak memory against P (False: no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    ps = [r["parameters"] for r in large]
    ax = axes[0, 0]
    ax.loglog(ps, [r["fit_s_per_iteration"] for r in large], "o-", label="fit per iteration")
    ax.loglog(ps, [r["hvp_s_per_hvp"] for r in large], "s--", label="HVP")
    ax.loglog(
        [r["P"] for r in in_ram],
        [r["fit_s per HVP"] for r in in_ram],
        "^:",
        label="fit per iteration, fp32 basis in RAM, n=200 (CPU s)",
    )
    ax.set(ylabel="seconds", title="fit: seconds per Arnoldi iteration")
    ax = axes[0, 1]
    ax.semilogx(ps, [r["outside_hvps_pct"] for r in large], "o-", label="fp16 basis file, n=100")
    ax.semilogx(
        [r["P"] for r in in_ram],
        [r["outside HVPs %"] for r in in_ram],
        "^:",
        label="fp32 basis in RAM, n=200",
    )
    ax.set(ylabel="% of the fit", title="fit outside HVPs (Gram-Schmidt, distill)", ylim=(0, 100))
    ax = axes[1, 0]
    ax.loglog(ps, [r["scoring_ms_per_example"] for r in large], "o-")
    ax.set(ylabel="ms per example", title="self-influence scoring, k=20")
    ax = axes[1, 1]
    ax.loglog(ps, [r["peak_rss_MiB"] for r in large], "o-", label="peak RSS, measured")
    ax.loglog(ps, [r["bound_MiB"] for r in large], "k--", label="bound (large_model.py)")
    ax.set(ylabel="MiB", title="peak resident memory")
    for ax in axes.flat:
        ax.set_xlabel("parameters P")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("InfluenceCallback, MLPs 784-H-2H-10, float16 basis on disk, one thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--n-iters", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--sample", type=int, default=256, help="examples in the HVP sample")
    parser.add_argument(
        "--large-model-json",
        default=str(RESULTS / "large_model.json"),
        help="the JSON of a large_model.py run (the 10M row of table 3); '' leaves it out",
    )
    parser.add_argument("--default-malloc", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="rewrite the tables and plots from a saved scaling JSON (no measurement)",
    )
    for child in ("--memory-child", "--n-child", "--large-child"):
        parser.add_argument(child, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag, fn in (
        (args.memory_child, memory_child),
        (args.n_child, n_child),
        (args.large_child, large_path_child),
    ):
        if flag:
            print(json.dumps(fn(json.loads(flag))))
            return {}
    if args.render:
        payload = json.loads(Path(args.render).read_text())
        return render(payload, args.out, Path(args.render).stem)
    set_threads(args.threads)
    tune = not args.default_malloc
    tune_allocator(tune)
    if args.quick:
        args.n_iters, args.top_k = 30, 10
        sizes, widths, mem_width = [500, 2000], [64, 256], 256
        hiddens, large_n, large_k, large_train, committed = [12], 20, 5, 256, None
    else:
        sizes, widths, mem_width = [1000, 10_000, 100_000, 1_000_000], [64, 256, 512, 1024], 1024
        hiddens, large_n, large_k, large_train = [12, 96, 540, 1050], 100, 20, 2000
        committed = Path(args.large_model_json) if args.large_model_json else None
    name = "scaling_quick" if args.quick else "scaling"

    timer = Timer()
    n_rows = time_vs_n(sizes, args.n_iters, args.top_k, args.sample, tune, timer)
    p_rows = time_vs_params(widths, args.n_iters, args.top_k, args.sample, timer)
    large_rows = time_vs_params_large(hiddens, large_n, large_k, large_train, committed)
    m_rows = memory_table(mem_width, args.n_iters, args.sample, tune)
    payload = {
        "config": {
            **vars(args),
            "fit_s": timer.seconds["fit"],
            "sizes": sizes,
            "mem_width": mem_width,
            "large": {"n_iters": large_n, "top_k": large_k, "num_train": large_train},
        },
        "machine": machine_info(),
        "time_vs_n": n_rows,
        "time_vs_params": p_rows,
        "time_vs_params_large": large_rows,
        "memory": m_rows,
    }
    return render(payload, args.out, name)


def render(payload: dict, out: str, name: str) -> dict:
    """Write ``name.md``, ``name.json`` and the plots under ``out`` from the measured ``payload``
    (the bounds of table 3 recomputed with ``large_model.bound_mib``)."""
    from large_model import bound_mib

    cfg, info = payload["config"], payload["machine"]
    n_rows, p_rows = payload["time_vs_n"], payload["time_vs_params"]
    large_rows, m_rows = payload["time_vs_params_large"], payload["memory"]
    sizes, mem_width = cfg["sizes"], cfg["mem_width"]
    large_n, large_k, large_train = (cfg["large"][k] for k in ("n_iters", "top_k", "num_train"))
    for row in large_rows:
        row.update(
            bound_mib(
                row["rss_before_analysis_MiB"],
                row["parameters"],
                row["n_iters"],
                row["top_k"],
                row["basis_file_MiB"] * 2**20,
            )
        )
        row["peak / bound"] = row["peak_rss_MiB"] / row["bound_MiB"]
    os.makedirs(out, exist_ok=True)
    plots = {
        "vs_n": Path(out) / f"{name}_vs_n.png",
        "vs_params": Path(out) / f"{name}_vs_params.png",
    }
    plotted = plot_vs_n(n_rows, plots["vs_n"]) and plot_vs_params(
        p_rows, large_rows, plots["vs_params"]
    )
    plot_note = (
        f"Plots: `{plots['vs_n'].name}`, `{plots['vs_params'].name}`."
        if plotted
        else "Plots skipped: matplotlib is not installed (pip install 'lightning-influence[plot]')."
    )
    streamed = [r for r in n_rows if r["scores"] == "streamed"]
    in_memory = [r for r in n_rows if r["scores"] == "in memory"]

    md = [
        f"# Scaling{' (quick)' if name.endswith('quick') else ''}",
        "",
        plot_note,
        "",
        f"## 1. Time and memory against the number of scored examples N (digits CNN, 9,258 "
        f"parameters, n={cfg['n_iters']}, k={cfg['top_k']})",
        "",
        "Synthetic inputs made per index (the data set takes no memory); one fit on a fixed "
        f"{cfg['sample']}-example HVP sample ({cfg['fit_s']:.1f} CPU s), then each N scored "
        "in a fresh process, into a score directory (`self_influence_shards`, shards of 64 "
        "batches of 256) and in memory (`self_influence`). `score_s`: CPU seconds of the "
        "scoring; `peak_added_MiB`: the peak resident memory the scoring adds to the process.",
        "",
        markdown_table(
            n_rows,
            ["N", "scores", "score_s", "score_s per 1k", "score_wall_s", "peak_added_MiB"],
        ),
        "",
        f"Streamed, the added peak stays between {min(r['peak_added_MiB'] for r in streamed):.0f} "
        f"and {max(r['peak_added_MiB'] for r in streamed):.0f} MiB from N={sizes[0]:,} to "
        f"N={sizes[-1]:,}; in memory it reaches {in_memory[-1]['peak_added_MiB']:.0f} MiB at "
        f"N={sizes[-1]:,} (the [N, k] projections and the scores).",
        "",
        "## 2. Time against the number of parameters P, float32 basis in RAM (3-layer MLPs on "
        f"8x8 inputs, n={cfg['n_iters']})",
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
        f"## 3. Time and memory against P on the large-model path (n={large_n}, k={large_k}, "
        f"{large_train} examples)",
        "",
        "`large_model.py`'s run at each size, each in a fresh process: an MLP 784 -> H -> 2H -> 10 "
        "trained one epoch, then `InfluenceCallback` with the basis in a float16 file (numpy "
        "memmap), a 64-example HVP sample, `projection='grad'`, scores streamed in shards. Times "
        "are the callback's wall-clock timings (`manifest['timings']`) on a shared machine; "
        "`bound_MiB` is the bound of `large_model.py`'s docstring. Every row ran all "
        f"{large_n} iterations: nothing here is extrapolated. The row whose source is a file was "
        "not rerun by this script: it is `large_model.py`'s own run, read from that file.",
        "",
        markdown_table(large_rows, LARGE_COLUMNS),
        "",
        "Peak resident memory of each phase above the analysis' base (`rss_before_analysis_MiB`), "
        "MiB, and the bound's two terms (`fit_MiB`, `scoring_MiB`, also above the base):",
        "",
        markdown_table(*_phase_table(large_rows)),
        "",
        f"## 4. Peak memory of the Krylov basis (MLP width {mem_width}, n={cfg['n_iters']})",
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
    payload["plots"] = [str(p) for p in plots.values()] if plotted else []
    write_results(out, name, "\n".join(md), payload)
    return payload


if __name__ == "__main__":
    main()
