"""Pruning that beats the loss? (issue 11, item 6): self-influence pruning against loss baselines.

scikit-learn's digits with the demo's CNN (``lightning_influence.demo.model.DigitsCNN``, 11,274
parameters) and the demo's recipe (30 epochs, Adam 3e-3, batch 32, the demo's train/test split per
seed), under three noise settings:

* ``uniform20`` / ``uniform40``: 20% / 40% of the training labels flipped to a uniformly chosen
  other class (``lightning_influence.demo.data.load``);
* ``pairs20``: 20% of the training labels flipped within fixed class pairs
  ``1<->7, 3<->8, 5<->6, 4<->9`` (``PAIRS``; classes 0 and 2 never flip). The flipped examples are
  drawn uniformly among the training examples of the paired classes, ``round(0.2 * N)`` of them
  (the same count as ``uniform20``, about a quarter of every paired class).

Every arm of a seed starts from the same seed, so the noisy arms train identically until the first
pruning. Scores are computed at the end of epochs 10 and 20 (``--score-every 10``; a third at
epoch 30 changes nothing) and each new score drops the top ``fraction`` of the whole training set
(the demo's default 20%; for ``uniform40`` also 40%) from the following epochs. Arms:

* ``clean``, ``noisy``: no pruning (clean labels: the same for every noise setting of a seed, so it
  is trained once per seed);
* ``IF latest`` (the product's default): ``InfluenceCallback(n_iters=50, top_k=30,
  hvp_samples=512)`` + ``InfluenceDataModule(mode="drop", combine="latest")``;
* ``IF normalized_sum`` and ``IF mean``: the same callback, ``combine="normalized_sum"`` / ``"mean"``;
* ``loss``: the per-example loss at the same epoch (the demo's ``LossScores`` fed to
  ``InfluenceDataModule.add_event``);
* ``loss mean``: the running mean of the per-example losses over the scoring epochs so far;
* ``TracIn``: the sum over the scoring epochs so far of ``||g(x)||^2`` at the weights then
  (``lightning_influence.TracInInfluence`` with one checkpoint per event, learning rate 1).

Reported per (setting, drop fraction, seed, arm): clean test accuracy, the share of the accuracy lost
to noise that pruning recovers ``(acc - noisy) / (clean - noisy)``, and precision and recall of the
final dropped set (and of the first one) against the labels really flipped. For the self-influence
arms every event's top eigenvalues and maximum relative Ritz residual ``||He - lambda e|| / |lambda|``
are recorded in the JSON.

Run: ``PYTHONPATH=. python examples/benchmarks/pruning.py [--quick] [--out DIR] [--workers 2]``.
Nothing is written outside ``--out``: the trainers' folders go to a temporary folder inside it,
removed at the end.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import DEFAULT_OUT, machine_info, markdown_table, set_threads, write_results

from lightning_influence import TracInInfluence
from lightning_influence.demo.data import Digits, DigitsData, load
from lightning_influence.demo.model import DigitsCNN
from lightning_influence.demo.run import LossScores
from lightning_influence.io.events import ScoringEvent
from lightning_influence.lightning.callback import InfluenceCallback
from lightning_influence.lightning.datamodule import InfluenceDataModule
from lightning_influence.losses import cross_entropy_loss

# Symmetric class pairs of the asymmetric setting (look-alike digits); 0 and 2 are never flipped.
PAIRS = {1: 7, 7: 1, 3: 8, 8: 3, 5: 6, 6: 5, 4: 9, 9: 4}
# name -> (kind, noise, drop fractions)
SETTINGS: dict[str, tuple[str, float, tuple[float, ...]]] = {
    "uniform20": ("uniform", 0.2, (0.2,)),
    "uniform40": ("uniform", 0.4, (0.2, 0.4)),
    "pairs20": ("pairs", 0.2, (0.2,)),
}
IF_ARMS = {"IF latest": "latest", "IF normalized_sum": "normalized_sum", "IF mean": "mean"}
PRUNED_ARMS = (*IF_ARMS, "loss", "loss mean", "TracIn")
ARMS = ("clean", "noisy", *PRUNED_ARMS)


def load_setting(setting: str, seed: int) -> Digits:
    """The demo's split for ``seed`` with the setting's label noise."""
    kind, noise, _ = SETTINGS[setting]
    if kind == "uniform":
        return load(noise, seed)
    data = load(0.0, seed)
    y = data.y_true.numpy()
    candidates = np.flatnonzero(np.isin(y, list(PAIRS)))
    rng = np.random.default_rng(seed)
    flip = rng.choice(candidates, round(noise * len(y)), replace=False)
    noisy = y.copy()
    noisy[flip] = [PAIRS[int(c)] for c in y[flip]]
    data.y_noisy = torch.from_numpy(noisy).long()
    return data


class _Scores(pl.Callback):
    """At the end of every ``every_n_epochs``-th epoch, per-example scores fed to the DataModule."""

    def __init__(self, every_n_epochs: int) -> None:
        self.every_n_epochs = every_n_epochs
        self.events: list[ScoringEvent] = []

    def score(self, pl_module: pl.LightningModule, loader: DataLoader) -> Tensor:
        raise NotImplementedError

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        loader = DataLoader(trainer.train_dataloader.dataset, batch_size=256)
        event = ScoringEvent(
            trainer.current_epoch,
            trainer.global_step,
            self.score(pl_module, loader).double(),
            torch.zeros(0),
        )
        self.events.append(event)
        trainer.datamodule.add_event(event)


class MeanLossScores(_Scores):
    """The running mean of the per-example losses over the scoring epochs so far."""

    def __init__(self, every_n_epochs: int) -> None:
        super().__init__(every_n_epochs)
        self.history: list[Tensor] = []

    def score(self, pl_module: pl.LightningModule, loader: DataLoader) -> Tensor:
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            losses = torch.cat([cross_entropy_loss(pl_module, b) for b in loader]).double()
        pl_module.train(was_training)
        self.history.append(losses)
        return torch.stack(self.history).mean(0)


class TracInScores(_Scores):
    """TracIn self-influence over the scoring epochs so far: sum of ``||g(x)||^2`` (lr 1)."""

    def __init__(self, every_n_epochs: int) -> None:
        super().__init__(every_n_epochs)
        self.total: Tensor | None = None

    def score(self, pl_module: pl.LightningModule, loader: DataLoader) -> Tensor:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        engine = TracInInfluence(pl_module, cross_entropy_loss, [state], 1.0, progress=False)
        norms = engine.self_influence(loader).double()
        self.total = norms if self.total is None else self.total + norms
        return self.total


class _Plans(pl.Callback):
    """Records the keep-mask whenever it changes (at the start of an epoch)."""

    def __init__(self) -> None:
        self.masks: list[tuple[int, Tensor]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        keep = trainer.datamodule.keep_mask
        if keep is None:
            return
        if not self.masks or not torch.equal(self.masks[-1][1], keep):
            self.masks.append((trainer.current_epoch, keep.clone()))


def _precision_recall(dropped: Tensor, flipped: Tensor) -> tuple[float, float]:
    hits = int((dropped & flipped).sum())
    return hits / max(int(dropped.sum()), 1), hits / max(int(flipped.sum()), 1)


def _eigen_summary(event: ScoringEvent) -> dict[str, Any]:
    lam = event.eigenvalues
    rel = event.residuals / lam.abs() if event.residuals is not None else None
    return {
        "epoch": event.epoch + 1,  # scored at the end of this (1-based) epoch
        "top_eigenvalues": [round(v, 4) for v in lam[:5].tolist()],
        "negative": int((lam < 0).sum()),
        "max_rel_residual": None if rel is None else float(rel.max()),
        "max_rel_residual_top10": None if rel is None else float(rel[:10].max()),
    }


def run_arm(task: dict[str, Any]) -> dict[str, Any]:
    """Train one (setting, seed, arm, drop fraction); returns its row."""
    args = task["args"]
    set_threads(args["threads"])
    setting, seed, arm, fraction = task["setting"], task["seed"], task["arm"], task["drop"]
    data = load_setting(setting, seed)
    flipped = data.flipped
    pl.seed_everything(seed, verbose=False)
    inner = DigitsData(data, clean=arm == "clean", batch_size=args["batch_size"])
    pruned = arm in PRUNED_ARMS
    dm = InfluenceDataModule(
        inner,
        mode="drop",
        fraction=fraction if pruned else 0.0,
        combine=IF_ARMS.get(arm, "latest"),
        labels=lambda ds: ds.tensors[1],
        seed=seed,
    )
    every = args["score_every"]
    plans = _Plans()
    callbacks: list[pl.Callback] = [plans]
    influence = scorer = None
    if arm in IF_ARMS:
        influence = InfluenceCallback(
            cross_entropy_loss,
            every_n_epochs=every,
            at_train_end=False,
            n_iters=args["n_iters"],
            top_k=args["top_k"],
            hvp_samples=args["hvp_samples"],
            seed=seed,
        )
        callbacks.append(influence)
    elif arm == "loss":
        scorer = LossScores(every, feed=True)
    elif arm == "loss mean":
        scorer = MeanLossScores(every)
    elif arm == "TracIn":
        scorer = TracInScores(every)
    if scorer is not None:
        callbacks.append(scorer)
    root = tempfile.mkdtemp(prefix="run-", dir=task["tmp"])
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args["epochs"],
        callbacks=callbacks,
        logger=False,
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = DigitsCNN(lr=args["lr"])
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    accuracy = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test/accuracy"])
    shutil.rmtree(root, ignore_errors=True)
    row: dict[str, Any] = {
        "setting": setting,
        "noise": SETTINGS[setting][1],
        "drop": fraction if pruned else None,
        "seed": seed,
        "arm": arm,
        "accuracy": accuracy,
        "wall_s": round(seconds, 1),
        "cpu_s": round(cpu_seconds, 1),
        "flipped": int(flipped.sum()),
    }
    if pruned:
        row["plans"] = []
        for epoch, keep in plans.masks:
            p, r = _precision_recall(~keep, flipped)
            row["plans"].append(
                {
                    "from_epoch": epoch + 1,
                    "dropped": int((~keep).sum()),
                    "precision": p,
                    "recall": r,
                }
            )
        if plans.masks:
            row["dropped"] = row["plans"][-1]["dropped"]
            row["precision"] = row["plans"][-1]["precision"]
            row["recall"] = row["plans"][-1]["recall"]
            row["precision_first"] = row["plans"][0]["precision"]
    if influence is not None:
        row["events"] = [_eigen_summary(e) for e in influence.events]
    print(
        f"  {setting} seed {seed} {arm:<18} drop {fraction if pruned else '-'}: "
        f"accuracy {accuracy:.4f}, precision {row.get('precision', float('nan')):.3f} "
        f"({seconds:.0f} s)",
        flush=True,
    )
    return row


def _quiet() -> None:
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*smaller than the logging interval.*",
        ".*LeafSpec.*",
    ):
        warnings.filterwarnings("ignore", pattern)


def _tasks(args: argparse.Namespace, tmp: str) -> list[dict[str, Any]]:
    shared = {
        k: getattr(args, k)
        for k in (
            "epochs",
            "score_every",
            "n_iters",
            "top_k",
            "hvp_samples",
            "batch_size",
            "lr",
            "threads",
        )
    }
    tasks = []
    for seed in args.seeds:
        # clean labels do not depend on the noise setting: one clean run per seed
        tasks.append(dict(setting=args.settings[0], seed=seed, arm="clean", drop=None))
        for setting in args.settings:
            tasks.append(dict(setting=setting, seed=seed, arm="noisy", drop=None))
            for fraction in SETTINGS[setting][2]:
                for arm in PRUNED_ARMS:
                    tasks.append(dict(setting=setting, seed=seed, arm=arm, drop=fraction))
    for t in tasks:
        t.update(args=shared, tmp=tmp)
    return tasks


def _summary(rows: list[dict[str, Any]], args: argparse.Namespace) -> tuple[list, list, list]:
    """Per-seed rows (with the recovered share), summary rows and the verdict lines."""
    clean = {r["seed"]: r["accuracy"] for r in rows if r["arm"] == "clean"}
    noisy = {(r["setting"], r["seed"]): r["accuracy"] for r in rows if r["arm"] == "noisy"}
    per_seed, summary, verdict = [], [], []
    for setting in args.settings:
        for fraction in SETTINGS[setting][2]:
            cell: dict[str, list[dict[str, Any]]] = {}
            for seed in args.seeds:
                base_clean, base_noisy = clean[seed], noisy[setting, seed]
                lost = base_clean - base_noisy
                for arm in ARMS:
                    if arm == "clean":
                        src = {"accuracy": base_clean}
                    elif arm == "noisy":
                        src = {"accuracy": base_noisy}
                    else:
                        src = next(
                            r
                            for r in rows
                            if (r["setting"], r["seed"], r["arm"], r["drop"])
                            == (setting, seed, arm, fraction)
                        )
                    row = {
                        "setting": setting,
                        "drop": fraction,
                        "seed": seed,
                        "arm": arm,
                        "accuracy": src["accuracy"],
                        "recovered": (src["accuracy"] - base_noisy) / lost if lost > 0 else None,
                        "precision": src.get("precision"),
                        "recall": src.get("recall"),
                        "precision_first": src.get("precision_first"),
                    }
                    per_seed.append(row)
                    cell.setdefault(arm, []).append(row)
            means = {}
            for arm, items in cell.items():

                def mean(key: str, items=items) -> float | None:
                    vals = [i[key] for i in items if i[key] is not None]
                    return statistics.mean(vals) if vals else None

                means[arm] = {k: mean(k) for k in ("accuracy", "recovered", "precision")}
                summary.append(
                    {
                        "setting": setting,
                        "drop": fraction,
                        "arm": arm,
                        "accuracy": means[arm]["accuracy"],
                        "min_accuracy": min(i["accuracy"] for i in items),
                        "max_accuracy": max(i["accuracy"] for i in items),
                        "recovered": means[arm]["recovered"],
                        "precision": means[arm]["precision"],
                        "precision_first": mean("precision_first"),
                    }
                )
            best = max(PRUNED_ARMS, key=lambda a: means[a]["accuracy"])
            default = means["IF latest"]["accuracy"]
            beats = default > means["loss"]["accuracy"] and default > means["loss mean"]["accuracy"]
            seeds_beat = sum(
                cell["IF latest"][i]["accuracy"]
                > max(cell["loss"][i]["accuracy"], cell["loss mean"][i]["accuracy"])
                for i in range(len(args.seeds))
            )
            verdict.append(
                {
                    "setting": setting,
                    "drop": fraction,
                    "best_arm": best,
                    "best_accuracy": means[best]["accuracy"],
                    "default_accuracy": default,
                    "loss_accuracy": means["loss"]["accuracy"],
                    "loss_mean_accuracy": means["loss mean"]["accuracy"],
                    "default_beats_both_losses": beats,
                    "seeds_default_beats_both": f"{seeds_beat}/{len(args.seeds)}",
                }
            )
    return per_seed, summary, verdict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny run: 1 seed, 6 epochs, uniform20"
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for pruning.md / .json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--score-every", type=int, default=10)
    parser.add_argument("--n-iters", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--hvp-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--workers", type=int, default=1, help="training processes at once")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.settings = args.seeds[:1], ["uniform20"]
        args.epochs, args.score_every = 6, 2
        args.n_iters, args.top_k, args.hvp_samples = 20, 10, 256
    set_threads(args.threads)
    _quiet()

    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="pruning-tmp-", dir=args.out)
    wall = time.perf_counter()
    try:
        tasks = _tasks(args, tmp)
        print(f"{len(tasks)} training runs, {args.workers} at a time", flush=True)
        if args.workers > 1:
            with multiprocessing.get_context("fork").Pool(args.workers) as pool:
                rows = pool.map(run_arm, tasks, chunksize=1)
        else:
            rows = [run_arm(t) for t in tasks]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - wall
    per_seed, summary, verdict = _summary(rows, args)

    name = "pruning_quick" if args.quick else "pruning"
    md = [
        "# Pruning that beats the loss? (issue 11)",
        "",
        f"Digits CNN (`DigitsCNN`, 11,274 parameters), {args.epochs} epochs, Adam {args.lr}, "
        f"batch {args.batch_size}; scores at the end of every {args.score_every}th epoch "
        f"(Arnoldi n={args.n_iters}, p={args.top_k}, HVP sample {args.hvp_samples}); each new "
        "score drops the top `drop` of the training set from the next epoch. Seeds "
        f"{args.seeds}; {len(rows)} training runs in {wall / 60:.1f} min wall "
        f"({args.workers} at a time). Asymmetric pairs: 1<->7, 3<->8, 5<->6, 4<->9.",
        "",
        "`accuracy`: clean test accuracy (540 digits), mean over seeds (min-max beside); "
        "`recovered`: mean share of the accuracy lost to noise that pruning won back; "
        "`precision`: of the final dropped set against the flipped labels (`first`: the dropped "
        "set after the first score).",
        "",
        "## Summary (mean over seeds)",
        "",
    ]
    for row in summary:
        row["range"] = f"{row['min_accuracy']:.3f}-{row['max_accuracy']:.3f}"
    md.append(
        markdown_table(
            summary,
            [
                "setting",
                "drop",
                "arm",
                "accuracy",
                "range",
                "recovered",
                "precision",
                "precision_first",
            ],
        )
    )
    md += ["", "## Verdict per setting", ""]
    md.append(
        markdown_table(
            verdict,
            [
                "setting",
                "drop",
                "best_arm",
                "best_accuracy",
                "default_accuracy",
                "loss_accuracy",
                "loss_mean_accuracy",
                "default_beats_both_losses",
                "seeds_default_beats_both",
            ],
        )
    )
    n_beats = sum(v["default_beats_both_losses"] for v in verdict)
    md += [
        "",
        f"The default (`IF latest`) beats both loss baselines on mean accuracy in {n_beats} of "
        f"{len(verdict)} settings.",
        "",
        "## Per seed",
        "",
        markdown_table(
            per_seed,
            [
                "setting",
                "drop",
                "seed",
                "arm",
                "accuracy",
                "recovered",
                "precision",
                "recall",
                "precision_first",
            ],
        ),
        "",
        "## Convergence of the Arnoldi fits (IF arms)",
        "",
    ]
    conv = []
    for r in rows:
        for e in r.get("events", []):
            conv.append(
                {
                    "setting": r["setting"],
                    "drop": r["drop"],
                    "seed": r["seed"],
                    "arm": r["arm"],
                    "epoch": e["epoch"],
                    "top eigenvalues": ", ".join(f"{v:.4g}" for v in e["top_eigenvalues"][:3]),
                    "negative": e["negative"],
                    "max rel. residual": e["max_rel_residual"],
                    "max rel. residual (top 10)": e["max_rel_residual_top10"],
                }
            )
    md.append(
        markdown_table(
            conv,
            [
                "setting",
                "drop",
                "seed",
                "arm",
                "epoch",
                "top eigenvalues",
                "negative",
                "max rel. residual",
                "max rel. residual (top 10)",
            ],
        )
    )
    payload = {
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "pairs": PAIRS,
        "settings": {k: {"kind": v[0], "noise": v[1], "drops": v[2]} for k, v in SETTINGS.items()},
        "wall_s": round(wall, 1),
        "summary": summary,
        "verdict": verdict,
        "per_seed": per_seed,
        "runs": rows,
    }
    write_results(args.out, name, "\n".join(md), payload)


if __name__ == "__main__":
    main()
