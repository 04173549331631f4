"""A LightningDataModule that stands for another one: hooks, loaders, attributes and state pass
through, so a wrapper may change one thing (``InfluenceDataModule``: the train sampler) and
nothing else."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities.model_helpers import is_overridden
from typing_extensions import override

__all__ = ["DelegatingDataModule"]

# Hooks Lightning calls only when the datamodule overrides them (it checks with `is_overridden`).
# They are bound per instance to the wrapped module's methods, so the wrapper "overrides" exactly
# what the wrapped module overrides: defining them on the class would, for example, shadow the
# LightningModule's own `transfer_batch_to_device` or announce a val loader that does not exist.
_DELEGATED_HOOKS = (
    "prepare_data",
    "val_dataloader",
    "test_dataloader",
    "predict_dataloader",
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
    "on_exception",
)


class DelegatingDataModule(pl.LightningDataModule):
    """Wraps ``datamodule``: every hook, loader, attribute and the state are the wrapped module's.

    Subclasses override what they change and call ``super()`` for the rest. ``state_dict`` nests
    the wrapped module's state under ``"wrapped"``.
    """

    def __init__(self, datamodule: pl.LightningDataModule) -> None:
        if not isinstance(datamodule, pl.LightningDataModule):
            raise TypeError(
                f"datamodule={type(datamodule).__name__} is not a LightningDataModule: wrap a "
                "LightningDataModule (LightningDataModule.from_datasets(...) builds one)"
            )
        if not is_overridden("train_dataloader", datamodule):
            raise ValueError(
                f"datamodule={type(datamodule).__name__} has no train_dataloader(): the wrapped "
                "module must define one"
            )
        super().__init__()
        self._wrapped = datamodule
        for name in _DELEGATED_HOOKS:
            setattr(self, name, getattr(datamodule, name))
        self.prepare_data_per_node = datamodule.prepare_data_per_node
        self.allow_zero_length_dataloader_with_multiple_devices = (
            datamodule.allow_zero_length_dataloader_with_multiple_devices
        )
        # Lightning's flag for logging the datamodule's hyper-parameters; no public accessor.
        self._log_hyperparams = datamodule._log_hyperparams  # noqa: SLF001

    @property
    def datamodule(self) -> pl.LightningDataModule:
        """The wrapped LightningDataModule."""
        return self._wrapped

    @property
    def trainer(self) -> pl.Trainer | None:
        return self.__dict__.get("_trainer")

    @trainer.setter
    def trainer(self, trainer: pl.Trainer | None) -> None:
        # The wrapped module's hooks may read `self.trainer` (world size, current epoch, ...).
        self.__dict__["_trainer"] = trainer
        if "_wrapped" in self.__dict__:
            self._wrapped.trainer = trainer

    @property
    @override
    def hparams(self) -> Any:
        return self._wrapped.hparams

    @property
    @override
    def hparams_initial(self) -> Any:
        return self._wrapped.hparams_initial

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: user code such as `trainer.datamodule.num_classes`
        # keeps working. Private names are not forwarded (and are absent while unpickling).
        wrapped = self.__dict__.get("_wrapped")
        if name.startswith("_") or wrapped is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(wrapped, name)

    @override
    def setup(self, stage: str) -> None:
        self._wrapped.setup(stage)

    @override
    def teardown(self, stage: str) -> None:
        self._wrapped.teardown(stage)

    @override
    def train_dataloader(self) -> Any:
        return self._wrapped.train_dataloader()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"wrapped": self._wrapped.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._wrapped.load_state_dict(state_dict.get("wrapped", {}))
