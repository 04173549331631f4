"""A LightningDataModule that stands for another one: hooks, loaders, attributes and state pass
through, so a wrapper may change one thing (``InfluenceDataModule``: the train sampler) and
nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from typing_extensions import override

from lightning_influence.lightning.compat import log_hyperparams_flag
from lightning_influence.lightning.namespaces import (
    AnyLightningDataModule,
    bases,
    classes,
    is_overridden,
    namespace_of,
)

if TYPE_CHECKING:
    import pytorch_lightning as pl

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


class DelegatingDataModule(*bases("LightningDataModule")):  # type: ignore[misc]
    """Wraps ``datamodule``: every hook, loader, attribute and the state are the wrapped module's.

    Subclasses override what they change and call ``super()`` for the rest. ``state_dict`` nests
    the wrapped module's state under ``"wrapped"``. The wrapper is a ``LightningDataModule`` of
    ``pytorch_lightning`` and, when installed, of ``lightning.pytorch``; the wrapped module and
    the Trainer must come from the same namespace.
    """

    def __init__(self, datamodule: AnyLightningDataModule) -> None:
        if not isinstance(datamodule, classes("LightningDataModule")):
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
        self._log_hyperparams = log_hyperparams_flag(datamodule)

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
        wrapped = self.__dict__.get("_wrapped")
        if trainer is not None and wrapped is not None:
            _check_same_namespace(trainer, wrapped)
        self.__dict__["_trainer"] = trainer
        if wrapped is not None:
            wrapped.trainer = trainer

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


def _check_same_namespace(trainer: Any, datamodule: Any) -> None:
    # Lightning finds the hooks a datamodule overrides by comparing them with its own namespace's
    # LightningDataModule: a pytorch_lightning module under a lightning.pytorch Trainer (or the
    # other way round) would seem to override every hook, and the Trainer refuses it unwrapped.
    ours, theirs = namespace_of(trainer), namespace_of(datamodule)
    if ours is not None and theirs is not None and ours != theirs:
        raise TypeError(
            f"datamodule={type(datamodule).__name__} is a {theirs} LightningDataModule but the "
            f"Trainer is {ours}'s: import the Trainer and the LightningDataModule from the same "
            f"namespace (both from {ours} or both from {theirs})"
        )
