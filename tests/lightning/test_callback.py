"""InfluenceCallback through real Trainer runs on CPU (tiny model, tiny data)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_influence import ArnoldiInfluence, InfluenceCallback
from lightning_influence.io.events import read_event
from lightning_influence.lightning.analysis import hvp_indices
from lightning_influence.losses import cross_entropy_loss

N, D, C = 40, 6, 3
# Arnoldi with a fixed number of products (restart_tol=None), as the engines' default, so that
# events compare with the engine to rounding; the analysis default (thick restart) is tested apart.
FAST = {"n_iters": 12, "top_k": 5, "hvp_samples": 24, "progress": False, "restart_tol": None}


class TinyData(Dataset):
    """Fixed random inputs; labels from a linear rule with a few flipped."""

    def __init__(self, n: int = N, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, D, generator=g)
        self.y = (self.x @ torch.randn(D, C, generator=g)).argmax(1)
        self.y[:3] = (self.y[:3] + 1) % C

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class TinyModule(pl.LightningModule):
    """BatchNorm, dropout, a frozen layer (parameters and buffers that are not analysed)."""

    def __init__(self, dropout: float = 0.2, lr: float = 0.1) -> None:
        super().__init__()
        self.frozen = nn.Linear(D, D)
        self.frozen.requires_grad_(False)
        self.net = nn.Sequential(
            nn.Linear(D, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, C)
        )
        self.lr = lr

    def forward(self, x):
        return self.net(self.frozen(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class MethodLossModule(TinyModule):
    def influence_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="none")


def nan_loss(model, batch):
    return cross_entropy_loss(model, batch) * float("nan")


def trainer_for(tmp_path: Path, callbacks, max_epochs: int = 2, **kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", CSVLogger(tmp_path, name="logs", version=0))
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def loader(shuffle: bool = True, data: Dataset | None = None) -> DataLoader:
    return DataLoader(data or TinyData(), batch_size=8, shuffle=shuffle)


def fit(tmp_path, callback=None, max_epochs=2, seed=0, model=None, **kwargs):
    pl.seed_everything(seed, verbose=False)
    model = (model or TinyModule)() if model is None or isinstance(model, type) else model
    callbacks = kwargs.pop("callbacks", None) or ([callback] if callback is not None else [])
    trainer = trainer_for(tmp_path, callbacks, max_epochs=max_epochs, **kwargs)
    trainer.fit(model, train_dataloaders=kwargs.pop("dl", None) or loader())
    return trainer, model


# -- construction ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_iters": 10, "top_k": 20}, ValueError, "top_k=20 exceeds n_iters=10"),
        ({"every_n_epochs": -1}, ValueError, "every_n_epochs=-1"),
        ({"hvp_samples": 0}, ValueError, "hvp_samples=0"),
        ({"on_error": "ignore"}, ValueError, "on_error='ignore'"),
        ({"eigenvalue_policy": "inverse"}, ValueError, "eigenvalue_policy='inverse'"),
        ({"projection": "fast"}, ValueError, "projection='fast'"),
        ({"n_iter": 10}, TypeError, "unexpected keyword argument 'n_iter'.*AnalysisConfig"),
        ({"loss_fn": "cross_entropy"}, TypeError, "not callable"),
    ],
)
def test_constructor_validates_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        InfluenceCallback(**kwargs)


def test_missing_loss_fails_at_setup_with_the_fix(tmp_path):
    trainer = trainer_for(tmp_path, [InfluenceCallback(**FAST)])
    with pytest.raises(MisconfigurationException, match=r"def influence_loss\(self, batch\)"):
        trainer.fit(TinyModule(), train_dataloaders=loader())


def test_bad_params_selection_fails_at_setup(tmp_path):
    trainer = trainer_for(
        tmp_path, [InfluenceCallback(cross_entropy_loss, params=["nope"], **FAST)]
    )
    with pytest.raises(MisconfigurationException, match="'nope' matches no parameter"):
        trainer.fit(TinyModule(), train_dataloaders=loader())


# -- a fit with the callback -------------------------------------------------------------------
def test_fit_scores_every_epoch_and_writes_events(tmp_path):
    callback = InfluenceCallback(cross_entropy_loss, **FAST)
    trainer, model = fit(tmp_path, callback, max_epochs=3)

    steps_per_epoch = math.ceil(N / 8)
    assert [(e.epoch, e.global_step) for e in callback.events] == [
        (0, steps_per_epoch),
        (1, 2 * steps_per_epoch),
        (2, 3 * steps_per_epoch),
    ]  # the train-end analysis is skipped: the last epoch end saw the final weights
    root = Path(trainer.log_dir) / "influence" / callback.name
    assert sorted(p.name for p in root.iterdir()) == [e.name for e in callback.events]
    event = callback.latest_event
    assert event is callback.events[-1]
    assert event.self_influence.dtype == torch.float64 and event.self_influence.shape == (N,)
    assert bool((event.self_influence >= 0).all())  # 'abs' policy: a PSD form
    assert event.eigenvalues.shape == (5,)
    assert bool((event.eigenvalues.abs().diff() <= 0).all())
    assert Path(event.directory) == root / event.name

    on_disk = read_event(event.directory)
    torch.testing.assert_close(on_disk.self_influence, event.self_influence)
    manifest = json.loads((Path(event.directory) / "manifest.json").read_text())
    assert manifest["epoch"] == 2 and manifest["global_step"] == 3 * steps_per_epoch
    assert manifest["trigger"] == "epoch_end"
    assert manifest["arguments"]["n_iters"] == 12 and manifest["arguments"]["hvp_samples"] == 24
    assert manifest["arguments"]["loss_fn"] == "lightning_influence.losses.cross_entropy_loss"
    assert manifest["num_examples"] == N and manifest["hvp_examples"] == 24
    assert manifest["num_params"] == D * 8 + 8 + 8 + 8 + 8 * C + C  # frozen layer left out
    assert set(manifest["timings"]) == {
        "fit_seconds", "hvp_seconds", "validation_seconds", "scoring_seconds", "writing_seconds",
        "total_seconds",
    }  # fmt: skip
    # the cost in training epochs of the epoch the analysis followed
    assert manifest["epoch_seconds"] > 0
    assert manifest["cost_epochs"] == pytest.approx(
        manifest["timings"]["total_seconds"] / manifest["epoch_seconds"]
    )
    assert {"torch", "pytorch_lightning", "lightning_influence"} <= set(manifest["versions"])

    frame = callback.latest_scores_frame()
    # no validation set and no InfluenceDataModule: self-influence and the loss only
    assert frame.index.name == "index" and list(frame.columns) == ["self_influence", "loss"]
    torch.testing.assert_close(
        torch.tensor(frame["self_influence"].to_numpy()), event.self_influence
    )
    assert callback.latest_scores() is event.self_influence

    # scores are keyed by dataset index (the train loader shuffles): compare with the engine
    engine = ArnoldiInfluence(model, cross_entropy_loss, n_iters=12, top_k=5, progress=False)
    hvp = Subset(
        TinyData(), hvp_indices(N, callback.config.hvp_samples, callback.config.seed).tolist()
    )
    engine.fit(DataLoader(hvp, batch_size=8))
    torch.testing.assert_close(engine.eigenvalues, event.eigenvalues, rtol=1e-5, atol=0)
    expected = engine.self_influence(loader(shuffle=False)).double()
    torch.testing.assert_close(expected, event.self_influence, rtol=1e-4, atol=1e-7)

    # the metrics reached the logger
    metrics = (Path(trainer.log_dir) / "metrics.csv").read_text()
    assert "influence/eigenvalue_0" in metrics and "influence/scoring_seconds" in metrics


def test_every_n_epochs_and_train_end(tmp_path):
    callback = InfluenceCallback(cross_entropy_loss, every_n_epochs=2, **FAST)
    trainer, _ = fit(tmp_path, callback, max_epochs=3)
    spe = math.ceil(N / 8)
    assert [(e.epoch, e.global_step) for e in callback.events] == [(1, 2 * spe), (2, 3 * spe)]
    assert [e.manifest["trigger"] for e in callback.events] == ["epoch_end", "train_end"]
    root = Path(trainer.log_dir) / "influence" / callback.name
    assert sorted(p.name for p in root.iterdir()) == [
        f"epoch=1-step={2 * spe}",
        f"epoch=2-step={3 * spe}",
    ]
    for folder in root.iterdir():
        assert (folder / "manifest.json").is_file()
        assert sorted(p.name for p in folder.iterdir()) == [
            "eigenpairs.safetensors",
            "eigenvalues.csv",
            "manifest.json",
            "signals.csv",
        ]


def test_only_at_train_end_and_on_demand(tmp_path):
    callback = InfluenceCallback(
        cross_entropy_loss, every_n_epochs=0, dirpath=tmp_path / "scores", max_events=1, **FAST
    )
    trainer, model = fit(tmp_path, callback, max_epochs=2)
    assert [e.manifest["trigger"] for e in callback.events] == ["train_end"]
    folder = tmp_path / "scores" / callback.name
    assert [p.name for p in folder.iterdir()] == [callback.events[0].name]
    first = callback.latest_event
    again = callback.analyze(trainer, model)
    # the same weights are one state with one name (the epoch of the last batch), whoever asks:
    # the event is reused, never written over (checkpoints refer to it by uid)
    assert again is first and callback.events == [first]
    assert [p.name for p in folder.iterdir()] == [first.name]
    assert read_event(folder / first.name).uid == first.uid


def test_influence_loss_method_is_used(tmp_path):
    callback = InfluenceCallback(**FAST)
    fit(tmp_path, callback, max_epochs=1, model=MethodLossModule())
    assert len(callback.events) == 1
    assert callback.latest_event.manifest["arguments"]["loss_fn"] == "influence_loss"


class NoisyAugment(TinyModule):
    """A random augmentation in a batch hook: the analysis draws from the global RNG too."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return x + 0.01 * torch.randn_like(x), y


