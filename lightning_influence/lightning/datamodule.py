"""``InfluenceDataModule``: wrap any LightningDataModule so later epochs drop or down-weight the
training examples that self-influence marks as suspect (mislabeled, atypical).

    dm = InfluenceDataModule(MyDataModule(), mode="drop", fraction=0.1)
    trainer = Trainer(callbacks=[InfluenceCallback(every_n_epochs=5)])
    trainer.fit(model, datamodule=dm)

After each scoring event of ``InfluenceCallback`` (at the end of an epoch), the following epochs'
train loader samples only the kept examples (``drop``) or samples with weights that decrease with
self-influence (``reweight``). The train DataLoader keeps ``.dataset`` = the wrapped, full training
dataset and its batches keep their structure: only the sampler changes (``InfluenceSampler``), and
it reads the current plan every epoch.

This module only orchestrates: the wrapping is ``delegation``, the plan ``pruning.plan_for``, the
loader copy ``loaders.with_sampler``, the files ``io.plan_files``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
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

from lightning_influence.config import PruneMode, PruningConfig, with_overrides
from lightning_influence.io.events import EventRef, EventSource, ScoringEvent, load_events
from lightning_influence.io.plan_files import write_plan
from lightning_influence.lightning.callback import InfluenceCallback
from lightning_influence.lightning.delegation import DelegatingDataModule
from lightning_influence.lightning.loaders import with_sampler
from lightning_influence.lightning.loggers import PlanView, log_plan
from lightning_influence.lightning.namespaces import (
    AnyLightningDataModule,
    MisconfigurationException,
)
from lightning_influence.lightning.sampler import InfluenceSampler
from lightning_influence.pruning.plan import (
    SamplingPlan,
    plan_events,
    plan_for,
    scoring_candidates,
)
from lightning_influence.pruning.signals import resolve_selection, signal_spec, suspicion

__all__ = ["InfluenceDataModule", "PruneMode"]

LabelsArg = Tensor | Sequence[int] | Callable[[Dataset], Any] | None


class InfluenceDataModule(DelegatingDataModule):
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

    ``datamodule`` and the ``Trainer`` come from one namespace, ``pytorch_lightning`` or
    ``lightning.pytorch``; the wrapper is a ``LightningDataModule`` of both.

    Scores come from the ``InfluenceCallback`` instances in ``trainer.callbacks`` (their
    ``events``), from ``add_event`` and from ``scores=`` (an earlier run's event, so a fresh run can
    start pruned). ``combine="latest"`` uses the newest event, ``"mean"`` the mean quantile over
    all events, ``"normalized_sum"`` the sum over events of each event's scores over their mean. Nothing changes before ``start_epoch``. A newer event always makes a new plan
    (plans are keyed by the events' uids), even one of an (epoch, step) already seen.

    In drop mode the epoch length changes, so the wrapper sets the trainer's
    ``reload_dataloaders_every_n_epochs`` to 1 during ``fit`` (restored at teardown) to make
    Lightning re-read it: the train DataLoader object itself is built once and returned again, and
    the val loaders are asked for again every epoch.

    Distributed: the sampler shards itself (Lightning leaves it alone, see ``sampler.py``); every
    rank computes the same plan from the same events, seed and epoch.

    Args:
        datamodule: the LightningDataModule to wrap; its hooks, loaders and state keep working.
        config: what is dropped or down-weighted, a ``PruningConfig``; None: the defaults. In a
            LightningCLI YAML file it is a nested mapping (``config: {fraction: 0.2}``).
        labels: the class of every training example, to log per-class counts and never drop a
            class below ``min_per_class``: a ``[N]`` tensor or sequence, or a function
            ``dataset -> [N]`` called on the training dataset.
        source: where the events come from: an ``InfluenceCallback`` (its events, as they are
            made), an earlier run's event (a ``ScoringEvent``, an event folder, or a folder of
            events: the newest is read, so a fresh run can start pruned), or a list of these.
            None: the ``InfluenceCallback`` of the fit connects itself (with two of them, name
            one here).
        scores: the old name of ``source`` for events and folders.
        known_noise: for experiments with injected noise: ``[N]`` bool, True for the examples
            known to be mislabeled (or a function ``dataset -> [N]``); the loggers then get the
            precision and recall of the dropped set against it.
        **overrides: ``PruningConfig`` fields replacing those of ``config`` (``mode="drop"``,
            ``fraction=0.2``, ...), documented on ``PruningConfig``.

    Attributes:
        config: the ``PruningConfig``.

    Example:
        >>> import pytorch_lightning as pl
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
        datamodule: AnyLightningDataModule,
        config: PruningConfig | None = None,
        *,
        labels: LabelsArg = None,
        source: Any = None,
        scores: EventSource | Sequence[EventSource] | None = None,
        known_noise: LabelsArg = None,
        **overrides: Any,
    ) -> None:
        if config is not None and not isinstance(config, PruningConfig):
            raise TypeError(
                f"config={config!r} is not a PruningConfig: pass "
                "lightning_influence.PruningConfig(...), or its fields as keywords"
            )
        try:
            config = with_overrides(PruningConfig, config, overrides)
        except TypeError as err:
            if "unexpected keyword argument" not in str(err):
                raise
            raise TypeError(
                f"InfluenceDataModule: {err}; the options are the fields of "
                "lightning_influence.PruningConfig"
            ) from None
        super().__init__(datamodule)
        self.config = config
        self.labels_arg = labels
        self.known_noise_arg = known_noise
        self.known_noise: Tensor | None = None
        if scores is not None and source is not None:
            raise TypeError("pass source= (scores= is its old name), not both")
        sources = source if source is not None else scores
        if sources is None:
            sources = []
        elif not isinstance(sources, (list, tuple)):
            sources = [sources]
        self.callbacks: list[InfluenceCallback] = [
            s for s in sources if isinstance(s, InfluenceCallback)
        ]
        self._explicit_callbacks = bool(self.callbacks)
        files = [s for s in sources if not isinstance(s, InfluenceCallback)]
        try:
            self.seed_events: list[ScoringEvent] = load_events(files)
        except FileNotFoundError as err:
            given = "scores" if scores is not None else "source"
            raise FileNotFoundError(f"{given}={files!r}: {err}") from None
        self.added_events: list[ScoringEvent] = []
        self._loader: DataLoader | None = None
        self._size: int | None = None
        self.labels: Tensor | None = None
        self._plan: SamplingPlan | None = None
        self._reload_setting: int | None = None
        self._inner_reloads = False

    # -- what the plan says ----------------------------------------------------------------------

    @property
    def plan(self) -> SamplingPlan | None:
        """The plan the current epoch follows (None before the train loader was built)."""
        return self._plan

    @property
    def keep_mask(self) -> Tensor | None:
        """``[N]`` bool, the examples the current epoch trains on (drop mode, once pruning began)."""
        return None if self._plan is None else self._plan.keep

    @property
    def sampling_weights(self) -> Tensor | None:
        """``[N]`` float64 sampling weights (reweight mode, once reweighting began)."""
        return None if self._plan is None else self._plan.weights

    @property
    def weights(self) -> Tensor | None:
        """Deprecated name of ``sampling_weights``."""
        warnings.warn(
            "InfluenceDataModule.weights is now .sampling_weights", DeprecationWarning, stacklevel=2
        )
        return self.sampling_weights

    # -- Lightning hooks -------------------------------------------------------------------------

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = self.trainer
        if stage == "fit" and self.config.mode == "drop" and trainer is not None:
            # Lightning reads the train loader's length once per load; dropped epochs are shorter.
            self._inner_reloads = trainer.reload_dataloaders_every_n_epochs > 0
            if trainer.reload_dataloaders_every_n_epochs != 1:
                self._reload_setting = trainer.reload_dataloaders_every_n_epochs
                trainer.reload_dataloaders_every_n_epochs = 1

    @override
    def teardown(self, stage: str) -> None:
        try:
            super().teardown(stage)
        finally:
            if self._reload_setting is not None and self.trainer is not None:
                self.trainer.reload_dataloaders_every_n_epochs = self._reload_setting
                self._reload_setting = None

    @override
    def state_dict(self) -> dict[str, Any]:
        plan = self._plan
        state = super().state_dict()
        known = {e.uid: e for _, e in self.events()}
        used = [known[uid] for uid in (plan.events if plan is not None else ()) if uid in known]
        state["influence"] = {
            "version": 2,
            "config": dataclasses.asdict(self.config),
            "size": self._size if plan is None else plan.size,
            "events": [] if plan is None else list(plan.events),
            # the plan's events by reference (their folders are the source of truth)
            "event_refs": [e.ref().state_dict() for e in used if e.directory is not None],
            "signal": [] if plan is None else list(plan.signal),
            # the mask itself too: a cumulative plan depends on every earlier one
            "keep": None if plan is None else plan.keep,
            "weights": None if plan is None else plan.weights,
            "added_events": [e.state_dict() for e in self.added_events],
        }
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        state = state_dict.get("influence")
        if state is None:
            return
        self.added_events = [ScoringEvent.from_state_dict(s) for s in state["added_events"]]
        if state["size"] is None:
            return
        restored = SamplingPlan(
            state["size"],
            keep=state["keep"],
            weights=state["weights"],
            events=tuple(state.get("events", ())),
            signal=tuple(state.get("signal", ())),
        )
        refs = [EventRef.from_state_dict(r) for r in state.get("event_refs", [])]
        if refs and len(refs) == len(restored.events) and not self.config.cumulative:
            # Rebuilt from the event folders: the same plan, or a clear error if they changed.
            events = [ref.resolve() for ref in refs]
            rebuilt = plan_for(events, self.config, restored.size, labels=None)
            same = (
                torch.equal(rebuilt.keep, restored.keep)
                if rebuilt.keep is not None and restored.keep is not None
                else rebuilt.keep is None and restored.keep is None
            )
            if same or self.labels_arg is not None:  # the class safeguard needs the labels
                restored = dataclasses.replace(restored, scores=rebuilt.scores)
            else:
                raise ValueError(
                    "the event folders of the checkpoint's pruning plan no longer give the plan "
                    f"it saved ({', '.join(r.directory for r in refs)}): resume with the folders "
                    "the run wrote"
                )
        self._plan = restored

    @override
    def train_dataloader(self) -> DataLoader:
        if self._loader is None or self._inner_reloads:
            self._loader = self._wrap_loader(super().train_dataloader())
        trainer = self.trainer
        self.update_plan(trainer.current_epoch if trainer is not None else 0)
        return self._loader

    # -- the train loader ------------------------------------------------------------------------

    def _wrap_loader(self, loader: Any) -> DataLoader:
        name = type(self.datamodule).__name__
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
        seed = self.config.seed
        if isinstance(sampler, RandomSampler) and not sampler.replacement:
            shuffle = True
        elif isinstance(sampler, SequentialSampler):
            shuffle = False
        elif isinstance(sampler, DistributedSampler) and not isinstance(sampler, InfluenceSampler):
            shuffle = sampler.shuffle
            seed = seed if seed is not None else sampler.seed
        else:
            raise TypeError(
                f"{name}.train_dataloader() uses sampler={type(sampler).__name__}; "
                "InfluenceDataModule replaces the sampler: build the DataLoader with shuffle=True "
                "or False, and use mode='reweight' for weighted sampling"
            )
        if seed is None:
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self._size = len(dataset)  # type: ignore[arg-type]
        labels = self._per_example(self.labels_arg, dataset, "labels")
        self.labels = None if labels is None else labels.long()
        noise = self._per_example(self.known_noise_arg, dataset, "known_noise")
        self.known_noise = None if noise is None else noise.bool()
        if self._plan is not None and self._plan.size != self._size:
            raise ValueError(
                f"the restored keep-mask covers {self._plan.size} examples but the training "
                f"dataset has {self._size}: resume with the same training set"
            )
        trainer = self.trainer
        ours = InfluenceSampler(
            dataset,
            self._current_plan,
            on_epoch=self.update_plan,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=shuffle,
            seed=seed,
        )
        return with_sampler(loader, ours)

    def _per_example(self, value: LabelsArg, dataset: Dataset, what: str) -> Tensor | None:
        if value is None:
            return None
        if callable(value) and not isinstance(value, Tensor):
            value = value(dataset)
        out = torch.as_tensor(value).detach().cpu().flatten()
        if out.numel() != self._size:
            raise ValueError(
                f"{what} has {out.numel()} entries but the training dataset has {self._size}: "
                "pass one value per training example, in dataset index order"
            )
        return out

    # -- the plan --------------------------------------------------------------------------------

    def _current_plan(self) -> SamplingPlan:
        if self._plan is None:
            assert self._size is not None
            self._plan = SamplingPlan(self._size)
        return self._plan

    def add_event(self, event: ScoringEvent) -> None:
        """Feed scores computed outside ``InfluenceCallback``; they count from the next epoch."""
        self.added_events.append(event)

    def connect(self, callback: InfluenceCallback) -> None:
        """Take ``callback``'s events (``InfluenceCallback.setup`` calls this when this wrapper
        was given no callback in ``source``).

        Raises:
            MisconfigurationException: a second, different callback (which one is meant is
                ambiguous: name it in ``source=``).
        """
        if self._explicit_callbacks or callback in self.callbacks:
            return
        if self.callbacks:
            raise MisconfigurationException(
                f"two InfluenceCallbacks ({self.callbacks[0].name!r} and {callback.name!r}) could "
                "feed this InfluenceDataModule: pass the one to prune by as "
                "InfluenceDataModule(..., source=callback)"
            )
        self.callbacks.append(callback)

    def ranking(self, signals: dict[str, Tensor]) -> tuple[str, Tensor] | None:
        """``(name, [N] suspicion)`` of the signals this wrapper prunes by, for showing the most
        suspect examples as the plan sees them; None when the event cannot give it."""
        try:
            names = resolve_selection(self.config.signal, list(signals))
        except (KeyError, ValueError):
            return None
        return " + ".join(names), suspicion(signals, names)

    def scoring_candidates(
        self, free: dict[str, Tensor], analysed: Sequence[str], multiple: float | None
    ) -> Tensor | None:
        """The dataset indices an analysis feeding this plan must score (None: all of them):
        ``lightning_influence.pruning.plan.scoring_candidates`` for this wrapper's config and
        keep-mask."""
        if self._size is None:
            return None
        kept = self._plan.keep if self._plan is not None else None
        return scoring_candidates(self.config, free, analysed, multiple, kept=kept)

    def needs_validation(self) -> list[str]:
        """The selected signals that only a validation set gives (empty for ``"auto"``, which
        falls back to a training signal)."""
        names = [self.config.signal] if isinstance(self.config.signal, str) else self.config.signal
        return [n for n in names if n != "auto" and signal_spec(n).needs_validation]

    def events(self) -> list[tuple[str, ScoringEvent]]:
        """Every known scoring event with its source, oldest first: seeds, then this run's."""
        run: list[tuple[str, ScoringEvent]] = [("added", e) for e in self.added_events]
        for callback in self.callbacks:
            run.extend(("callback", e) for e in callback.events)
        # stable: events of one (step, epoch) keep the order they were made in
        run.sort(key=lambda item: (item[1].global_step, item[1].epoch))
        return [("seed", e) for e in self.seed_events] + run

    def update_plan(self, epoch: int) -> SamplingPlan:
        """Bring the keep-mask or weights up to date for ``epoch``; returns the plan.

        Called before every epoch (by the sampler's ``set_epoch`` and by ``train_dataloader``).
        A new plan is made only when the events it depends on (by uid) changed.
        """
        if self._size is None:
            raise RuntimeError("InfluenceDataModule.update_plan() needs train_dataloader() first")
        known = self.events()
        chosen = plan_events([e for _, e in known], self.config, epoch)
        uids = tuple(e.uid for e in chosen)
        if self._plan is not None and uids == self._plan.events:
            return self._plan
        self._plan = plan_for(
            chosen, self.config, self._size, previous=self._plan, labels=self.labels
        )
        if chosen:
            source = next(src for src, e in known if e is chosen[-1])
            self._report(epoch, source, chosen[-1])
        return self._plan

    def refresh(self, epoch: int) -> SamplingPlan:
        """Deprecated name of ``update_plan``."""
        warnings.warn(
            "InfluenceDataModule.refresh() is now update_plan()", DeprecationWarning, stacklevel=2
        )
        return self.update_plan(epoch)

    # -- what users see --------------------------------------------------------------------------

    def _report(self, epoch: int, source: str, event: ScoringEvent) -> None:
        trainer = self.trainer
        plan = self._plan
        assert plan is not None
        metrics = _plan_metrics(plan, self.labels, self.known_noise)
        if plan.keep is not None:
            message = f"dropping {int((~plan.keep).sum())} of {plan.size} training examples"
        else:
            message = (
                f"reweighting {plan.size} training examples (effective size "
                f"{metrics['influence_data/effective_size']:.0f})"
            )
        rank_zero_info(
            f"InfluenceDataModule: {message} from epoch {epoch} by {' + '.join(plan.signal)} "
            f"(events: {event.name}, combine={self.config.combine!r})"
        )
        # `trainer.log_dir` is a collective under DDP: every rank asks, whatever the event.
        log_dir = None if trainer is None else (trainer.log_dir or trainer.default_root_dir)
        folder = _plan_dir(source, event, log_dir) if self.config.write_files else None
        if trainer is None or not trainer.is_global_zero:
            return
        sections = {"pruning"} if plan.keep is not None else {"weights"}
        if self.labels is not None and plan.keep is not None:
            sections.add("per_class")
        if self.known_noise is not None and plan.keep is not None:
            sections.add("known_noise")
        log_plan(trainer.loggers, PlanView(metrics, trainer.global_step, plan.weights, sections))
        if folder is not None:
            try:
                write_plan(
                    folder,
                    keep=plan.keep,
                    weights=plan.weights,
                    scores=plan.scores,
                    labels=self.labels,
                )
            except OSError as err:
                rank_zero_warn(f"InfluenceDataModule could not write the plan's file: {err}")


