"""``InfluenceDataModule``: wrap any LightningDataModule so later epochs drop or down-weight the
training examples that self-influence marks as suspect (mislabeled, atypical).

    dm = InfluenceDataModule(MyDataModule(), mode="drop", fraction=0.1)
    trainer = Trainer(callbacks=[InfluenceCallback(every_n_epochs=5)])
    trainer.fit(model, datamodule=dm)

After each scoring event of ``InfluenceCallback`` (at the end of an epoch), the following epochs'
train loader samples only the kept examples (``drop``) or samples with weights that decrease with
self-influence (``reweight``). The train DataLoader keeps ``.dataset`` = the wrapped, full training
dataset and its batches keep their structure: only the sampler changes (``InfluenceSampler``), and
it reads the current keep-mask or weights every epoch. The maths lives in ``pruning.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from typing_extensions import override

from lightning_influence import pruning
from lightning_influence.io.atomic import atomic_write
from lightning_influence.io.events import ScoringEvent, latest_event_dir, read_event
from lightning_influence.lightning.callback import InfluenceCallback
from lightning_influence.lightning.sampler import InfluenceSampler
from lightning_influence.pruning.plan import SamplingPlan

__all__ = ["InfluenceDataModule", "PruneMode"]

PruneMode = Literal["drop", "reweight"]
ScoresSource = str | os.PathLike | ScoringEvent
LabelsArg = Tensor | Sequence[int] | Callable[[Dataset], Any] | None

DROPPED_FILE = "dropped.csv"
WEIGHTS_FILE = "weights.csv"

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


def _load_scores(source: ScoresSource) -> ScoringEvent:
    if isinstance(source, ScoringEvent):
        return source
    path = Path(source)
    if (path / "manifest.json").is_file():
        return read_event(path)
    for root in (path, path / "influence"):
        if root.is_dir():
            try:
                return read_event(latest_event_dir(root))
            except FileNotFoundError:
                continue
    raise FileNotFoundError(
        f"scores={str(source)!r} is neither a scoring event folder (epoch=E-step=S with "
        "manifest.json) nor a folder holding such events (an InfluenceCallback's influence/ "
        "directory, or the log_dir above it)"
    )


class InfluenceDataModule(pl.LightningDataModule):
    """Wraps a LightningDataModule; drops or down-weights high-self-influence training examples.

    **drop**: after a scoring event, the ``floor(fraction * N)`` examples with the highest
    (combined) self-influence are left out of every following epoch, which shrinks to the kept set.
    With ``cumulative=True`` every new event drops ``fraction`` of the examples still kept and
    earlier drops stay dropped. ``max_dropped`` caps the total.

    **reweight**: every epoch draws ``N`` examples with replacement, with probability proportional
    to (``u_i``: the quantile of example i's score, near 1 for the most self-influential)

        w_i = floor + (1 - floor) * sigmoid((1 - fraction - u_i) / temperature)

    so the top ``fraction`` of the scores fades towards ``floor`` over a band of width
    ``temperature`` (in quantile units); the rest keeps weight ~1.

    Scores come from the ``InfluenceCallback`` instances in ``trainer.callbacks`` (their
    ``events``), from ``add_event`` and from ``scores=`` (an earlier run's event, so a fresh run can
    start pruned). ``combine="latest"`` uses the newest event, ``"mean"`` the mean quantile over
    all events. Nothing changes before ``start_epoch``.

    In drop mode the epoch length changes, so the wrapper sets the trainer's
    ``reload_dataloaders_every_n_epochs`` to 1 during ``fit`` (restored at teardown) to make
    Lightning re-read it: the train DataLoader object itself is built once and returned again, and
    the val loaders are asked for again every epoch.

    Distributed: the sampler shards itself (Lightning leaves it alone, see ``sampler.py``); every
    rank computes the same plan from the same events, seed and epoch.

    Args:
        datamodule: the LightningDataModule to wrap; its hooks, loaders and state keep working.
        mode: ``"drop"`` or ``"reweight"``.
        fraction: in ``[0, 1)``, the share of the training set dropped (or down-weighted).
        start_epoch: the first epoch that may be pruned.
        max_dropped: cap on the total dropped: a count (int) or a share of the dataset (float).
        cumulative: drop mode: whether each new event drops ``fraction`` more of the kept examples.
        combine: ``"latest"`` or ``"mean"`` (see ``pruning.combine_scores``).
        labels: the class of every training example, to log per-class counts and never drop a
            class below ``min_per_class``: a ``[N]`` tensor or sequence, or a function
            ``dataset -> [N]`` called on the training dataset.
        min_per_class: the class safeguard (needs ``labels``).
        temperature: reweight mode: width of the weight transition, ``> 0``.
        floor: reweight mode: the weight of the most suspect examples, in ``[0, 1]``.
        scores: an earlier run's scoring event(s): a ``ScoringEvent``, an event folder, or a folder
            of events (the newest is read), or a list of these.
        seed: shuffle seed of the train sampler (default: ``PL_GLOBAL_SEED``, else 0).
        write_files: write ``dropped.csv`` (or ``weights.csv``) beside the scores.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> class Digits(pl.LightningDataModule):
        ...     def train_dataloader(self):
        ...         return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
        >>> dm = InfluenceDataModule(Digits(), mode="drop", fraction=0.25)
        >>> dm.add_event(ScoringEvent(0, 2, torch.arange(8.0), torch.ones(1)))
        >>> loader = dm.train_dataloader()
        >>> sorted(i for i in loader.sampler)
        [0, 1, 2, 3, 4, 5]
    """

    def __init__(
        self,
        datamodule: pl.LightningDataModule,
        mode: PruneMode = "drop",
        fraction: float = 0.1,
        *,
        start_epoch: int = 0,
        max_dropped: int | float | None = None,
        cumulative: bool = False,
        combine: pruning.CombineMode = "latest",
        labels: LabelsArg = None,
        min_per_class: int = 1,
        temperature: float = 0.05,
        floor: float = 0.0,
        scores: ScoresSource | Sequence[ScoresSource] | None = None,
        seed: int | None = None,
        write_files: bool = True,
    ) -> None:
        if not isinstance(datamodule, pl.LightningDataModule):
            raise TypeError(
                f"datamodule={type(datamodule).__name__} is not a LightningDataModule: wrap a "
                "LightningDataModule (LightningDataModule.from_datasets(...) builds one)"
            )
        if not is_overridden("train_dataloader", datamodule):
            raise ValueError(
                f"datamodule={type(datamodule).__name__} has no train_dataloader(): "
                "InfluenceDataModule prunes the training set, so the wrapped module must define one"
            )
        if mode not in ("drop", "reweight"):
            raise ValueError(f"mode={mode!r} is not one of 'drop', 'reweight'")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(
                f"fraction={fraction!r} must be in [0, 1): the share of the training set "
                f"{'dropped' if mode == 'drop' else 'down-weighted'} (0.1 = 10%)"
            )
        if start_epoch < 0:
            raise ValueError(f"start_epoch={start_epoch} must be >= 0")
        if max_dropped is not None and (
            max_dropped < 0 or (isinstance(max_dropped, float) and max_dropped > 1.0)
        ):
            raise ValueError(
                f"max_dropped={max_dropped!r} must be a count >= 0 (int) or a share of the "
                "dataset in [0, 1] (float)"
            )
        if combine not in ("latest", "mean"):
            raise ValueError(f"combine={combine!r} is not one of 'latest', 'mean'")
        if min_per_class < 0:
            raise ValueError(f"min_per_class={min_per_class} must be >= 0")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be > 0 (e.g. 0.05)")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"floor={floor!r} must be in [0, 1]")
        super().__init__()
        self._wrapped = datamodule
        self.mode: PruneMode = mode
        self.fraction = float(fraction)
        self.start_epoch = start_epoch
        self.max_dropped = max_dropped
        self.cumulative = cumulative
        self.combine: pruning.CombineMode = combine
        self.labels_arg = labels
        self.min_per_class = min_per_class
        self.temperature = float(temperature)
        self.floor = float(floor)
        self.seed = seed
        self.write_files = write_files
        if scores is None:
            sources: list[ScoresSource] = []
        elif isinstance(scores, (str, os.PathLike, ScoringEvent)):
            sources = [scores]
        else:
            sources = list(scores)
        self.seed_events: list[ScoringEvent] = [_load_scores(s) for s in sources]
        self.added_events: list[ScoringEvent] = []

        for name in _DELEGATED_HOOKS:
            setattr(self, name, getattr(datamodule, name))
        self.prepare_data_per_node = datamodule.prepare_data_per_node
        self.allow_zero_length_dataloader_with_multiple_devices = (
            datamodule.allow_zero_length_dataloader_with_multiple_devices
        )
        self._log_hyperparams = datamodule._log_hyperparams

        self._loader: DataLoader | None = None
        self._size: int | None = None
        self.labels: Tensor | None = None
        self._plan: SamplingPlan | None = None
        self._plan_key: tuple[str, ...] = ()
        self._reload_setting: int | None = None
        self._inner_reloads = False

    # -- the wrapped module ------------------------------------------------------------------

    @property
    def datamodule(self) -> pl.LightningDataModule:
        """The wrapped LightningDataModule."""
        return self._wrapped

    @property
    def keep_mask(self) -> Tensor | None:
        """``[N]`` bool, the examples the current epoch trains on (drop mode, once pruning began)."""
        return None if self._plan is None else self._plan.keep

    @property
    def weights(self) -> Tensor | None:
        """``[N]`` float64 sampling weights (reweight mode, once reweighting began)."""
        return None if self._plan is None else self._plan.weights

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
        trainer = self.trainer
        if stage == "fit" and self.mode == "drop" and trainer is not None:
            # Lightning reads the train loader's length once per load; dropped epochs are shorter.
            self._inner_reloads = trainer.reload_dataloaders_every_n_epochs > 0
            if trainer.reload_dataloaders_every_n_epochs != 1:
                self._reload_setting = trainer.reload_dataloaders_every_n_epochs
                trainer.reload_dataloaders_every_n_epochs = 1

    @override
    def teardown(self, stage: str) -> None:
        try:
            self._wrapped.teardown(stage)
        finally:
            if self._reload_setting is not None and self.trainer is not None:
                self.trainer.reload_dataloaders_every_n_epochs = self._reload_setting
                self._reload_setting = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "wrapped": self._wrapped.state_dict(),
            "influence": {
                "mode": self.mode,
                "fraction": self.fraction,
                "size": self._size,
                "plan_key": list(self._plan_key),
                "keep": None if self._plan is None else self._plan.keep,
                "weights": None if self._plan is None else self._plan.weights,
                "added_events": [e.state_dict() for e in self.added_events],
            },
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._wrapped.load_state_dict(state_dict.get("wrapped", {}))
        state = state_dict.get("influence")
        if state is None:
            return
        self.added_events = [ScoringEvent.from_state_dict(s) for s in state["added_events"]]
        self._plan_key = tuple(state["plan_key"])
        if state["size"] is not None:
            self._plan = SamplingPlan(state["size"], keep=state["keep"], weights=state["weights"])

    # -- the train loader ----------------------------------------------------------------------

    @override
    def train_dataloader(self) -> DataLoader:
        if self._loader is None or self._inner_reloads:
            self._loader = self._wrap_loader(self._wrapped.train_dataloader())
        trainer = self.trainer
        self.refresh(trainer.current_epoch if trainer is not None else 0)
        return self._loader

    def _wrap_loader(self, loader: Any) -> DataLoader:
        name = type(self._wrapped).__name__
        if not isinstance(loader, DataLoader):
            raise TypeError(
                f"{name}.train_dataloader() returned {type(loader).__name__}; InfluenceDataModule "
                "needs one torch DataLoader over a map-style dataset"
            )
        dataset = loader.dataset
        if isinstance(dataset, IterableDataset):
            raise TypeError(
                f"{name}.train_dataloader() iterates an IterableDataset ({type(dataset).__name__}): "
                "it has no dataset indices to score or drop; use a map-style Dataset "
                "(__getitem__ and __len__)"
            )
        if loader.batch_sampler is None or type(loader.batch_sampler) is not BatchSampler:
            raise TypeError(
                f"{name}.train_dataloader() uses batch_sampler={type(loader.batch_sampler).__name__}"
                "; InfluenceDataModule needs a DataLoader built with batch_size= (it replaces the "
                "sampler)"
            )
        sampler = loader.sampler
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        if isinstance(sampler, RandomSampler) and not sampler.replacement:
            shuffle = True
        elif isinstance(sampler, SequentialSampler):
            shuffle = False
        elif isinstance(sampler, DistributedSampler) and not isinstance(sampler, InfluenceSampler):
            shuffle = sampler.shuffle
            seed = self.seed if self.seed is not None else sampler.seed
        else:
            raise TypeError(
                f"{name}.train_dataloader() uses sampler={type(sampler).__name__}; "
                "InfluenceDataModule replaces the sampler: build the DataLoader with shuffle=True "
                "or False, and use mode='reweight' for weighted sampling"
            )
        self._size = len(dataset)  # type: ignore[arg-type]
        self.labels = self._resolve_labels(dataset)
        if self._plan is not None and self._plan.size != self._size:
            raise ValueError(
                f"the restored keep-mask covers {self._plan.size} examples but the training "
                f"dataset has {self._size}: resume with the same training set"
            )
        trainer = self.trainer
        ours = InfluenceSampler(
            dataset,
            self._current_plan,
            on_epoch=self.refresh,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=shuffle,
            seed=seed,
        )
        kwargs: dict[str, Any] = {}
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
            kwargs["persistent_workers"] = loader.persistent_workers
        return DataLoader(
            dataset,
            batch_size=loader.batch_size,
            sampler=ours,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator,
            pin_memory_device=loader.pin_memory_device,
            in_order=getattr(loader, "in_order", True),
            **kwargs,
        )

    def _resolve_labels(self, dataset: Dataset) -> Tensor | None:
        labels = self.labels_arg
        if labels is None:
            return None
        if callable(labels) and not isinstance(labels, Tensor):
            labels = labels(dataset)
        out = torch.as_tensor(labels).detach().cpu().long().flatten()
        if out.numel() != self._size:
            raise ValueError(
                f"labels has {out.numel()} entries but the training dataset has {self._size}: "
                "pass one class label per training example, in dataset index order"
            )
        return out

    # -- the plan ------------------------------------------------------------------------------

    def _current_plan(self) -> SamplingPlan:
        if self._plan is None:
            assert self._size is not None
            self._plan = SamplingPlan(self._size)
        return self._plan

    def add_event(self, event: ScoringEvent) -> None:
        """Feed scores computed outside ``InfluenceCallback``; they count from the next epoch."""
        self.added_events.append(event)

    def events(self) -> list[tuple[str, ScoringEvent]]:
        """Every known scoring event with its source, oldest first: seeds, then this run's."""
        run: list[tuple[str, ScoringEvent]] = [("added", e) for e in self.added_events]
        for callback in self._influence_callbacks():
            run.extend(("callback", e) for e in callback.events)
        run.sort(key=lambda item: (item[1].global_step, item[1].epoch))
        return [("seed", e) for e in self.seed_events] + run

    def _influence_callbacks(self) -> list[InfluenceCallback]:
        trainer = self.trainer
        if trainer is None:
            return []
        return [c for c in trainer.callbacks if isinstance(c, InfluenceCallback)]

    def refresh(self, epoch: int) -> SamplingPlan:
        """Bring the keep-mask or weights up to date for ``epoch``; returns the plan.

        Called before every epoch (by the sampler's ``set_epoch`` and by ``train_dataloader``).
        A new plan is computed only when the set of events it depends on changed.
        """
        if self._size is None:
            raise RuntimeError("InfluenceDataModule.refresh() needs train_dataloader() first")
        events = self.events() if epoch >= self.start_epoch else []
        if events and self.combine == "latest":
            events = events[-1:]
        key = tuple(f"{src}:{e.directory or e.name}" for src, e in events)
        if key == self._plan_key and self._plan is not None:
            return self._plan
        self._plan_key = key
        if not events:
            self._plan = SamplingPlan(self._size)
            return self._plan
        for _, e in events:
            if e.self_influence.numel() != self._size:
                raise ValueError(
                    f"scoring event {e.name} ({e.directory or 'in memory'}) has "
                    f"{e.self_influence.numel()} scores but the training dataset has "
                    f"{self._size} examples: scores must come from the same training set"
                )
        scores = pruning.combine_scores([e.self_influence for _, e in events], self.combine)
        if self.mode == "drop":
            kept = None
            if self.cumulative and self._plan is not None and self._plan.keep is not None:
                kept = self._plan.keep
            cap = self.max_dropped
            if isinstance(cap, float):
                cap = int(cap * self._size)
            keep = pruning.drop_mask(
                scores,
                self.fraction,
                kept=kept,
                max_dropped=cap,
                labels=self.labels,
                min_per_class=self.min_per_class,
            )
            self._plan = SamplingPlan(self._size, keep=keep)
        else:
            weights = pruning.reweight(
                scores,
                self.fraction,
                temperature=self.temperature,
                floor=self.floor,
                labels=self.labels,
                min_per_class=self.min_per_class,
            )
            self._plan = SamplingPlan(self._size, weights=weights)
        self._report(epoch, events[-1], scores)
        return self._plan

    # -- what users see -----------------------------------------------------------------------

    def _report(self, epoch: int, newest: tuple[str, ScoringEvent], scores: Tensor) -> None:
        trainer = self.trainer
        plan = self._plan
        assert plan is not None
        source, event = newest
        metrics: dict[str, float] = {}
        if plan.keep is not None:
            dropped = ~plan.keep
            metrics["influence_data/kept"] = float(plan.keep.sum())
            metrics["influence_data/dropped"] = float(dropped.sum())
            if self.labels is not None:
                classes = torch.unique(self.labels)
                for c in classes.tolist():
                    n = int((dropped & (self.labels == c)).sum())
                    metrics[f"influence_data/dropped_class_{c}"] = float(n)
            message = f"dropping {int(dropped.sum())} of {plan.size} training examples"
        else:
            w = plan.weights
            assert w is not None
            metrics["influence_data/weight_min"] = float(w.min())
            metrics["influence_data/weight_mean"] = float(w.mean())
            metrics["influence_data/weight_max"] = float(w.max())
            # Kish's effective sample size of the weighted draw: (sum w)^2 / sum w^2
            metrics["influence_data/effective_size"] = float(w.sum() ** 2 / (w**2).sum())
            message = (
                f"reweighting {plan.size} training examples (effective size "
                f"{metrics['influence_data/effective_size']:.0f})"
            )
        rank_zero_info(
            f"InfluenceDataModule: {message} from epoch {epoch} (scores: {event.name}, "
            f"combine={self.combine!r})"
        )
        # `trainer.log_dir` is a collective under DDP: every rank asks, whatever the event.
        log_dir = None if trainer is None else (trainer.log_dir or trainer.default_root_dir)
        folder = self._plan_dir(source, event, log_dir) if self.write_files else None
        if trainer is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if plan.weights is not None and isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram(
                    "influence_data/weights", plan.weights, trainer.global_step
                )
        if folder is not None:
            try:
                self._write_plan(folder, scores)
            except OSError as err:
                rank_zero_warn(f"InfluenceDataModule could not write the dropped indices: {err}")

    def _plan_dir(self, source: str, event: ScoringEvent, log_dir: str | None) -> Path | None:
        if source != "seed" and event.directory is not None:
            return Path(event.directory)
        if log_dir is None:
            return None
        # An earlier run's folder is left untouched: the plan goes under this run's log dir.
        return Path(log_dir) / "influence" / f"{event.name}-{source}"

    def _write_plan(self, folder: Path, scores: Tensor) -> None:
        plan = self._plan
        assert plan is not None
        labels = self.labels
        if plan.keep is not None:
            dropped = torch.nonzero(~plan.keep).flatten().tolist()
            header = "index,label,score\n" if labels is not None else "index,score\n"

            def write(handle: Any) -> None:
                handle.write(header)
                for i in dropped:
                    label = f"{int(labels[i])}," if labels is not None else ""
                    handle.write(f"{i},{label}{float(scores[i])!r}\n")

            atomic_write(folder / DROPPED_FILE, write)
        else:
            weights = plan.weights
            assert weights is not None

            def write(handle: Any) -> None:
                handle.write("index,weight\n")
                handle.writelines(f"{i},{w!r}\n" for i, w in enumerate(weights.tolist()))

            atomic_write(folder / WEIGHTS_FILE, write)