@pytest.mark.parametrize("module", [TinyModule, NoisyAugment])
def test_training_is_unchanged_by_the_callback(tmp_path, module):
    """Same seed, with and without the callback: bitwise the same weights, buffers and optimizer."""
    callback = InfluenceCallback(cross_entropy_loss, **FAST)
    with_cb, model_a = fit(tmp_path / "a", callback, max_epochs=3, model=module)
    without, model_b = fit(tmp_path / "b", None, max_epochs=3, model=module)
    assert len(callback.events) == 3
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert model_a.training == model_b.training
    opt_a = with_cb.optimizers[0].state_dict()["state"]
    opt_b = without.optimizers[0].state_dict()["state"]
    for key in opt_a:
        assert torch.equal(opt_a[key]["momentum_buffer"], opt_b[key]["momentum_buffer"])


def test_submodule_modes_are_restored(tmp_path):
    class Probe(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            self.modes = [m.training for m in pl_module.modules()]

    model = TinyModule()
    model.net[1].eval()  # a user keeps BatchNorm frozen in eval mode
    probe = Probe()
    callback = InfluenceCallback(cross_entropy_loss, **FAST)
    pl.seed_everything(0, verbose=False)
    trainer_for(tmp_path, [callback, probe], max_epochs=1).fit(model, train_dataloaders=loader())
    # modules(): self, frozen, net, net.0, net.1 (BatchNorm), net.2, net.3, net.4
    assert probe.modes == [True, True, True, True, False, True, True, True]


# -- failures ----------------------------------------------------------------------------------
def test_non_finite_loss_warns_with_epoch_and_step_and_training_continues(tmp_path):
    callback = InfluenceCallback(nan_loss, **FAST)
    with pytest.warns(RuntimeWarning, match=r"epoch=0, step=5 failed: .*NaN or Inf"):
        trainer, _ = fit(tmp_path, callback, max_epochs=2)
    assert callback.events == [] and trainer.current_epoch == 2


def test_non_finite_loss_raises_with_on_error_raise(tmp_path):
    callback = InfluenceCallback(nan_loss, on_error="raise", **FAST)
    with pytest.raises(FloatingPointError, match=r"epoch=0, step=5"):
        fit(tmp_path, callback, max_epochs=2)


# -- Lightning plumbing ------------------------------------------------------------------------
class HookedModule(TinyModule):
    """Batches arrive as dicts; only the module's batch-transfer hooks make them (x, y)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"before": 0, "transfer": 0, "after": 0}

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.calls["before"] += 1
        return batch["x"], batch["y"]

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        self.calls["transfer"] += 1
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.calls["after"] += 1
        x, y = batch
        return x * 1.0, y


class DictData(TinyData):
    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def test_batch_transfer_hooks_are_honoured(tmp_path):
    model = HookedModule()
    callback = InfluenceCallback(cross_entropy_loss, **FAST)
    pl.seed_everything(0, verbose=False)
    trainer = trainer_for(tmp_path, [callback], max_epochs=1)
    trainer.fit(model, train_dataloaders=DataLoader(DictData(), batch_size=8))
    training_batches = math.ceil(N / 8)
    scoring = callback.latest_event.manifest["scoring_batch_size"]  # raised when memory allows
    analysis_batches = math.ceil(24 / 8) + math.ceil(N / scoring)  # HVP sample + scoring
    assert model.calls["before"] >= training_batches + analysis_batches
    assert model.calls["before"] == model.calls["transfer"] == model.calls["after"]
    assert callback.latest_event.self_influence.shape == (N,)


def test_resume_from_a_mid_run_checkpoint(tmp_path):
    # no dropout and no shuffling: the resumed run retraces the uninterrupted one exactly
    def run(root, ckpt_path=None):
        callback = InfluenceCallback(cross_entropy_loss, **FAST)
        checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
        pl.seed_everything(0, verbose=False)
        trainer = trainer_for(root, [callback, checkpoint], max_epochs=3, enable_checkpointing=True)
        trainer.fit(TinyModule(dropout=0.0), train_dataloaders=loader(False), ckpt_path=ckpt_path)
        return callback, trainer

    full, _ = run(tmp_path / "full")
    mid = sorted((tmp_path / "full" / "ckpt").glob("epoch=0-*.ckpt"))[0]
    saved = torch.load(mid, weights_only=False)["callbacks"][full.state_key]
    # the checkpoint references the event's folder (the source of truth), no [N] tensors
    assert [e["ref"]["epoch"] for e in saved["events"]] == [0]
    assert saved["events"][0]["ref"]["directory"] == full.events[0].directory
    assert saved["kind"] == "lightning_influence.InfluenceCallback"

    resumed, trainer = run(tmp_path / "resumed", ckpt_path=mid)
    assert [(e.epoch, e.global_step) for e in resumed.events] == [
        (e.epoch, e.global_step) for e in full.events
    ]
    torch.testing.assert_close(resumed.events[0].self_influence, full.events[0].self_influence)
    for a, b in zip(resumed.events[1:], full.events[1:], strict=True):
        torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=1e-5, atol=0)
        torch.testing.assert_close(a.self_influence, b.self_influence, rtol=1e-4, atol=1e-7)
    assert (Path(trainer.log_dir) / "influence" / resumed.name / resumed.latest_event.name).is_dir()


def test_analyze_checkpoint_writes_the_same_event(tmp_path):
    # a checkpoint is analysed from a cold start: so is the run's here (a warm start agrees with
    # it to about restart_tol squared, not to rounding)
    callback = InfluenceCallback(cross_entropy_loss, warm_start=False, **FAST)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints", save_top_k=-1)
    pl.seed_everything(0, verbose=False)
    trainer = trainer_for(tmp_path, [callback, checkpoint], max_epochs=2, enable_checkpointing=True)
    trainer.fit(TinyModule(), train_dataloaders=loader())
    path = sorted((tmp_path / "run" / "checkpoints").glob("epoch=1-*.ckpt"))[0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        event = InfluenceCallback.analyze_checkpoint(
            path, TinyModule, loader(), loss_fn=cross_entropy_loss, device="cpu", **FAST
        )
    assert (event.epoch, event.global_step) == (1, callback.latest_event.global_step)
    assert Path(event.directory) == tmp_path / "run" / "influence" / callback.name / event.name
    assert (Path(event.directory) / "manifest.json").is_file()
    assert event.manifest["trigger"] == "checkpoint"
    torch.testing.assert_close(
        event.eigenvalues, callback.latest_event.eigenvalues, rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        event.self_influence, callback.latest_event.self_influence, rtol=1e-4, atol=1e-7
    )

    instance = TinyModule()
    again = InfluenceCallback.analyze_checkpoint(
        path, instance, loader(), dirpath=tmp_path / "other", loss_fn=cross_entropy_loss, **FAST
    )
    torch.testing.assert_close(again.eigenvalues, event.eigenvalues)
    assert Path(again.directory).parent == tmp_path / "other" / callback.name


def test_state_dict_round_trip():
    callback = InfluenceCallback(cross_entropy_loss, **FAST)
    assert callback.state_dict()["events"] == []
    other = InfluenceCallback(cross_entropy_loss, **FAST)
    assert other.state_key == callback.state_key
    assert callback.name in callback.state_key
    # every argument names the analysis: callbacks differing in one never share folder or key
    assert (
        InfluenceCallback(cross_entropy_loss, params=["0"], **FAST).state_key != callback.state_key
    )
    assert InfluenceCallback(cross_entropy_loss, every_n_epochs=3, **FAST).name == callback.name
    with pytest.raises(RuntimeError, match="no scores yet"):
        callback.latest_scores()


# -- distributed -------------------------------------------------------------------------------
class RecordRanks(pl.Callback):
    """Saves every rank's view of the influence callback's events (ddp_spawn keeps them in the
    worker processes)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        influence = next(c for c in trainer.callbacks if isinstance(c, InfluenceCallback))
        torch.save(
            [e.state_dict() for e in influence.events],
            Path(self.folder) / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("restart_tol", [None, 1e-3], ids=["arnoldi", "thick-restart"])
def test_ddp_matches_one_process(tmp_path, restart_tol):
    """Two gloo processes: every rank holds the same events, equal to a one-process analysis of
    the same weights (BatchNorm buffers from global zero), and global zero writes the files."""
    # cold fits: DDP's summed products differ from one process' in rounding, which a warm
    # start's convergence test can turn into one product more or less
    kwargs = {**FAST, "hvp_samples": 25, "restart_tol": restart_tol, "warm_start": False}
    callback = InfluenceCallback(cross_entropy_loss, **kwargs)
    pl.seed_everything(0, verbose=False)
    model = TinyModule()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        callbacks=[callback, RecordRanks(str(tmp_path))],
        logger=CSVLogger(tmp_path, name="logs", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = TinyData(n=N + 1)  # odd: the scoring shards need padding
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=8, shuffle=True))

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [e["epoch"] for e in ranks[0]] == [0, 1]
    for a, b in zip(ranks[0], ranks[1], strict=True):
        assert torch.equal(a["eigenvalues"], b["eigenvalues"])
        assert torch.equal(a["signals"]["self_influence"], b["signals"]["self_influence"])
        assert a["manifest"]["world_size"] == 2
    final = ranks[0][-1]
    assert final["signals"]["self_influence"].shape == (N + 1,)
    (analysis,) = (tmp_path / "logs" / "version_0" / "influence").iterdir()
    folders = sorted(p.name for p in analysis.iterdir())
    assert folders == [f"epoch={e['epoch']}-step={e['global_step']}" for e in ranks[0]]

    # one process, same weights (ddp_spawn hands rank 0's final state back to this process)
    engine = ArnoldiInfluence(
        model, cross_entropy_loss, n_iters=12, top_k=5, restart_tol=restart_tol, progress=False
    )
    hvp = Subset(
        data, hvp_indices(N + 1, callback.config.hvp_samples, callback.config.seed).tolist()
    )
    engine.fit(DataLoader(hvp, batch_size=8))
    if restart_tol is not None:  # P = 99 against a basis of 12: the restarts are exercised
        assert engine.fit_stats["restarts"] > 0 and engine.fit_stats["converged"] == 5
    torch.testing.assert_close(engine.eigenvalues, final["eigenvalues"], rtol=1e-5, atol=0)
    scores = engine.self_influence(DataLoader(data, batch_size=8)).double()
    torch.testing.assert_close(scores, final["signals"]["self_influence"], rtol=1e-4, atol=1e-7)


# -- contexts ----------------------------------------------------------------------------------
def exploding_hessian_loss(model, batch):
    """Finite losses whose Hessian is not: d^2/db^2 sqrt(|b - b0|) is infinite at b = b0."""
    bias = model.net[4].bias
    return cross_entropy_loss(model, batch) + (bias - bias.detach()).abs().sqrt().sum()


def test_non_finite_hvp_is_reported_with_epoch_and_step(tmp_path):
    callback = InfluenceCallback(exploding_hessian_loss, on_error="raise", **FAST)
    with pytest.raises(FloatingPointError, match=r"epoch=0, step=5 failed: Hessian-vector product"):
        fit(tmp_path, callback, max_epochs=1)


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_hvps_run_in_float32_whatever_the_precision(tmp_path, precision):
    callback = InfluenceCallback(cross_entropy_loss, **FAST)
    fit(tmp_path, callback, max_epochs=1, precision=precision)
    manifest = callback.latest_event.manifest
    assert manifest["compute_dtype"] == "float32" and manifest["precision"] == precision
    assert bool(torch.isfinite(callback.latest_event.eigenvalues).all())


class AnalyzeInValidation(pl.Callback):
    """On-demand analysis from a validation hook: Lightning runs it under ``no_grad`` in fit and
    under ``inference_mode`` in ``trainer.validate``."""

    def __init__(self) -> None:
        self.events, self.modes = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.sanity_checking or batch_idx:
            return
        self.modes.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        influence = next(c for c in trainer.callbacks if isinstance(c, InfluenceCallback))
        self.events.append(influence.analyze(trainer, pl_module, dataloader=loader(False)))


class WithValidation(TinyModule):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def test_on_demand_analysis_under_no_grad_and_inference_mode(tmp_path):
    callback = InfluenceCallback(
        cross_entropy_loss, every_n_epochs=0, at_train_end=False, on_error="raise", **FAST
    )
    probe = AnalyzeInValidation()
    pl.seed_everything(0, verbose=False)
    trainer = trainer_for(tmp_path, [callback, probe], max_epochs=1)
    model = WithValidation()
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=loader(False))
    trainer.validate(model, dataloaders=loader(False), verbose=False)
    assert probe.modes == [(False, False), (False, True)]
    # the same weights twice: one event, computed under no_grad, reused under inference_mode
    (event,) = callback.events
    assert probe.events == [event, event] and event.manifest["trigger"] == "manual"
    assert not torch.is_inference(event.self_influence)


