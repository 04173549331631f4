"""Training dynamics (``loss_mean``, ``aum``) recorded by InfluenceCallback during real fits,
equal to the losses and margins of the training pass itself, keyed by dataset index."""

from __future__ import annotations

from collections import defaultdict

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence import InfluenceCallback, InfluenceDataModule
from lightning_influence.lightning.dynamics import margins
from lightning_influence.losses import cross_entropy_loss

N = 36


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    features = torch.randn(N, 3, generator=g)
    labels = (features[:, 0] > 0).long() + (features[:, 1] > 0).long()
    labels[:4] = (labels[:4] + 1) % 3  # a few flipped
    # the first input column is the dataset index, so the module can record who it trained on
    return TensorDataset(torch.cat([torch.arange(N).float()[:, None], features], 1), labels)


class Data(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train = data()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=8, shuffle=True)


class Classifier(pl.LightningModule):
    """Records (index, logits, label) of every training example, as the training pass saw them."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3))
        self.seen: dict[int, list[tuple[int, torch.Tensor, int]]] = defaultdict(list)

    def forward(self, x):
        return self.net(x[:, 1:])

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)  # the training pass' own outputs: what the callback records
        for i, z, label in zip(x[:, 0].long().tolist(), logits.detach(), y.tolist(), strict=True):
            self.seen[self.current_epoch].append((i, z.double(), label))
        return F.cross_entropy(logits, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)


def fit(tmp_path, callback, datamodule, epochs=3):
    pl.seed_everything(0, verbose=False)
    model = Classifier()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=datamodule)
    return model


def test_loss_mean_and_aum_are_the_training_pass_own(tmp_path):
    callback = InfluenceCallback(
        cross_entropy_loss, every_n_epochs=3, n_iters=10, top_k=4, progress=False
    )
    dm = InfluenceDataModule(Data(), fraction=0.0)
    model = fit(tmp_path, callback, dm)
    event = callback.latest_event
    assert event.manifest["dynamics"] == "hooks"
    losses, margin = defaultdict(list), defaultdict(list)
    for records in model.seen.values():
        for i, logits, label in records:
            target = torch.tensor([label])
            losses[i].append(F.cross_entropy(logits[None], target).item())
            margin[i].append(margins(logits[None], target).item())
    expected_loss = torch.tensor([sum(losses[i]) / len(losses[i]) for i in range(N)])
    expected_aum = torch.tensor([sum(margin[i]) / len(margin[i]) for i in range(N)])
    torch.testing.assert_close(
        event.signals["loss_mean"], expected_loss.double(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(event.signals["aum"], expected_aum.double(), rtol=1e-5, atol=1e-6)
    # and the analysed weights' own loss, in eval mode
    assert torch.isfinite(event.signals["loss"]).all()


def test_the_packages_losses_and_a_users_replayed_loss_record_the_same(tmp_path):
    def users_loss(model, batch):  # the same loss, replayed on the module (forward replaced)
        x, y = batch
        return F.cross_entropy(model(x), y, reduction="none")

    events = []
    for name, loss in (("package", cross_entropy_loss), ("user", users_loss)):
        callback = InfluenceCallback(loss, every_n_epochs=2, n_iters=10, top_k=4, progress=False)
        fit(tmp_path / name, callback, InfluenceDataModule(Data(), fraction=0.0), epochs=2)
        assert callback.latest_event.manifest["dynamics"] == "hooks"
        events.append(callback.latest_event)
    for signal in ("loss_mean", "aum"):
        torch.testing.assert_close(events[0].signals[signal], events[1].signals[signal])


def test_without_the_wrapper_nothing_is_recorded_and_nothing_breaks(tmp_path):
    callback = InfluenceCallback(cross_entropy_loss, n_iters=10, top_k=4, progress=False)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=1, callbacks=[callback], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Classifier(), train_dataloaders=DataLoader(data(), batch_size=8, shuffle=True))
    assert set(callback.latest_event.signals) == {"self_influence", "loss"}
    assert callback.latest_event.manifest["dynamics"] == "off"


def test_a_loss_that_bypasses_the_module_is_not_replayed(tmp_path):
    def through_the_net(model, batch):  # calls a submodule, not the LightningModule
        x, y = batch
        return F.cross_entropy(model.net(x[:, 1:]), y, reduction="none")

    callback = InfluenceCallback(through_the_net, n_iters=10, top_k=4, progress=False)
    with pytest.warns(RuntimeWarning, match="does not call the LightningModule itself"):
        model = fit(tmp_path, callback, InfluenceDataModule(Data(), fraction=0.0), epochs=1)
    assert "aum" not in callback.latest_event.signals
    assert callback.latest_event.manifest["dynamics"] == "off"
    assert len(model.seen[0]) == N  # the training itself was untouched


class IgnoringClassifier(Classifier):
    """Trains with ``ignore_index=-1``: an example labelled -1 has a loss (0) but no class."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y, ignore_index=-1)


def test_an_example_without_a_class_gets_no_margin_and_its_batch_keeps_theirs(tmp_path):
    def loss(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y, ignore_index=-1, reduction="none")

    class Unlabelled(Data):
        def __init__(self) -> None:
            super().__init__()
            features, labels = self.train.tensors
            labels = labels.clone()
            labels[5] = -1
            self.train = TensorDataset(features, labels)

    callback = InfluenceCallback(loss, every_n_epochs=2, n_iters=10, top_k=4, progress=False)
    pl.seed_everything(0, verbose=False)
    model = IgnoringClassifier()
    trainer = pl.Trainer(
        accelerator="cpu", max_epochs=2, callbacks=[callback], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=InfluenceDataModule(Unlabelled(), fraction=0.0))
    signals = callback.latest_event.signals
    assert callback.latest_event.manifest["dynamics"] == "hooks"
    assert torch.isnan(signals["aum"][5])
    assert signals["loss_mean"][5] == 0.0  # ignored by the loss, recorded as trained on
    others = torch.arange(N) != 5
    assert torch.isfinite(signals["aum"][others]).all()
    assert torch.isfinite(signals["loss_mean"]).all()
