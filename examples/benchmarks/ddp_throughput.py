"""DDP throughput of the influence analysis: 2 gloo processes on the CPU against 1 (issue 12, item 5).

Each run is a real ``Trainer(accelerator="cpu", strategy="ddp", devices=W)`` with
``InfluenceCallback`` (the package's DDP path: HVPs on each rank's share of the HVP sample summed
with one collective per product, each rank scoring its own block of the dataset into its own
shards, global zero writing the event). The model (an MLP 784 -> H -> H -> 10) takes one
training step with a zero learning rate, so both world sizes analyse the same weights (the
scores of the first examples are compared); the analysis at the end of training is what is
measured, from the event's manifest
(``timings``: wall seconds of the fit and of the scoring, the gather of the scores included).
One torch thread per process (``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``), so W=2
uses two cores where W=1 uses one.

Runs alternate W=1, W=2, W=1, W=2, ... (``--repeats`` pairs) and the ratio of each pair is
printed; the load average before each run is recorded beside it, since on a machine shared with
other jobs a second process competes with them for the second core.

Run: ``PYTHONPATH=. python examples/benchmarks/ddp_throughput.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import DEFAULT_OUT, machine_info, markdown_table, write_results

__all__ = ["main", "worker"]


def worker(spec: dict[str, Any]) -> None:
    """One run (rank 0; Lightning starts rank 1 by running this script again): train one batch,
    analyse at the end of training, and global zero writes the timings to ``spec['result']``."""
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_influence import InfluenceCallback
    from lightning_influence.losses import cross_entropy_loss

    torch.set_num_threads(1)

    class MLP(pl.LightningModule):
        def __init__(self, hidden: int) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
            )
            self.head = nn.Linear(hidden, 10)

        def forward(self, x):
            return self.head(self.net(x))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            # lr=0: the one training step leaves the seeded weights as they are, so that W=1 and
            # W=2 (whose ranks train on different batches) analyse the same model
            return torch.optim.SGD(self.parameters(), lr=0.0)

    class Record(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            event = influence.latest_event
            if trainer.is_global_zero:
                Path(spec["result"]).write_text(
                    json.dumps(
                        {
                            "world_size": trainer.world_size,
                            "threads": torch.get_num_threads(),
                            "timings": event.manifest["timings"],
                            "parameters": event.manifest["num_params"],
                            "first_scores": event.self_influence[:4].tolist(),
                        }
                    )
                )

    g = torch.Generator().manual_seed(0)
    n = spec["num_train"]
    x = torch.randn(n, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    pl.seed_everything(0, verbose=False)
    influence = InfluenceCallback(
        cross_entropy_loss,
        every_n_epochs=0,
        n_iters=spec["n_iters"],
        top_k=spec["top_k"],
        hvp_samples=spec["hvp_samples"],
        batch_size=64,
        projection="grad",
        shard_batches=8,
        dirpath=spec["dirpath"],
        on_error="raise",
        log_top_n=0,
        progress=False,
    )
    world = spec["world_size"]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        max_epochs=1,
        limit_train_batches=1,
        callbacks=[influence, Record()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(MLP(spec["hidden"]), DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))


def _load() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(v) for v in fh.read().split()[:3]]


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    load = _load()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the W={spec['world_size']} run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(Path(spec["result"]).read_text())
    timings = result["timings"]
    n = spec["num_train"]
    return {
        "W": result["world_size"],
        "threads per process": result["threads"],
        "load before": load[0],
        "fit_s": timings["fit_seconds"],
        "hvp_s": timings["hvp_seconds"],
        "scoring_s": timings["scoring_seconds"],
        "examples/s": n / timings["scoring_seconds"],
        "process_wall_s": wall,
        "first_scores": result["first_scores"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model, 1 pair (~1 min)")
    parser.add_argument("--repeats", type=int, default=None, help="W=1/W=2 pairs (default 2)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return {}
    if args.quick:
        config = {"hidden": 64, "num_train": 512, "n_iters": 10, "top_k": 5, "hvp_samples": 64}
    else:
        config = {"hidden": 512, "num_train": 4000, "n_iters": 50, "top_k": 20, "hvp_samples": 256}
    repeats = args.repeats or (1 if args.quick else 2)
    if repeats < 1:
        raise SystemExit(f"--repeats {repeats}: pass at least 1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for world in (1, 2):
                spec = {
                    **config,
                    "world_size": world,
                    "dirpath": os.path.join(tmp, f"influence-{rep}-{world}"),
                    "result": os.path.join(tmp, f"result-{rep}-{world}.json"),
                }
                rows.append({"pair": rep, **_run(spec)})
    ratios = []
    for rep in range(repeats):
        one, two = (r for r in rows if r["pair"] == rep)
        ratios.append(
            {
                "pair": rep,
                "scoring examples/s, W=2 / W=1": two["examples/s"] / one["examples/s"],
                "fit, W=1 s / W=2 s": one["fit_s"] / two["fit_s"],
                "scores, max relative difference": max(
                    abs(a - b) / max(abs(a), 1e-30)
                    for a, b in zip(one["first_scores"], two["first_scores"], strict=True)
                ),
            }
        )
    load_after = _load()[0]
    scoring = [r["scoring examples/s, W=2 / W=1"] for r in ratios]
    fit = [r["fit, W=1 s / W=2 s"] for r in ratios]
    params = 784 * config["hidden"] + config["hidden"] ** 2 + 10 * config["hidden"]
    params += 2 * config["hidden"] + 10
    loads = ", ".join(f"{r['load before']:.2f}" for r in rows)
    name = "ddp_throughput_quick" if args.quick else "ddp_throughput"
    md = [
        f"# DDP throughput{' (quick)' if args.quick else ''}: 2 gloo processes against 1, CPU",
        "",
        f"MLP 784 -> {config['hidden']} -> {config['hidden']} -> 10 ({params:,} parameters), "
        f"{config['num_train']} examples scored (streamed, shards of 8 batches of 64, "
        f"`projection='grad'`), Arnoldi n={config['n_iters']}, k={config['top_k']} on a "
        f"{config['hvp_samples']}-example HVP sample; one torch thread per process; wall seconds "
        "from the event's manifest.",
        "",
        markdown_table(
            rows,
            [
                "pair",
                "W",
                "threads per process",
                "load before",
                "fit_s",
                "hvp_s",
                "scoring_s",
                "examples/s",
                "process_wall_s",
            ],
        ),
        "",
        markdown_table(
            ratios,
            [
                "pair",
                "scoring examples/s, W=2 / W=1",
                "fit, W=1 s / W=2 s",
                "scores, max relative difference",
            ],
        ),
        "",
        f"Scoring throughput W=2 / W=1: {', '.join(f'{r:.2f}' for r in scoring)} "
        f"(median {statistics.median(scoring):.2f}); fit speed-up "
        f"{', '.join(f'{r:.2f}' for r in fit)}. Load average (1 min) before the runs "
        f"{loads}, after {load_after:.2f}, on "
        f"{os.cpu_count()} cores.",
    ]
    payload = {
        "config": {**config, "repeats": repeats},
        "machine": machine_info(),
        "rows": rows,
        "ratios": ratios,
        "load_after": load_after,
    }
    write_results(args.out, name, "\n".join(md), payload)
    return payload


if __name__ == "__main__":
    main()