@pytest.mark.parametrize("enable_progress_bar", [False, True])
def test_progress_bars_follow_the_trainer(tmp_path, capfd, enable_progress_bar):
    callback = InfluenceCallback(cross_entropy_loss, **{**FAST, "progress": None})
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=enable_progress_bar,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyModule(), train_dataloaders=loader())
    assert ("Arnoldi" in capfd.readouterr().err) is enable_progress_bar


def nan_loss_on_rank_one(model, batch):
    losses = cross_entropy_loss(model, batch)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
        return losses * float("nan")
    return losses


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_failure_on_one_rank_is_skipped_on_all(tmp_path):
    """A non-finite loss on one rank only: every rank skips the analysis (no hang), training ends."""
    callback = InfluenceCallback(nan_loss_on_rank_one, **FAST)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        callbacks=[callback, RecordRanks(str(tmp_path))],
        logger=CSVLogger(tmp_path, name="logs", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyModule(), train_dataloaders=DataLoader(TinyData(), batch_size=8))
    assert [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)] == [[], []]
    assert not (tmp_path / "logs" / "version_0" / "influence").exists()


# -- identity and naming of events (issue 10's bugs) -------------------------------------------------
def test_two_callbacks_keep_their_own_folders_and_state(tmp_path):
    # Bug: two callbacks with other arguments wrote into one epoch=E-step=S folder, and two that
    # differed only in params made the Trainer refuse a duplicate state_key.
    every = InfluenceCallback(cross_entropy_loss, **FAST)
    last = InfluenceCallback(cross_entropy_loss, params=["net.4"], **FAST)
    assert every.name != last.name and every.state_key != last.state_key
    trainer, _ = fit(tmp_path, None, max_epochs=1, callbacks=[every, last])
    root = Path(trainer.log_dir) / "influence"
    assert sorted(p.name for p in root.iterdir()) == sorted([every.name, last.name])
    assert every.latest_event.manifest["num_params"] > last.latest_event.manifest["num_params"]
    for callback in (every, last):
        on_disk = read_event(root / callback.name / callback.latest_event.name)
        assert on_disk.uid == callback.latest_event.uid
        assert on_disk.manifest["arguments"]["params"] == callback.config.params


