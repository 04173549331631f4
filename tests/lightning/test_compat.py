"""Lightning's private API, used in one module (``lightning.compat``): each use still works with
the installed Lightning, through real objects."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence.lightning import compat


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


def test_sharded_strategies_are_recognised_by_class():
    # Lightning refuses FSDP on the CPU, so the check runs on real strategy objects
    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy

    assert compat.is_sharded(FSDPStrategy())
    assert not compat.is_sharded(DDPStrategy())


def test_the_before_transfer_hook_and_the_hyperparameter_flag_exist():
    module = Module()
    hook = compat.before_batch_transfer(module)
    assert hook is not None and hook([1], dataloader_idx=0) == [1]
    plain = pl.LightningDataModule()
    assert hasattr(plain, "_log_hyperparams")  # the private flag still exists
    assert compat.log_hyperparams_flag(plain) is False

    class Saving(pl.LightningDataModule):
        def __init__(self, size: int = 3) -> None:
            super().__init__()
            self.save_hyperparameters()

    assert compat.log_hyperparams_flag(Saving()) is True


class Probe(pl.Callback):
    def __init__(self) -> None:
        self.found: list[object] = []

    def on_fit_start(self, trainer, pl_module):
        source = compat.validation_source(trainer)
        self.found.append(None if source is None else source())


def _fit(**loaders) -> list[object]:
    probe = Probe()
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(Module(), **loaders)
    return probe.found


def test_the_validation_source_is_found_before_validation_runs():
    val = _loader()
    assert _fit(train_dataloaders=_loader(), val_dataloaders=val) == [val]
    assert _fit(train_dataloaders=_loader()) == [None]

    class Data(pl.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.val = _loader()

        def train_dataloader(self):
            return _loader()

        def val_dataloader(self):
            return self.val

    data = Data()
    assert _fit(datamodule=data) == [data.val]
