"""Warm starts across the analyses of a run (issue 21, item 3): products per analysis with and
without, and the eigenvalues' agreement with a cold fit.

The demo's digits CNN (``lightning_influence.demo``) trains twice from the same seed with an
``InfluenceCallback`` analysing every ``--every`` epochs at the analysis defaults (thick-restart
Lanczos, top 30 pairs to ``restart_tol=1e-2``, 256 HVP samples), once with ``warm_start=True``
(the default: each fit starts from the previous analysis' eigenvectors) and once with
``warm_start=False``. The callback does not change training, so both runs analyse the same
weights (checked: the events' ``weights_sha256``). Reported per analysis: the Hessian-vector
products of each fit, the fit's seconds, and the largest relative difference of the top-10
eigenvalues (paired by rank) between the warm and the cold fit.

    PYTHONPATH=. python examples/benchmarks/warm_start.py --out examples/benchmarks/results
    PYTHONPATH=. python examples/benchmarks/warm_start.py --quick --out /tmp/warm
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from lightning_influence import InfluenceCallback
from lightning_influence.demo.data import DigitsData, load
from lightning_influence.demo.model import DigitsCNN
from lightning_influence.losses import cross_entropy_loss


def run(args: argparse.Namespace, warm: bool, root: Path) -> list[dict[str, Any]]:
    """One training run; per analysis: epoch, weights hash, warm-start state, products, seconds,
    eigenvalues."""
    pl.seed_everything(args.seed, verbose=False)
    data = DigitsData(load(0.2, args.seed), batch_size=32)
    callback = InfluenceCallback(
        cross_entropy_loss,
        every_n_epochs=args.every,
        at_train_end=False,
        warm_start=warm,
        batch_size=256,
        top_k=args.top_k,
        n_iters=args.n_iters,
        restart_tol=1e-2,  # the tolerance its published figures were measured with
        progress=False,
        dirpath=root / ("warm" if warm else "cold"),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsCNN(), datamodule=data)
    rows = []
    for event in callback.events:
        stats = event.manifest["fit_stats"]
        rows.append(
            {
                "epoch": event.epoch,
                "weights_sha256": event.manifest["weights_sha256"],
                "warm_start": stats["warm_start"],
                "products": int(stats["iterations"]),
                "restarts": int(stats.get("restarts", 0)),
                "converged": stats.get("converged"),
                "fit_seconds": float(stats["fit_seconds"]),
                "eigenvalues": event.eigenvalues[:10].tolist(),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 epochs, an analysis each")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=2, help="analyse every N epochs")
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--n-iters", type=int, default=45)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="examples/benchmarks/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.every, args.top_k, args.n_iters = 4, 1, 10, 15
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "warm_start_runs"
    start = time.perf_counter()
    warm, cold = run(args, True, scratch), run(args, False, scratch)
    for folder in (scratch / "warm", scratch / "cold"):
        for path in sorted(folder.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        folder.rmdir()
    scratch.rmdir()
    rows = []
    for w, c in zip(warm, cold, strict=True):
        if w["weights_sha256"] != c["weights_sha256"]:
            raise RuntimeError(f"epoch {w['epoch']}: the two runs analysed different weights")
        diff = max(
            abs(a - b) / abs(b) for a, b in zip(w["eigenvalues"], c["eigenvalues"], strict=False)
        )
        rows.append({"epoch": w["epoch"], "warm": w, "cold": c, "eigenvalue_rel_diff": diff})
    name = "warm_start_quick" if args.quick else "warm_start"
    payload = {"args": vars(args), "rows": rows, "seconds": time.perf_counter() - start}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    lines = [
        "# Warm starts across the analyses of a run",
        "",
        f"Command: `PYTHONPATH=. python examples/benchmarks/warm_start.py"
        f"{' --quick' if args.quick else ''} --out {args.out}`; top_k={args.top_k}, "
        f"n_iters={args.n_iters}, restart_tol=1e-2, 256 HVP samples, analysis every "
        f"{args.every} epochs of {args.epochs}, digits CNN, seed {args.seed}; "
        f"{payload['seconds']:.0f} s wall.",
        "",
        "| epoch | products warm | products cold | fit s warm | fit s cold | top-10 eigenvalues, max rel. diff |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        w, c = r["warm"], r["cold"]
        lines.append(
            f"| {r['epoch']} | {w['products']} ({w['warm_start']}) | {c['products']} | "
            f"{w['fit_seconds']:.2f} | {c['fit_seconds']:.2f} | {r['eigenvalue_rel_diff']:.2e} |"
        )
    later = rows[1:]
    if later:
        total_w = sum(r["warm"]["products"] for r in later)
        total_c = sum(r["cold"]["products"] for r in later)
        lines += ["", f"Analyses after the first: {total_w} products warm, {total_c} cold "
                  f"({total_w / total_c:.2f}x)."]  # fmt: skip
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