def test_a_max_steps_stop_names_one_state_once(tmp_path):
    # Bug: after a max_steps stop mid-epoch, train end named the weights epoch=1-step=7 and
    # analyze() epoch=2-step=7: two folders for one state.
    callback = InfluenceCallback(cross_entropy_loss, every_n_epochs=0, **FAST)
    trainer, model = fit(tmp_path, callback, max_epochs=5, max_steps=7)  # 5 batches an epoch
    assert trainer.global_step == 7
    assert [e.name for e in callback.events] == ["epoch=1-step=7"]
    again = callback.analyze(trainer, model)
    assert again.name == "epoch=1-step=7"
    root = Path(trainer.log_dir) / "influence" / callback.name
    assert [p.name for p in root.iterdir()] == ["epoch=1-step=7"]


def test_fast_dev_run_writes_nothing(tmp_path):
    callback = InfluenceCallback(cross_entropy_loss, **FAST)
    fit(tmp_path, callback, max_epochs=2, fast_dev_run=True, logger=False)
    assert callback.events == []
    assert not list(tmp_path.rglob("signals.csv"))


def test_state_version_is_checked():
    callback = InfluenceCallback(cross_entropy_loss, **FAST)
    state = callback.state_dict()
    assert state["version"] == 3 and state["name"] == callback.name
    with pytest.raises(ValueError, match="newer than this lightning-influence"):
        callback.load_state_dict({**state, "version": 99})
    # a version-1 state (no uids, no last position) still loads; its events get uids
    event = {"epoch": 0, "global_step": 5, "self_influence": torch.ones(3),
             "eigenvalues": torch.ones(1), "residuals": None, "directory": None, "manifest": {}}  # fmt: skip
    callback.load_state_dict({"version": 1, "events": [event]})
    assert callback.latest_event.uid and callback.latest_event.global_step == 5


