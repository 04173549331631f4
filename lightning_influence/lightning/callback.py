"""``InfluenceCallback``: Arnoldi influence functions inside a Lightning ``Trainer``.

At the end of every ``every_n_epochs``-th training epoch, at the end of training and on demand
(``callback.analyze(trainer, pl_module)``), the callback runs
``lightning_influence.lightning.analysis.run_analysis`` on the current weights: eigenpairs of the
Hessian of the training loss, self-influence of every training example, files under
``<trainer.log_dir>/influence/<name>/epoch=E-step=S/`` and logs to every logger. Saved checkpoints
go through the same pipeline (``analyze_checkpoint``, ``lightning-influence score``).

It runs on every accelerator and strategy the Trainer runs on: batches move through
``trainer.strategy.batch_to_device`` (the batch-transfer hooks apply); under DDP every rank computes
HVPs on its share of the HVP sample, summed with one collective per product, scoring is sharded
over ranks and gathered, and global zero writes the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from lightning_influence.config import (
    AnalysisConfig,
    ConfigurationError,
    field_names,
    with_overrides,
)
from lightning_influence.core.parameters import select_parameters
from lightning_influence.io.events import EventRef, ScoringEvent
from lightning_influence.io.manifest import analysis_arguments, analysis_name
from lightning_influence.lightning import compat
from lightning_influence.lightning.analysis import (
    Trigger,
    WarmStart,
    check_loss_contract,
    run_analysis,
)
from lightning_influence.lightning.dynamics import TrainingDynamics
from lightning_influence.lightning.namespaces import MisconfigurationException, bases
from lightning_influence.lightning.runtime import Runtime
from lightning_influence.losses import LossFn, resolve_loss

if TYPE_CHECKING:
    import pandas
    import pytorch_lightning as pl

__all__ = ["STATE_KIND", "InfluenceCallback"]

# 2: events carry a uid; the state names the analysis and the last trained (epoch, step).
# 3: written events are references to their folders; the training dynamics' sums.
_STATE_VERSION = 3
# the schedule fields that name a callback's state (state_key): Lightning asks for the key at
# every hook of every batch, so the config is not walked there
_SCHEDULE_FIELDS = field_names(AnalysisConfig, "schedule")
STATE_KIND = "lightning_influence.InfluenceCallback"
"""Marks an InfluenceCallback's state in a checkpoint's ``callbacks`` (whatever its state_key)."""


class InfluenceCallback(*bases("Callback")):  # type: ignore[misc]
    r"""Eigenvalue spectra and self-influence of the training set while a ``Trainer`` fits.

    Self-influence ``I(x, x) = sum_i w_i <e_i, g_x>^2`` (``w_i ~ 1 / lambda_i``, ``(lambda_i, e_i)``
    the top eigenpairs of the Hessian of the training loss, ``g_x`` the gradient of example x's
    loss) is high for mislabeled and atypical examples (Schioppa et al., AAAI 2022).

    The per-example loss comes from ``loss_fn(model, batch) -> Tensor[B]`` or, when it is None,
    from the LightningModule's ``influence_loss(self, batch) -> Tensor[B]`` method.

    It is a ``Callback`` of ``pytorch_lightning`` and, when the ``lightning`` package is
    installed, of ``lightning.pytorch``: either namespace's ``Trainer`` takes it.

    Args:
        loss_fn: per-example losses of a training batch (``reduction="none"``); e.g.
            ``lightning_influence.losses.cross_entropy_loss`` for ``(inputs, class-index targets)``.
        config: every argument of the analysis, an ``AnalysisConfig`` (``AnalysisConfig.fast()``,
            say); None: the defaults. In a LightningCLI YAML file it is a nested mapping
            (``config: {n_iters: 100, top_k: 50}``).
        name: names this analysis: its folder ``<dirpath>/<name>/`` and its checkpoint
            ``state_key``. None: ``arnoldi-<hash>``, a short hash of the result arguments that
            differ from the defaults, so callbacks with other arguments never share a folder.
            Writing into an event folder made with other arguments is refused.
        dirpath: where the analysis' folder goes; None: ``<trainer.log_dir>/influence``.
        val_dataloader: a clean validation set for validation influence; None: the fit's own
            validation loader (the DataModule's or LightningModule's ``val_dataloader()``, or
            the one passed to ``fit``), when there is one. Without any, the events hold no
            validation influence.
        progress: progress bars during fit and scoring; None follows the trainer's progress bar.
        **overrides: ``AnalysisConfig`` fields replacing those of ``config`` (``n_iters=100``,
            ``top_k=50``, ``every_n_epochs=5``, ...): the same names everywhere, documented on
            ``AnalysisConfig``.

    Attributes:
        config: the ``AnalysisConfig`` (validated at construction).
        events: every ``ScoringEvent`` of this run, oldest first (the same on every rank);
            ``self_influence`` is a float64 CPU tensor indexed by dataset index.

    Example::

        from lightning_influence import AnalysisConfig, InfluenceCallback
        from lightning_influence.losses import cross_entropy_loss

        callback = InfluenceCallback(cross_entropy_loss, every_n_epochs=5, n_iters=100, top_k=50)
        # or: InfluenceCallback(cross_entropy_loss, AnalysisConfig.fast(), every_n_epochs=5)
        trainer = pl.Trainer(max_epochs=20, callbacks=[callback])
        trainer.fit(model, datamodule)
        callback.latest_scores_frame().nlargest(20, "self_influence")  # likely mislabeled
    """

    def __init__(
        self,
        loss_fn: LossFn | None = None,
        config: AnalysisConfig | None = None,
        *,
        name: str | None = None,
        dirpath: str | os.PathLike | None = None,
        val_dataloader: DataLoader | None = None,
        progress: bool | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"loss_fn={loss_fn!r} is not callable: pass loss_fn(model, batch) -> Tensor[B], or "
                "leave it None and define influence_loss(self, batch) on the LightningModule"
            )
        if config is not None and not isinstance(config, AnalysisConfig):
            raise TypeError(
                f"config={config!r} is not an AnalysisConfig: pass "
                "lightning_influence.AnalysisConfig(...), or its fields as keywords"
            )
        if "progress" in overrides:
            raise TypeError("progress is an argument of InfluenceCallback, not an override")
        try:
            config = with_overrides(AnalysisConfig, config, overrides)
        except TypeError as err:
            if "unexpected keyword argument" not in str(err):
                raise
            raise TypeError(
                f"InfluenceCallback: {err}; the options are the fields of "
                "lightning_influence.AnalysisConfig"
            ) from None
        if progress is not None and config.progress != progress:
            config = dataclasses.replace(config, progress=progress)
        self.config = config
        self.loss_fn = loss_fn
        self.arguments = analysis_arguments(config, loss_fn)
        if name is not None and (not name or "/" in name or name.startswith(".")):
            raise ValueError(f"name={name!r} must be a plain folder name (no '/', not hidden)")
        self.name = name or analysis_name(self.arguments)
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.progress = progress
        self.val_dataloader = val_dataloader
        self.events: list[ScoringEvent] = []
        # (epoch, global step) after the newest training batch: the epoch that names an event of
        # that step, whichever hook asks (an epoch end, train end, or analyze() after a stop).
        self._last_trained: tuple[int, int] | None = None
        self._resolved_loss: LossFn | None = None
        self._dynamics: TrainingDynamics | None = None
        self._warm = WarmStart()  # the previous analysis' eigenvectors, for the next fit
        self._epoch_started: float | None = None
        self._epoch_seconds: float | None = None
        self._last_batch_end: float | None = None
        self._datamodule: Any = None  # the InfluenceDataModule this callback feeds, if any

    # -- public API ------------------------------------------------------------------------------
    @property
    def latest_event(self) -> ScoringEvent | None:
        """The newest scoring event, or None before the first analysis."""
        return self.events[-1] if self.events else None

    @property
    @override
    def state_key(self) -> str:
        # The folder's name plus the schedule: two callbacks that compute the same events on
        # other epochs keep their own state.
        schedule = {k: self.arguments[k] for k in _SCHEDULE_FIELDS}
        key = self._generate_state_key(name=self.name, **schedule)
        # Lightning refuses two callbacks of one state_key with a message that cannot say how
        # to tell two InfluenceCallbacks apart: say it here, when its check asks.
        callbacks = compat.callbacks_being_validated()
        if callbacks is not None:
            twins = [c for c in callbacks if isinstance(c, InfluenceCallback) and c is not self]
            if any(c.name == self.name and c.arguments == self.arguments for c in twins):
                raise MisconfigurationException(
                    f"two InfluenceCallbacks with the same arguments and name {self.name!r}: "
                    "their checkpoint state would collide. Give each a different name= "
                    "(InfluenceCallback(..., name='first')), or keep one"
                )
        return key

    def latest_scores(self, signal: str = "self_influence") -> Tensor:
        """``[N]`` float64 signal of the newest event (the self-influence by default), indexed
        by dataset index; NaN for an example the analysis did not score (``score_candidates``)."""
        return self._require_event().signal(signal)

    def latest_scores_frame(self) -> pandas.DataFrame:
        """The newest event's signals as a DataFrame indexed by dataset index, one column each.

        Needs pandas (``pip install lightning-influence[pandas]``).
        """
        try:
            import pandas
        except ImportError as err:  # pragma: no cover - pandas is in the dev extra
            raise ImportError(
                "latest_scores_frame needs pandas: pip install 'lightning-influence[pandas]', or "
                "use latest_scores() for a tensor"
            ) from err
        event = self._require_event()
        frame = pandas.DataFrame(
            {name: value.numpy() for name, value in event.signals.items()},
            index=pandas.RangeIndex(event.num_examples, name="index"),
        )
        frame.attrs.update(epoch=event.epoch, global_step=event.global_step)
        return frame

    def analyze(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        *,
        dataloader: DataLoader | None = None,
    ) -> ScoringEvent | None:
        """Analyse the current weights now; call it on every rank (it uses collectives).

        Args:
            trainer: the trainer (during or after ``fit``).
            pl_module: its LightningModule.
            dataloader: the training loader whose dataset is scored; None uses
                ``trainer.train_dataloader``.

        Returns:
            The new event (also appended to ``events``), or None when the analysis failed under
            ``on_error="warn"``.
        """
        return self._run(trainer, pl_module, "manual", dataloader)

    @classmethod
    def analyze_checkpoint(
        cls, checkpoint_path: str | os.PathLike, model: Any, dataloader: Any, **kwargs: Any
    ) -> ScoringEvent:
        """``lightning_influence.lightning.offline.analyze_checkpoint`` (the same arguments)."""
        from lightning_influence.lightning.offline import analyze_checkpoint

        return analyze_checkpoint(checkpoint_path, model, dataloader, **kwargs)

    # -- Lightning hooks -------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if compat.is_sharded(trainer.strategy):
            raise MisconfigurationException(
                f"InfluenceCallback({self.name}): strategy {type(trainer.strategy).__name__} "
                "shards the parameters across ranks, which this analysis does not support (its "
                "Hessian-vector products need whole parameters on every rank): train with "
                "strategy='ddp', or analyse a saved checkpoint with analyze_checkpoint / "
                "lightning-influence score"
            )
        twins = [c for c in trainer.callbacks if isinstance(c, InfluenceCallback) and c is not self]
        if any(c.state_key == self.state_key for c in twins):
            raise MisconfigurationException(
                f"two InfluenceCallbacks with the same arguments and name {self.name!r}: their "
                "checkpoint state would collide. Give each a different name= "
                "(InfluenceCallback(..., name='first')), or keep one"
            )
        try:
            self._resolved_loss = resolve_loss(self.loss_fn, pl_module)
            select_parameters(pl_module, self.config.params)
        except (ConfigurationError, ValueError) as err:
            raise MisconfigurationException(f"InfluenceCallback({self.name}): {err}") from err
        if self.config.dynamics and self._dynamics is None:
            self._dynamics = TrainingDynamics(self._resolved_loss)
        self._connect_datamodule(trainer)
        self._check_output_folder(trainer)

    def _connect_datamodule(self, trainer: pl.Trainer) -> None:
        """Hand this callback's events to an ``InfluenceDataModule`` that was given no source,
        and refuse a signal that needs a validation set this run does not have."""
        from lightning_influence.lightning.datamodule import InfluenceDataModule

        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, InfluenceDataModule):
            return
        dm.connect(self)
        if self not in dm.callbacks:
            return
        self._datamodule = dm
        needs = dm.needs_validation()
        if needs and (self.config.validation == "off" or not self._has_validation(trainer)):
            why = (
                "validation='off'"
                if self.config.validation == "off"
                else "no val_dataloader (neither the DataModule nor fit() gives one)"
            )
            raise MisconfigurationException(
                f"InfluenceDataModule(signal={dm.config.signal!r}) needs {needs}, computed from a "
                f"validation set, but InfluenceCallback({self.name}) has {why}: define "
                "val_dataloader() on the DataModule, pass InfluenceCallback(val_dataloader=...), "
                "or choose another signal (e.g. signal='aum' or 'loss')"
            )

    def _has_validation(self, trainer: pl.Trainer) -> bool:
        return self.val_dataloader is not None or compat.validation_source(trainer) is not None

    def _check_output_folder(self, trainer: pl.Trainer) -> None:
        # A folder that cannot be written fails the fit now, not after the first analysis.
        # (`trainer.log_dir` is a collective under DDP: every rank asks.)
        base = Path(self.dirpath) if self.dirpath is not None else _default_root(trainer)
        error: OSError | None = None
        earlier: list[str] = []
        if trainer.is_global_zero:
            try:
                ensure_writable(base / self.name)
            except OSError as err:
                error = err
            if getattr(trainer, "ckpt_path", None) is None and (base / self.name).is_dir():
                earlier = sorted(p.parent.name for p in (base / self.name).glob("*/manifest.json"))
        earlier = trainer.strategy.broadcast(earlier)
        if earlier:
            # A fresh run into a folder that holds another run's events would replace them (a
            # fixed dirpath, logger=False, a reused log version): refused before any training.
            raise MisconfigurationException(
                f"InfluenceCallback({self.name}): {base / self.name} already holds the events of "
                f"an earlier run ({', '.join(earlier[:3])}{', ...' if len(earlier) > 3 else ''})"
                " and this fit does not resume from a checkpoint: give the callback another "
                "dirpath= or name=, use a new log version, resume with ckpt_path=, or delete that "
                "folder"
            )
        if not trainer.strategy.reduce_boolean_decision(error is None, all=True):
            reason = f" ({error.strerror or error})" if error is not None else ""
            raise MisconfigurationException(
                f"InfluenceCallback({self.name}) cannot write its events into "
                f"{base / self.name}{reason}: pass a writable dirpath=, or fix the folder's "
                "permissions"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The loss' contract (one value per example) is checked on the first training examples
        # before any training step: a mistake there would fail every analysis.
        try:
            runtime = Runtime.of(trainer, pl_module, False)
            check_loss_contract(runtime, self.config, self.loss_fn, trainer)
        except ConfigurationError as err:
            raise MisconfigurationException(f"InfluenceCallback({self.name}): {err}") from err

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()
        if self.config.dynamics and not trainer.sanity_checking:
            loader = trainer.train_dataloader
            size = len(getattr(loader, "dataset", ()) or ())
            if size and self._dynamics is not None:
                self._dynamics.start_epoch(pl_module, loader, size)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._last_trained = (trainer.current_epoch, trainer.global_step)
        if self._dynamics is not None and self.config.dynamics:
            self._dynamics.on_batch(pl_module, batch)
        self._last_batch_end = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_started is not None:
            # The training pass, first batch to last: not the epoch-end hooks, where another
            # callback's analysis (a second InfluenceCallback) may already have run.
            end = self._last_batch_end if self._last_batch_end is not None else time.perf_counter()
            self._epoch_seconds = end - self._epoch_started
            self._epoch_started = self._last_batch_end = None
        if self._dynamics is not None:
            reduce = Runtime.of(trainer, pl_module, False).reduce_sum
            self._dynamics.end_epoch(reduce)
        # Like Lightning's own callbacks, nothing is written under fast_dev_run.
        if trainer.sanity_checking or trainer.fast_dev_run or not self.config.every_n_epochs:
            return
        if (trainer.current_epoch + 1) % self.config.every_n_epochs == 0:
            self._run(trainer, pl_module, "epoch_end")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._dynamics is not None:
            self._dynamics.detach()
        if not self.config.at_train_end or trainer.fast_dev_run:
            return
        latest = self.latest_event
        if latest is not None and latest.global_step == trainer.global_step:
            return  # the last epoch-end analysis already saw these weights
        self._run(trainer, pl_module, "train_end")

    @override
    def state_dict(self) -> dict[str, Any]:
        # Written events are referenced (uid, folder, hash): their folders are the source of
        # truth. Only an event without a folder travels whole.
        return {
            "version": _STATE_VERSION,
            "kind": STATE_KIND,
            "name": self.name,
            "last_trained": self._last_trained,
            "epoch_seconds": self._epoch_seconds,
            "events": [
                {"ref": e.ref().state_dict()} if e.directory else {"event": e.state_dict()}
                for e in self.events
            ],
            "dynamics": None if self._dynamics is None else self._dynamics.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version = state_dict.get("version", 1)
        if not isinstance(version, int) or version > _STATE_VERSION:
            raise ValueError(
                f"InfluenceCallback state version {version!r} is newer than this "
                f"lightning-influence understands ({_STATE_VERSION}): upgrade lightning-influence "
                "to resume this checkpoint"
            )
        events = []
        for entry in state_dict.get("events", []):
            if "ref" in entry:  # version 3: read back from the event's folder
                events.append(EventRef.from_state_dict(entry["ref"]).resolve())
            elif "event" in entry:
                events.append(ScoringEvent.from_state_dict(dict(entry["event"])))
            else:  # versions 1 and 2: the whole event (version 1 without a uid)
                events.append(ScoringEvent.from_state_dict(dict(entry)))
        self.events = events
        if events:  # the next fit starts warm, as the uninterrupted run's would
            self._warm.restore(events[-1].directory)
        last = state_dict.get("last_trained")
        self._last_trained = None if last is None else (int(last[0]), int(last[1]))
        self._epoch_seconds = state_dict.get("epoch_seconds")
        dynamics = state_dict.get("dynamics")
        if dynamics is not None and self._dynamics is not None:
            self._dynamics.load_state_dict(dynamics)

    # -- the analysis ----------------------------------------------------------------------------
    def event_epoch(self, trainer: pl.Trainer) -> int:
        """The epoch that names an event of the current weights: the epoch of the newest training
        batch when the weights are still those it left, else ``trainer.current_epoch``."""
        if self._last_trained is not None and self._last_trained[1] == trainer.global_step:
            return self._last_trained[0]
        return trainer.current_epoch

    def _view(self, event: ScoringEvent) -> tuple[tuple[str, Tensor] | None, Tensor | None]:
        """How the loggers show the event: ranked and masked as the pruning plan sees it."""
        dm = self._datamodule
        if dm is None:
            return None, None
        return dm.ranking(event.signals), dm.keep_mask

    def _candidates(self, free: dict[str, Tensor], validation: bool) -> Tensor | None:
        """The examples to score (``score_candidates``): None scores every one."""
        dm = self._datamodule
        if dm is None or self.config.score_candidates is None or self.config.shard_batches:
            return None
        analysed = ["self_influence", "loss"]
        if validation:
            analysed += ["validation_influence", "validation_influence_min"]
        return dm.scoring_candidates(free, analysed, self.config.score_candidates)

    def _validation_loader(self, trainer: pl.Trainer) -> Any:
        if self.config.validation == "off":
            return None
        if self.val_dataloader is not None:
            return self.val_dataloader
        source = compat.validation_source(trainer)
        if source is None:
            return None
        loaders = source()
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        elif isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        return loaders

    def _run(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        trigger: Trigger,
        dataloader: DataLoader | None = None,
    ) -> ScoringEvent | None:
        loader = dataloader if dataloader is not None else trainer.train_dataloader
        base = Path(self.dirpath) if self.dirpath is not None else _default_root(trainer)
        root = Path(trainer.strategy.broadcast(os.fspath(base / self.name)))
        epoch, step = self.event_epoch(trainer), trainer.global_step
        validation = self._validation_loader(trainer)
        if validation is not None:
            warn_if_overlapping(loader, validation)
        extra = self._dynamics.signals() if self._dynamics is not None else {}
        # only the training set the plan covers (analyze(dataloader=...) scores another: all of it)
        candidates = self._candidates(extra, validation is not None) if dataloader is None else None
        try:
            event = run_analysis(
                Runtime.of(trainer, pl_module, self.progress),
                self.config,
                self.loss_fn,
                loader,
                root=root,
                epoch=epoch,
                step=step,
                trigger=trigger,
                provenance={
                    "name": self.name,
                    "dynamics": None if self._dynamics is None else self._dynamics.route,
                },
                validation_loader=validation,
                extra_signals=extra,
                epoch_seconds=self._epoch_seconds,
                view=self._view,
                warm=self._warm,
                candidates=candidates,
            )
        except (MisconfigurationException, ConfigurationError):
            raise
        except Exception as err:
            message = f"InfluenceCallback: the influence analysis at epoch={epoch}, step={step} failed: {err}"
            if self.config.on_error == "raise":
                kind = FloatingPointError if isinstance(err, FloatingPointError) else RuntimeError
                raise kind(message) from err
            rank_zero_warn(
                message + " -- this analysis is skipped and training continues "
                "(InfluenceCallback(on_error='raise') makes it fatal)",
                category=RuntimeWarning,
            )
            return None
        known = next((e for e in self.events if e.uid == event.uid), None)
        if known is not None:  # the same weights again: the event was reused, not recomputed
            return known
        self.events.append(event)
        if self.config.max_events is not None:
            del self.events[: -self.config.max_events]
        return event

    def _require_event(self) -> ScoringEvent:
        if not self.events:
            raise RuntimeError(
                "InfluenceCallback has no scores yet: they exist after the first analysis "
                "(an epoch end with every_n_epochs, the end of training, or analyze())"
            )
        return self.events[-1]


def warn_if_overlapping(train_loader: Any, val_loader: Any) -> None:
    """Warn when the validation set is (part of) the training set: validation influence would
    then reward memorizing the very examples it should judge."""
    train = getattr(train_loader, "dataset", None)
    val = getattr(val_loader, "dataset", None)
    if train is None or val is None:
        return

    def base(dataset: Any) -> tuple[Any, set[int] | None]:
        if isinstance(dataset, Subset):
            return dataset.dataset, {int(i) for i in dataset.indices}
        return dataset, None

    (train_base, train_idx), (val_base, val_idx) = base(train), base(val)
    if train_base is not val_base:
        return
    if train_idx is None or val_idx is None or train_idx & val_idx:
        rank_zero_warn(
            "InfluenceCallback: the validation set overlaps the training set (the same dataset "
            "object and indices): validation influence then measures how much an example helps "
            "itself; hold out a validation set that the model does not train on",
            category=UserWarning,
        )


def ensure_writable(folder: Path) -> None:
    """Prove that ``folder`` can be created and written (a probe file), or raise ``OSError``;
    what the probe created is removed again, so a run whose analyses all fail leaves nothing."""
    created = []
    for parent in reversed([folder, *folder.parents]):
        if not parent.exists():
            created.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    finally:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()


def _default_root(trainer: pl.Trainer) -> Path:
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir) / "influence"