def _plan_metrics(
    plan: SamplingPlan, labels: Tensor | None, known_noise: Tensor | None = None
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if plan.keep is not None:
        dropped = ~plan.keep
        metrics["influence_data/kept"] = float(plan.keep.sum())
        metrics["influence_data/dropped"] = float(dropped.sum())
        if known_noise is not None:
            hits = float((dropped & known_noise).sum())
            metrics["influence_data/precision_vs_known_noise"] = hits / max(float(dropped.sum()), 1)
            metrics["influence_data/recall_vs_known_noise"] = hits / max(
                float(known_noise.sum()), 1
            )
        if labels is not None:
            for c in torch.unique(labels).tolist():
                metrics[f"influence_data/dropped_class_{c}"] = float(
                    (dropped & (labels == c)).sum()
                )
        return metrics
    w = plan.weights
    assert w is not None
    metrics["influence_data/weight_min"] = float(w.min())
    metrics["influence_data/weight_mean"] = float(w.mean())
    metrics["influence_data/weight_max"] = float(w.max())
    # Kish's effective sample size of the weighted draw: (sum w)^2 / sum w^2
    metrics["influence_data/effective_size"] = float(w.sum() ** 2 / (w**2).sum())
    return metrics


def _plan_dir(source: str, event: ScoringEvent, log_dir: str | None) -> Path | None:
    if source != "seed" and event.directory is not None:
        return Path(event.directory)
    if log_dir is None:
        return None
    # An earlier run's folder is left untouched: the plan goes under this run's log dir.
    return Path(log_dir) / "influence" / "plans" / f"{event.name}-{source}"