def test_a_config_object_plus_overrides_and_defaults_from_the_config():
    from lightning_influence import AnalysisConfig

    fast = AnalysisConfig.fast(top_k=20)
    assert InfluenceCallback(cross_entropy_loss, fast).config == fast
    callback = InfluenceCallback(cross_entropy_loss, fast, every_n_epochs=3)
    assert callback.config.every_n_epochs == 3 and callback.config.top_k == 20
    assert fast.every_n_epochs == 1  # the caller's config is not changed
    assert InfluenceCallback(cross_entropy_loss).config == AnalysisConfig()
    with pytest.raises(TypeError, match="not an AnalysisConfig"):
        InfluenceCallback(cross_entropy_loss, {"n_iters": 3})


def test_hvp_cache_gives_the_same_event_in_the_same_folder(tmp_path):
    plain = InfluenceCallback(cross_entropy_loss, hvp_cache=False, **FAST)
    cached = InfluenceCallback(cross_entropy_loss, hvp_cache=True, **FAST)
    fit(tmp_path / "plain", plain, max_epochs=1)
    fit(tmp_path / "cached", cached, max_epochs=1)
    # how the products are computed is not part of the analysis' identity, only of its manifest
    assert cached.name == plain.name
    manifest = json.loads((Path(cached.latest_event.directory) / "manifest.json").read_text())
    assert manifest["arguments"]["hvp_cache"] == "on"
    a, b = plain.latest_event, cached.latest_event
    torch.testing.assert_close(b.eigenvalues, a.eigenvalues, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.self_influence, a.self_influence, rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="pass hvp_cache='off', or curvature='hessian'"):
        InfluenceCallback(cross_entropy_loss, hvp_cache=True, curvature="ggn")


