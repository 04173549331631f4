"""InfluenceDataModule through a real Trainer: drop, reweight, seeding, resume, DDP, hooks, errors.

The first input feature of every example is its dataset index, so a model can record which
examples it was trained on without the batches carrying anything extra. Scores come from the real
``InfluenceCallback``, from a small callback that feeds constructed scoring events (``add_event``)
so a test knows which examples must go, and from files written by ``results.write_event``, as an
earlier run's would be.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler

from lightning_influence import InfluenceCallback, InfluenceDataModule
from lightning_influence.io.events import ScoringEvent, read_event, write_event
from lightning_influence.lightning.sampler import InfluenceSampler

N = 40


def toy_scores(seed: int = 0) -> torch.Tensor:
    return torch.randperm(N, generator=torch.Generator().manual_seed(seed)).double()


def toy_labels() -> torch.Tensor:
    return torch.arange(N) % 4


class ToyData(pl.LightningDataModule):
    """Records every hook Lightning calls on it."""

    def __init__(self, batch_size: int = 8, shuffle: bool = True) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.calls: Counter[str] = Counter()
        self.num_classes = 4
        self.token = "fresh"

    def prepare_data(self) -> None:
        self.calls["prepare_data"] += 1

    def setup(self, stage: str) -> None:
        self.calls[f"setup:{getattr(stage, 'value', stage)}"] += 1
        assert self.trainer is not None  # the wrapper hands its trainer on
        g = torch.Generator().manual_seed(1)
        x = torch.cat(
            [torch.arange(N).double()[:, None], torch.randn(N, 3, generator=g).double()], 1
        )
        self.train = TensorDataset(x.float(), toy_labels())
        self.val = TensorDataset(torch.randn(12, 4), torch.zeros(12, dtype=torch.long))

    def train_dataloader(self) -> DataLoader:
        self.calls["train_dataloader"] += 1
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        self.calls["val_dataloader"] += 1
        return DataLoader(self.val, batch_size=4)

    def test_dataloader(self) -> DataLoader:
        self.calls["test_dataloader"] += 1
        return DataLoader(self.val, batch_size=6)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.calls["on_before_batch_transfer"] += 1
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx):
        self.calls["on_after_batch_transfer"] += 1
        return batch

    def teardown(self, stage: str) -> None:
        self.calls[f"teardown:{getattr(stage, 'value', stage)}"] += 1

    def state_dict(self):
        return {"token": self.token}

    def load_state_dict(self, state_dict) -> None:
        self.token = state_dict["token"]


class Recorder(pl.LightningModule):
    """Records the dataset indices of every training example and counts validation batches."""

    def __init__(self, record_dir: str | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 4)
        self.seen: dict[int, list[int]] = defaultdict(list)
        self.val_batches: Counter[int] = Counter()
        self.test_batches = 0
        self.record_dir = record_dir

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert len(batch) == 2  # no index was added to the batch
        self.seen[self.current_epoch].extend(x[:, 0].long().tolist())
        return F.cross_entropy(self.layer(x[:, 1:]), y)

    def influence_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.layer(x[:, 1:]), y, reduction="none")

    def validation_step(self, batch, batch_idx):
        self.val_batches[self.current_epoch] += 1

    def test_step(self, batch, batch_idx):
        self.test_batches += 1

    def on_train_end(self) -> None:
        if self.record_dir is not None:
            path = Path(self.record_dir) / f"rank{self.global_rank}.json"
            path.write_text(json.dumps({str(k): v for k, v in self.seen.items()}))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Scorer(pl.Callback):
    """Stands in for InfluenceCallback: a scoring event at the end of the given epochs."""

    def __init__(self, epochs=(0,), seeds=(0,), root: str | None = None) -> None:
        self.epochs = list(epochs)
        self.seeds = list(seeds)
        self.root = root

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch not in self.epochs:
            return
        seed = self.seeds[self.epochs.index(trainer.current_epoch)]
        event = ScoringEvent(
            trainer.current_epoch, trainer.global_step, toy_scores(seed), torch.ones(2)
        )
        if self.root is not None and trainer.is_global_zero:
            write_event(event, self.root)
        trainer.datamodule.add_event(event)


def make_trainer(tmp_path, callbacks=(), max_epochs=3, logger=False, **kwargs) -> pl.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("devices", 1)
    return pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=list(callbacks),
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kwargs,
    )


def dropped_by(scores: torch.Tensor, count: int) -> set[int]:
    return set(torch.argsort(scores, descending=True)[:count].tolist())


def test_drop_shrinks_next_epochs_to_the_kept_set(tmp_path):
    inner = ToyData()
    dm = InfluenceDataModule(inner, mode="drop", fraction=0.25)
    model = Recorder()
    make_trainer(tmp_path, [Scorer(epochs=[0])]).fit(model, datamodule=dm)
    assert sorted(model.seen[0]) == list(range(N))
    kept = set(range(N)) - dropped_by(toy_scores(0), 10)
    for epoch in (1, 2):
        assert sorted(model.seen[epoch]) == sorted(kept)  # each kept example exactly once
    # validation still ran over the wrapped module's val loader in every (shorter) epoch
    assert model.val_batches == {0: 3, 1: 3, 2: 3}
    assert dm.datamodule is inner and inner.calls["train_dataloader"] == 1
    assert set((~dm.keep_mask).nonzero().flatten().tolist()) == set(range(N)) - kept
    assert dm.sampling_weights is None


def test_prunes_by_the_influence_callbacks_scores(tmp_path):
    callback = InfluenceCallback(
        every_n_epochs=1, at_train_end=False, n_iters=12, top_k=6, hvp_samples=None
    )
    dm = InfluenceDataModule(ToyData(), fraction=0.25, signal="self_influence")
    model = Recorder()
    make_trainer(tmp_path, [callback], max_epochs=3).fit(model, datamodule=dm)
    assert [e.epoch for e in callback.events] == [0, 1, 2]
    assert sorted(model.seen[0]) == list(range(N))
    for epoch, event in ((1, callback.events[0]), (2, callback.events[1])):
        dropped = dropped_by(event.self_influence, 10)
        assert sorted(model.seen[epoch]) == sorted(set(range(N)) - dropped)
        # the dropped indices sit beside the scores they came from
        rows = (Path(event.directory) / "dropped.csv").read_text().splitlines()[1:]
        assert {int(r.split(",")[0]) for r in rows} == dropped
    assert not (Path(callback.events[2].directory) / "dropped.csv").exists()  # no epoch after it


def test_wrapped_hooks_loaders_and_attributes_still_used(tmp_path):
    inner = ToyData()
    dm = InfluenceDataModule(inner, fraction=0.1)
    model = Recorder()
    trainer = make_trainer(tmp_path, [Scorer(epochs=[0])], max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert inner.calls["prepare_data"] == 1
    assert inner.calls["setup:fit"] == 1 and inner.calls["teardown:fit"] == 1
    assert inner.calls["val_dataloader"] >= 1
    # batch-transfer hooks ran for training and validation batches
    n_batches = 5 + 5 + 2 * 3  # 40 then 36 training examples in batches of 8; 12 val in 4s
    assert inner.calls["on_before_batch_transfer"] == n_batches
    assert inner.calls["on_after_batch_transfer"] == n_batches
    assert trainer.reload_dataloaders_every_n_epochs == 0  # restored at teardown
    assert dm.num_classes == 4  # attributes of the wrapped module are reachable
    trainer.test(model, datamodule=dm, verbose=False)
    assert inner.calls["test_dataloader"] == 1 and model.test_batches == 2
    assert inner.calls["setup:test"] == 1


def test_wrapper_does_not_shadow_the_modules_own_hooks(tmp_path):
    class Bare(pl.LightningDataModule):
        def train_dataloader(self):
            x = torch.cat([torch.arange(N)[:, None].float(), torch.randn(N, 3)], 1)
            return DataLoader(TensorDataset(x, toy_labels()), batch_size=10)

    class Moving(Recorder):
        transfers = 0

        def transfer_batch_to_device(self, batch, device, dataloader_idx):
            Moving.transfers += 1
            return super().transfer_batch_to_device(batch, device, dataloader_idx)

    model = Moving()
    make_trainer(tmp_path, max_epochs=1).fit(model, datamodule=InfluenceDataModule(Bare()))
    assert Moving.transfers == 4  # the LightningModule's hook, not a wrapper no-op
    assert model.val_batches == {}  # no val loader was made up


def test_start_epoch_and_combine_mean(tmp_path):
    dm = InfluenceDataModule(ToyData(), fraction=0.25, start_epoch=2, combine="mean")
    model = Recorder()
    make_trainer(tmp_path, [Scorer(epochs=[0, 1], seeds=[0, 1])], max_epochs=3).fit(
        model, datamodule=dm
    )
    assert sorted(model.seen[1]) == list(range(N))  # scores known, but before start_epoch
    from lightning_influence.pruning import combine_scores

    combined = combine_scores([toy_scores(0), toy_scores(1)], "mean")
    assert set(model.seen[2]) == set(range(N)) - dropped_by(combined, 10)


def test_class_safeguard_and_per_class_counts_in_the_logger(tmp_path):
    labels = toy_labels()
    # class 3 holds the ten highest scores: dropping 10 would remove the whole class
    scores = torch.where(labels == 3, 100.0 + torch.arange(N), torch.arange(N).double())
    event = ScoringEvent(0, 5, scores, torch.ones(1))
    dm = InfluenceDataModule(
        ToyData(),
        fraction=0.25,
        labels=lambda ds: ds.tensors[1],
        min_per_class=2,
        scores=event,
        known_noise=labels == 3,  # as if class 3's labels were the injected noise
    )
    model = Recorder()
    logger = CSVLogger(tmp_path, name="logs")
    make_trainer(tmp_path, max_epochs=1, logger=logger).fit(model, datamodule=dm)
    seen = torch.tensor(model.seen[0])
    assert len(seen) == 30
    assert int((labels[seen] == 3).sum()) == 2
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r.get("influence_data/dropped"))
    assert float(row["influence_data/dropped"]) == 10
    assert float(row["influence_data/dropped_class_3"]) == 8
    assert float(row["influence_data/dropped_class_2"]) == 1  # index 38
    assert float(row["influence_data/dropped_class_1"]) == 1  # index 37
    # 8 of the 10 dropped are "known noise", and 8 of its 10 examples were dropped
    assert float(row["influence_data/precision_vs_known_noise"]) == 0.8
    assert float(row["influence_data/recall_vs_known_noise"]) == 0.8
    # an in-memory seed has no folder: the dropped indices go under this run's log dir
    dropped = (
        Path(logger.log_dir) / "influence" / "plans" / "epoch=0-step=5-seed" / "dropped.csv"
    ).read_text()
    assert dropped.splitlines()[0] == "index,label,score"
    assert len(dropped.splitlines()) == 11


def test_seeded_from_an_earlier_runs_files(tmp_path):
    root = tmp_path / "earlier" / "influence"
    write_event(ScoringEvent(4, 50, toy_scores(3), torch.ones(3)), root)
    write_event(ScoringEvent(2, 25, toy_scores(4), torch.ones(3)), root)
    dm = InfluenceDataModule(ToyData(), fraction=0.2, scores=tmp_path / "earlier")
    model = Recorder()
    make_trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm)
    # the newest event of the folder (epoch 4) prunes from the very first epoch
    assert set(model.seen[0]) == set(range(N)) - dropped_by(toy_scores(3), 8)
    assert not (root / "epoch=4-step=50" / "dropped.csv").exists()  # earlier run left untouched


def test_dropped_indices_written_beside_the_scores(tmp_path):
    root = tmp_path / "influence"
    dm = InfluenceDataModule(ToyData(), fraction=0.25)
    make_trainer(tmp_path, [Scorer(epochs=[0], root=str(root))], max_epochs=2).fit(
        Recorder(), datamodule=dm
    )
    folder = root / "epoch=0-step=5"
    rows = (folder / "dropped.csv").read_text().splitlines()
    assert rows[0] == "index,score"
    assert {int(r.split(",")[0]) for r in rows[1:]} == dropped_by(toy_scores(0), 10)


def test_reweight_samples_in_proportion_to_the_weights():
    scipy_stats = pytest.importorskip("scipy.stats")
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 10.0], dtype=torch.float64)
    from lightning_influence.pruning import SamplingPlan

    plan = SamplingPlan(6, weights=weights)
    sampler = InfluenceSampler(TensorDataset(torch.zeros(6)), lambda: plan, seed=7)
    counts = torch.zeros(6)
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == 6 == len(sampler)
        counts += torch.bincount(torch.tensor(drawn), minlength=6)
    assert counts[4] == 0
    expected = weights / weights.sum() * counts.sum()
    keep = weights > 0
    _, p = scipy_stats.chisquare(counts[keep].numpy(), expected[keep].numpy())
    assert p > 1e-3


def test_reweight_mode_through_the_trainer(tmp_path):
    dm = InfluenceDataModule(ToyData(), mode="reweight", fraction=0.25, temperature=0.01)
    model = Recorder()
    logger = CSVLogger(tmp_path, name="logs")
    trainer = make_trainer(tmp_path, [Scorer(epochs=[0])], max_epochs=4, logger=logger)
    trainer.fit(model, datamodule=dm)
    assert trainer.reload_dataloaders_every_n_epochs == 0  # reweight keeps the epoch length
    suspects = dropped_by(toy_scores(0), 10)
    later = [i for e in (1, 2, 3) for i in model.seen[e]]
    assert len(later) == 3 * N
    # weights of the top quarter are ~sigmoid(-(k+0.5)/(0.01 N)) <= 0.22: rarely drawn
    share = sum(i in suspects for i in later) / len(later)
    assert share < 0.05
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r.get("influence_data/effective_size"))
    assert 25 < float(row["influence_data/effective_size"]) < 35


def test_resume_trains_on_the_same_kept_set(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    inner = ToyData()
    inner.token = "saved"
    dm = InfluenceDataModule(inner, fraction=0.25)
    first = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[Scorer(epochs=[0]), ckpt],
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(first, datamodule=dm)
    path = tmp_path / "ckpt" / "epoch=1-step=9.ckpt"
    assert path.exists()
    state = torch.load(path, weights_only=False)["InfluenceDataModule"]
    assert state["wrapped"] == {"token": "saved"}
    assert state["influence"]["events"] == [dm.added_events[0].uid]

    # a fresh process: no scorer this time, the kept set comes from the checkpoint alone
    inner2 = ToyData()
    dm2 = InfluenceDataModule(inner2, fraction=0.25)
    second = Recorder()
    make_trainer(tmp_path, max_epochs=4).fit(second, datamodule=dm2, ckpt_path=path)
    assert inner2.token == "saved"
    assert sorted(second.seen) == [2, 3]
    for epoch in (2, 3):
        assert sorted(second.seen[epoch]) == sorted(first.seen[1])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ddp_ranks_see_disjoint_shards_whose_union_is_the_kept_set(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    dm = InfluenceDataModule(ToyData(batch_size=4), fraction=0.3)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=3,
        callbacks=[Scorer(epochs=[0])],
        logger=False,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Recorder(record_dir=str(record)), datamodule=dm)
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(ranks[0]["0"] + ranks[1]["0"]) == list(range(N))
    kept = set(range(N)) - dropped_by(toy_scores(0), 12)
    for epoch in ("1", "2"):
        a, b = ranks[0][epoch], ranks[1][epoch]
        assert len(a) == len(b) == 14  # 28 kept, split evenly
        assert not set(a) & set(b)
        assert set(a) | set(b) == kept


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_with_the_influence_callback(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    callback = InfluenceCallback(
        every_n_epochs=1, at_train_end=False, n_iters=10, top_k=5, hvp_samples=None
    )
    dm = InfluenceDataModule(ToyData(batch_size=4), fraction=0.3, signal="self_influence")
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, devices=2, strategy="ddp_spawn")
    trainer.fit(Recorder(record_dir=str(record)), datamodule=dm)
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    # the spawned processes' events are gone with them: read what global zero wrote
    (folder,) = (tmp_path / "influence").glob("arnoldi-*/epoch=0-step=5")
    event = read_event(folder)
    dropped = dropped_by(event.self_influence, 12)
    rows = (folder / "dropped.csv").read_text().splitlines()
    assert {int(r.split(",")[0]) for r in rows[1:]} == dropped
    a, b = ranks[0]["1"], ranks[1]["1"]
    assert not set(a) & set(b)
    assert set(a) | set(b) == set(range(N)) - dropped


class Stream(IterableDataset):
    def __iter__(self):
        yield from range(4)


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"fraction=1.0 must be in \[0, 1\)"):
        InfluenceDataModule(ToyData(), fraction=1.0)
    with pytest.raises(ValueError, match=r"fraction=-0.1 must be in \[0, 1\)"):
        InfluenceDataModule(ToyData(), fraction=-0.1)
    with pytest.raises(ValueError, match="mode='dorp' is not one of 'drop', 'reweight'"):
        InfluenceDataModule(ToyData(), mode="dorp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no train_dataloader"):
        InfluenceDataModule(pl.LightningDataModule())
    with pytest.raises(TypeError, match="is not a LightningDataModule"):
        InfluenceDataModule(object())  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="scores="):
        InfluenceDataModule(ToyData(), scores=os.devnull)

    class Streaming(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(Stream(), batch_size=2)

    with pytest.raises(TypeError, match="IterableDataset"):
        InfluenceDataModule(Streaming()).train_dataloader()

    class Weighted(pl.LightningDataModule):
        def train_dataloader(self):
            sampler = WeightedRandomSampler(torch.ones(4), 4)
            return DataLoader(TensorDataset(torch.zeros(4)), batch_size=2, sampler=sampler)

    with pytest.raises(TypeError, match=r"sampler=WeightedRandomSampler.*mode='reweight'"):
        InfluenceDataModule(Weighted()).train_dataloader()


def test_scores_of_another_dataset_are_refused(tmp_path):
    event = ScoringEvent(0, 1, torch.zeros(N + 1), torch.ones(1))
    dm = InfluenceDataModule(ToyData(), scores=event)
    with pytest.raises(ValueError, match="has 41 scores but the training dataset has 40"):
        make_trainer(tmp_path, max_epochs=1).fit(Recorder(), datamodule=dm)


class Plain(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.arange(8.0)), batch_size=4, shuffle=False)


def test_a_newer_event_of_the_same_step_makes_a_new_plan():
    # Bug: the plan was cached by event name, so a newer analysis of an (epoch, step) already
    # seen (analyze() again, another scorer) was ignored.
    dm = InfluenceDataModule(Plain(), fraction=0.25)
    dm.add_event(ScoringEvent(0, 2, torch.arange(8.0), torch.ones(1)))
    dm.train_dataloader()
    assert dm.keep_mask.tolist() == [True] * 6 + [False] * 2
    dm.add_event(ScoringEvent(0, 2, -torch.arange(8.0), torch.ones(1)))  # same name, new uid
    plan = dm.update_plan(1)
    assert plan.keep.tolist() == [False] * 2 + [True] * 6
    assert plan.events == (dm.added_events[-1].uid,)
    assert dm.update_plan(2) is plan  # unchanged events: the same plan
    with pytest.warns(DeprecationWarning, match="update_plan"):
        assert dm.refresh(2) is plan


def test_a_run_pruned_from_earlier_scores_gets_the_custom_scalars_page(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    from lightning_influence.lightning.loggers import tensorboard_layout

    root = tmp_path / "earlier" / "influence"
    write_event(ScoringEvent(4, 50, toy_scores(3), torch.ones(3)), root)
    dm = InfluenceDataModule(ToyData(), fraction=0.2, scores=tmp_path / "earlier")
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    make_trainer(tmp_path, max_epochs=1, logger=logger).fit(Recorder(), datamodule=dm)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    # no InfluenceCallback in this run: the DataModule itself writes the layout
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == list(tensorboard_layout(sections={"pruning"}))
    charts = {chart.title for c in layout.category for chart in c.chart}
    assert "kept and dropped" in charts and "sampling weights" not in charts  # drop mode
    assert [e.value for e in events.Scalars("influence_data/dropped")] == [8.0]


# -- signals ------------------------------------------------------------------------------------
class Classifier(Recorder):
    """A Recorder whose training step and loss go through the module itself (so the callback
    records the training dynamics)."""

    def forward(self, x):
        return self.layer(x[:, 1:])

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen[self.current_epoch].extend(x[:, 0].long().tolist())
        return F.cross_entropy(self(x), y)

    def influence_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="none")


def _callback(**kwargs) -> InfluenceCallback:
    defaults = {"every_n_epochs": 1, "at_train_end": False, "n_iters": 12, "top_k": 6}
    return InfluenceCallback(hvp_samples=None, progress=False, **{**defaults, **kwargs})


def test_auto_prunes_by_aum_and_worst_class_validation_influence_with_a_validation_set(tmp_path):
    callback = _callback()
    dm = InfluenceDataModule(ToyData(), fraction=0.25)
    model = Classifier()
    make_trainer(tmp_path, [callback], max_epochs=2).fit(model, datamodule=dm)
    first = callback.events[0]
    assert {"self_influence", "loss", "validation_influence", "loss_mean", "aum"} <= set(
        first.signals
    )
    assert "validation_influence_class_0" in first.signals  # ToyData's validation labels are 0
    assert first.manifest["validation_examples"] == 12
    # the plan ranks by the rank mean of the AUM and the worst class' validation influence
    assert dm.plan.signal == ("aum", "validation_influence_min")
    from lightning_influence.pruning import drop_mask

    keep = drop_mask(suspicion_of(first.signals, ["aum", "validation_influence_min"]), 0.25)
    assert sorted(model.seen[1]) == keep.nonzero().flatten().tolist()


def suspicion_of(signals, names):
    from lightning_influence.pruning.signals import suspicion

    return suspicion(signals, names)


def test_without_a_validation_set_auto_falls_back_to_the_aum(tmp_path):
    class NoVal(ToyData):
        val_dataloader = pl.LightningDataModule.val_dataloader  # not overridden

    callback = _callback()
    dm = InfluenceDataModule(NoVal(), fraction=0.25)
    make_trainer(tmp_path, [callback], max_epochs=2).fit(Classifier(), datamodule=dm)
    assert "validation_influence" not in callback.events[0].signals
    assert dm.plan.signal == ("aum",)


def test_a_signal_that_needs_validation_without_one_fails_at_setup(tmp_path):
    class NoVal(ToyData):
        val_dataloader = pl.LightningDataModule.val_dataloader

    dm = InfluenceDataModule(NoVal(), fraction=0.25, signal="validation_influence")
    model = Classifier()
    with pytest.raises(Exception, match=r"needs \['validation_influence'\].*val_dataloader"):
        make_trainer(tmp_path, [_callback()], max_epochs=1).fit(model, datamodule=dm)
    assert not model.seen  # before any training
    with pytest.raises(ValueError, match="signal='validation_influnce' is not a known signal"):
        InfluenceDataModule(ToyData(), signal="validation_influnce")
    with pytest.raises(ValueError, match="'aum'"):  # the message lists the valid names
        InfluenceDataModule(ToyData(), signal=["loss", "nonsense"])


def test_an_explicit_validation_loader_and_an_overlapping_one(tmp_path):
    val = DataLoader(
        TensorDataset(torch.randn(12, 4), torch.zeros(12, dtype=torch.long)), batch_size=5
    )
    callback = _callback(val_dataloader=val, name="explicit")
    dm = InfluenceDataModule(ToyData(), fraction=0.0, source=callback)
    make_trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(), datamodule=dm)
    assert callback.events[0].manifest["validation_examples"] == 12

    class Overlapping(ToyData):
        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.train, batch_size=8)  # the training set itself

    with pytest.warns(UserWarning, match="validation set overlaps the training set"):
        make_trainer(tmp_path / "o", [_callback(name="overlap")], max_epochs=1).fit(
            Classifier(), datamodule=InfluenceDataModule(Overlapping(), fraction=0.0)
        )


def test_two_callbacks_need_an_explicit_source(tmp_path):
    a, b = _callback(name="a"), _callback(name="b", top_k=5)
    with pytest.raises(Exception, match="source=callback"):
        make_trainer(tmp_path, [a, b], max_epochs=1).fit(
            Classifier(), datamodule=InfluenceDataModule(ToyData(), fraction=0.1)
        )
    dm = InfluenceDataModule(ToyData(), fraction=0.25, source=b, signal="loss")
    a2, b2 = _callback(name="a"), b
    make_trainer(tmp_path / "ok", [a2, b2], max_epochs=2).fit(Classifier(), datamodule=dm)
    assert dm.callbacks == [b2] and dm.plan.events == (b2.events[0].uid,)


def test_twin_callbacks_are_refused_naming_name(tmp_path):
    with pytest.raises(Exception, match="Give each a different name="):
        make_trainer(tmp_path, [_callback(), _callback()], max_epochs=1).fit(
            Classifier(), datamodule=InfluenceDataModule(ToyData(), fraction=0.1)
        )


def test_resume_rebuilds_the_plan_from_the_event_folders(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    callback = _callback()
    dm = InfluenceDataModule(ToyData(), fraction=0.25)
    trainer = make_trainer(tmp_path, [callback, ckpt], max_epochs=2, enable_checkpointing=True)
    trainer.fit(Classifier(), datamodule=dm)
    path = tmp_path / "ckpt" / f"epoch=1-step={trainer.global_step}.ckpt"
    state = torch.load(path, weights_only=False)["InfluenceDataModule"]["influence"]
    # references to the folders, not the events' [N] tensors
    assert [r["uid"] for r in state["event_refs"]] == [callback.events[0].uid]  # epoch 1's plan
    assert state["signal"] == ["aum", "validation_influence_min"]

    dm2 = InfluenceDataModule(ToyData(), fraction=0.25)
    dm2.load_state_dict({"wrapped": {"token": "x"}, "influence": state})
    assert torch.equal(dm2.plan.keep, dm.plan.keep) and dm2.plan.scores is not None
    # a folder changed since: refused
    signals = Path(callback.events[0].directory) / "signals.csv"
    signals.write_text(signals.read_text().replace("0.", "9.", 5))
    with pytest.raises(ValueError, match="changed since the checkpoint was saved"):
        InfluenceDataModule(ToyData(), fraction=0.25).load_state_dict(
            {"wrapped": {"token": "x"}, "influence": state}
        )


# -- scoring only the candidates (AnalysisConfig.score_candidates) -----------------------------
def test_the_analysis_scores_only_the_candidates_and_they_equal_a_full_analysis(tmp_path):
    from lightning_influence.pruning import drop_mask

    pruning = _callback(name="pruning")  # score_candidates=3 by default
    full = _callback(name="full")  # feeds no plan: scores every example
    dm = InfluenceDataModule(ToyData(), fraction=0.1, source=pruning)
    model = Classifier()
    make_trainer(tmp_path, [pruning, full], max_epochs=2).fit(model, datamodule=dm)
    for ours, theirs in zip(pruning.events, full.events, strict=True):
        assert ours.manifest["scored_examples"] == 12  # ceil(3 x 0.1 x 40)
        assert theirs.manifest["scored_examples"] == N
        # the 12 lowest AUMs, which the training dynamics gives whole
        torch.testing.assert_close(ours.signals["aum"], theirs.signals["aum"])
        candidates = torch.argsort(ours.signals["aum"])[:12].sort().values
        scored = torch.nonzero(~torch.isnan(ours.self_influence)).flatten()
        assert scored.tolist() == candidates.tolist()
        for name in ("self_influence", "loss", "validation_influence_min"):
            torch.testing.assert_close(
                ours.signals[name][candidates], theirs.signals[name][candidates], rtol=1e-5, atol=0
            )
            assert bool(torch.isnan(ours.signals[name]).sum() == N - 12)
        torch.testing.assert_close(ours.eigenvalues, theirs.eigenvalues)
    # the plan in force (made from epoch 0's event, for epoch 1) drops among its candidates, by
    # the default signal over them
    first = pruning.events[0]
    assert sorted(model.seen[1]) == torch.nonzero(dm.keep_mask).flatten().tolist()
    dropped = set(torch.nonzero(~dm.keep_mask).flatten().tolist())
    scored = set(torch.nonzero(~torch.isnan(first.self_influence)).flatten().tolist())
    assert len(dropped) == 4 and dropped <= scored
    keep = drop_mask(suspicion_of(first.signals, ["aum", "validation_influence_min"]), 0.1)
    assert dropped == set(torch.nonzero(~keep).flatten().tolist())
    # the files hold the NaNs as written: an event read back equals the one in memory
    back = read_event(first.directory)
    torch.testing.assert_close(back.self_influence, first.self_influence, equal_nan=True)


def test_score_candidates_none_or_a_bad_value(tmp_path):
    callback = _callback(score_candidates=None)
    dm = InfluenceDataModule(ToyData(), fraction=0.1)
    make_trainer(tmp_path, [callback], max_epochs=1).fit(Classifier(), datamodule=dm)
    assert callback.latest_event.manifest["scored_examples"] == N
    assert bool(torch.isfinite(callback.latest_event.self_influence).all())
    for bad in (0.5, True, "3"):
        with pytest.raises(ValueError, match=r"score_candidates=.* must be a number >= 1"):
            _callback(score_candidates=bad)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_scores_the_candidates_across_ranks(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    callback = _callback()
    dm = InfluenceDataModule(ToyData(batch_size=4), fraction=0.1)
    trainer = make_trainer(tmp_path, [callback], max_epochs=2, devices=2, strategy="ddp_spawn")
    trainer.fit(Classifier(record_dir=str(record)), datamodule=dm)
    (folder,) = (tmp_path / "influence").glob("arnoldi-*/epoch=0-step=5")
    event = read_event(folder)
    assert event.manifest["scored_examples"] == 12 and event.manifest["world_size"] == 2
    # the AUM was summed over the ranks: the candidates are its 12 lowest, each scored once
    candidates = torch.argsort(event.signals["aum"])[:12].sort().values
    for name in ("self_influence", "validation_influence_min", "loss"):
        scored = torch.nonzero(~torch.isnan(event.signals[name])).flatten()
        assert scored.tolist() == candidates.tolist()
    rows = (folder / "dropped.csv").read_text().splitlines()
    dropped = {int(r.split(",")[0]) for r in rows[1:]}
    assert len(dropped) == 4 and dropped <= set(candidates.tolist())
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert set(ranks[0]["1"]) | set(ranks[1]["1"]) == set(range(N)) - dropped