# -- mistakes of configuration fail at setup, before any training ------------------------------
class CountingModule(TinyModule):
    steps = 0

    def training_step(self, batch, batch_idx):
        type(self).steps += 1
        return super().training_step(batch, batch_idx)


def test_a_loss_that_returns_a_scalar_fails_before_training(tmp_path):
    def mean_loss(model, batch):  # reduction='mean': one value for the batch
        return cross_entropy_loss(model, batch).mean()

    CountingModule.steps = 0
    callback = InfluenceCallback(mean_loss, **FAST)
    with pytest.raises(MisconfigurationException, match=r"shape \(\) for the first training"):
        fit(tmp_path, callback, model=CountingModule)
    assert CountingModule.steps == 0 and not callback.events


def test_an_unwritable_folder_fails_at_setup(tmp_path):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode: nothing to test
            pytest.skip("this user can write anywhere")
        CountingModule.steps = 0
        callback = InfluenceCallback(cross_entropy_loss, dirpath=locked / "influence", **FAST)
        with pytest.raises(MisconfigurationException, match="cannot write its events"):
            fit(tmp_path, callback, model=CountingModule)
        assert CountingModule.steps == 0
    finally:
        locked.chmod(0o700)


def test_an_unwritable_folder_fails_at_setup_even_for_root(tmp_path):
    # a path through a regular file cannot be created, whoever asks
    blocker = tmp_path / "file"
    blocker.write_text("")
    CountingModule.steps = 0
    callback = InfluenceCallback(cross_entropy_loss, dirpath=blocker / "influence", **FAST)
    with pytest.raises(MisconfigurationException, match="cannot write its events"):
        fit(tmp_path, callback, model=CountingModule)
    assert CountingModule.steps == 0


def test_event_files_get_the_mode_of_the_umask(tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        callback = InfluenceCallback(cross_entropy_loss, **FAST)
        fit(tmp_path, callback, max_epochs=1)
    finally:
        os.umask(previous)
    folder = Path(callback.latest_event.directory)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == dict.fromkeys(modes, 0o644) and "signals.csv" in modes


def test_later_analyses_start_from_the_previous_eigenvectors(tmp_path):
    kwargs = {**FAST, "solver": "lanczos", "restart_tol": 1e-3, "n_iters": 8, "top_k": 3}
    callback = InfluenceCallback(cross_entropy_loss, every_n_epochs=1, at_train_end=False, **kwargs)
    fit(tmp_path, callback, max_epochs=3)
    stats = [e.manifest["fit_stats"] for e in callback.events]
    assert [s["warm_start"] for s in stats] == ["cold", "warm", "warm"]
    cold = InfluenceCallback(
        cross_entropy_loss, every_n_epochs=1, at_train_end=False, warm_start=False, **kwargs
    )
    fit(tmp_path / "cold", cold, max_epochs=3)
    cold_stats = [e.manifest["fit_stats"] for e in cold.events]
    assert [s["warm_start"] for s in cold_stats] == ["cold"] * 3
    # the same weights (training does not depend on the analysis), so the same eigenvalues
    for warm_event, cold_event in zip(callback.events, cold.events, strict=True):
        torch.testing.assert_close(
            warm_event.eigenvalues, cold_event.eigenvalues, rtol=1e-2, atol=0
        )
    assert sum(s["iterations"] for s in stats[1:]) <= sum(s["iterations"] for s in cold_stats[1:])


def test_the_epoch_time_is_the_training_pass_not_another_callbacks_analysis(tmp_path, monkeypatch):
    """Two callbacks: the second's epoch-end hook runs after the first's analysis, which must not
    count as training time (it would understate the second analysis' cost in epochs)."""
    import types

    from lightning_influence.lightning import callback as module

    clock = {"t": 0.0}  # a clock that moves one second per training batch, 100 per analysis
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))
    real_analysis = module.run_analysis

    def slow_analysis(*args, **kwargs):
        clock["t"] += 100.0
        return real_analysis(*args, **kwargs)

    monkeypatch.setattr(module, "run_analysis", slow_analysis)

    class Ticking(TinyModule):
        def training_step(self, batch, batch_idx):
            clock["t"] += 1.0
            return super().training_step(batch, batch_idx)

    first = InfluenceCallback(cross_entropy_loss, name="first", **FAST)
    second = InfluenceCallback(cross_entropy_loss, name="second", **FAST)
    fit(tmp_path, callbacks=[first, second], model=Ticking(dropout=0.0), max_epochs=1)
    batches = math.ceil(N / 8)
    assert [e.manifest["epoch_seconds"] for e in (*first.events, *second.events)] == [
        batches,
        batches,
    ]


# -- the analysis' batch size ------------------------------------------------------------------
def test_scoring_batch_is_raised_where_memory_is_known_and_scores_do_not_change(tmp_path):
    # The train loader's batch is 8; left to the analysis (batch_size=None) scoring uses up to
    # 256 examples a batch once hvp_cache measured the memory per example; the same scores.
    kwargs = {**FAST, "every_n_epochs": 0, "on_error": "raise"}  # hvp_cache="auto" measures
    auto = InfluenceCallback(cross_entropy_loss, dirpath=str(tmp_path / "auto"), **kwargs)
    fit(tmp_path / "a", auto, max_epochs=1)
    fixed = InfluenceCallback(
        cross_entropy_loss, dirpath=str(tmp_path / "fixed"), batch_size=8, **kwargs
    )
    fit(tmp_path / "b", fixed, max_epochs=1)
    a, b = auto.latest_event, fixed.latest_event
    assert a.manifest["scoring_batch_size"] == 256 and b.manifest["scoring_batch_size"] == 8
    assert a.manifest["fit_stats"]["hvp_batches"] == 1  # the 24-example sample, joined
    assert b.manifest["fit_stats"]["hvp_batches"] == 1  # 24 <= 256 examples: joined too
    for name in ("self_influence", "loss"):
        torch.testing.assert_close(a.signals[name], b.signals[name], rtol=1e-5, atol=1e-7)
    # not measured (no cache) or streamed to shards: the train loader's batch
    for extra in ({"hvp_cache": "off"}, {"shard_batches": 2}):
        other = InfluenceCallback(
            cross_entropy_loss, dirpath=str(tmp_path / str(extra)), **{**kwargs, **extra}
        )
        fit(tmp_path / "c", other, max_epochs=1)
        assert other.latest_event.manifest["scoring_batch_size"] == 8
