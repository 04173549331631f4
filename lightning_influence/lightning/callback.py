"""``InfluenceCallback``: Arnoldi influence functions inside a Lightning ``Trainer``.

At the end of every ``every_n_epochs``-th training epoch, at the end of training, on demand
(``callback.analyze(trainer, pl_module)``) and for a saved checkpoint
(``InfluenceCallback.analyze_checkpoint``), the callback

1. fits ``ArnoldiInfluence`` on a fixed, seeded sample of the training data (the HVP sample):
   the top-k eigenpairs ``(lambda_i, e_i)`` of the Hessian H of the mean training loss;
2. scores every training example, in dataset-index order, with its self-influence
   ``I(x, x) = sum_i w_i <e_i, g_x>^2``, ``w_i ~ 1 / lambda_i``;
3. writes ``<trainer.log_dir>/influence/epoch=E-step=S/`` (see ``lightning_influence.io.events``)
   and logs spectra, histograms and the most self-influential examples to the trainer's loggers.

It runs on every accelerator and strategy the Trainer runs on: batches move through
``trainer.strategy.batch_to_device`` (the batch-transfer hooks apply); under DDP every rank computes
HVPs on its share of the HVP sample, summed with one collective per product, scoring is sharded
over ranks and gathered, and global zero writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset
from typing_extensions import override

from lightning_influence.config import ArnoldiConfig
from lightning_influence.core.functional_loss import LossFn
from lightning_influence.core.hvp import HVPMode
from lightning_influence.core.parameters import ParamSelector, select_parameters
from lightning_influence.core.projection import ProjectionMode
from lightning_influence.core.scores import EigenvaluePolicy
from lightning_influence.engines.arnoldi import ArnoldiInfluence
from lightning_influence.io.events import ScoringEvent, write_event
from lightning_influence.lightning.loggers import log_event
from lightning_influence.lightning.runtime import (
    Runtime,
    preserved_rng_states,
    score_shard,
    standalone_transfer,
)

if TYPE_CHECKING:
    import pandas

__all__ = ["InfluenceCallback"]

_STATE_VERSION = 1
_CONTROLLED = (
    "n_iters",
    "top_k",
    "seed",
    "eigenvalue_policy",
    "projection",
    "hvp_mode",
    "progress",
)
Trigger = Literal["epoch_end", "train_end", "manual", "checkpoint"]


def _module_influence_loss(model: nn.Module, batch: Any) -> Tensor:
    """``loss_fn`` that defers to the LightningModule's ``influence_loss(batch)`` method."""
    return model.influence_loss(batch)


class InfluenceCallback(Callback):
    r"""Eigenvalue spectra and self-influence of the training set while a ``Trainer`` fits.

    Self-influence ``I(x, x) = sum_i w_i <e_i, g_x>^2`` (``w_i ~ 1 / lambda_i``, ``(lambda_i, e_i)``
    the top eigenpairs of the Hessian of the training loss, ``g_x`` the gradient of example x's
    loss) is high for mislabeled and atypical examples (Schioppa et al., AAAI 2022).

    The per-example loss comes from ``loss_fn(model, batch) -> Tensor[B]`` or, when it is None,
    from the LightningModule's ``influence_loss(self, batch) -> Tensor[B]`` method.

    Args:
        loss_fn: per-example losses of a training batch (``reduction="none"``); e.g.
            ``lightning_influence.losses.cross_entropy_loss`` for ``(inputs, class-index targets)``.
        every_n_epochs: analyse at the end of every n-th training epoch; 0 analyses only at the end
            of training.
        at_train_end: also analyse at the end of training (skipped when the last epoch-end analysis
            already saw the final weights).
        n_iters: Arnoldi iterations (Hessian-vector products per analysis).
        top_k: eigenpairs kept (at most ``n_iters``).
        hvp_samples: size of the HVP sample, drawn once from the training dataset without
            replacement with ``seed`` and fixed for the run; None uses the whole dataset.
        seed: seeds the HVP sample and Arnoldi's start vector (own generators: the training RNG
            streams are not touched).
        params: the parameters to analyse (names, module prefixes, globs or a predicate; default:
            every parameter that requires grad).
        eigenvalue_policy: how ``1 / lambda`` is formed (``abs``, ``signed``, ``positive``,
            ``damped``; see ``lightning_influence.core.scores.inverse_eigenvalues``).
        projection: projected gradients by ``jvp``, ``grad`` or ``auto`` (the faster).
        hvp_mode: ``fwd-rev``, ``rev-rev`` or ``auto``.
        batch_size: batch size of the HVP and scoring loaders; None reuses the train loader's.
        num_workers: worker processes of the HVP and scoring loaders.
        dirpath: where event folders go; None: ``<trainer.log_dir>/influence``.
        on_error: ``"warn"`` skips a failed analysis (non-finite loss or HVP, ...) with a warning
            naming epoch and step, and training continues; ``"raise"`` fails the fit.
        log_top_n: how many of the most self-influential examples the loggers show.
        max_events: keep only the newest ``max_events`` events in memory and in checkpoints (the
            files keep all); None keeps all.
        progress: progress bars during fit and scoring; None follows the trainer's progress bar.
        **engine_kwargs: further ``ArnoldiConfig`` fields (``damping``, ``eigenvalue_rtol``,
            ``basis_device``, ``basis_dtype``, ``compute_dtype``, ``example_chunk``, ...).

    Attributes:
        events: every ``ScoringEvent`` of this run, oldest first (the same on every rank);
            ``self_influence`` is a float64 CPU tensor indexed by dataset index.

    Example::

        from lightning_influence import InfluenceCallback
        from lightning_influence.losses import cross_entropy_loss

        callback = InfluenceCallback(cross_entropy_loss, every_n_epochs=5, n_iters=100, top_k=50)
        trainer = pl.Trainer(max_epochs=20, callbacks=[callback])
        trainer.fit(model, datamodule)
        callback.latest_scores_frame().nlargest(20, "self_influence")  # likely mislabeled
    """

    def __init__(
        self,
        loss_fn: LossFn | None = None,
        *,
        every_n_epochs: int = 1,
        at_train_end: bool = True,
        n_iters: int = 200,
        top_k: int = 100,
        hvp_samples: int | None = 512,
        seed: int = 0,
        params: ParamSelector = None,
        eigenvalue_policy: EigenvaluePolicy = "abs",
        projection: ProjectionMode = "auto",
        hvp_mode: HVPMode = "auto",
        batch_size: int | None = None,
        num_workers: int = 0,
        dirpath: str | os.PathLike | None = None,
        on_error: Literal["warn", "raise"] = "warn",
        log_top_n: int = 16,
        max_events: int | None = None,
        progress: bool | None = None,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__()
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(
                f"loss_fn={loss_fn!r} is not callable: pass loss_fn(model, batch) -> Tensor[B], or "
                "leave it None and define influence_loss(self, batch) on the LightningModule"
            )
        _check_int("every_n_epochs", every_n_epochs, 0, "0 analyses only at the end of training")
        _check_int("hvp_samples", hvp_samples, 1, "None uses the whole training set", optional=True)
        _check_int("batch_size", batch_size, 1, "None reuses the train loader's", optional=True)
        _check_int("num_workers", num_workers, 0, "0 loads in the main process")
        _check_int("log_top_n", log_top_n, 0, "0 shows no examples")
        _check_int("max_events", max_events, 1, "None keeps every event", optional=True)
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error={on_error!r} is not one of 'warn', 'raise'")
        fields = {f.name for f in dataclasses.fields(ArnoldiConfig)} - set(_CONTROLLED)
        unknown = sorted(set(engine_kwargs) - fields)
        if unknown:
            raise TypeError(
                f"InfluenceCallback got unknown arguments {unknown}; further engine options are the "
                f"ArnoldiConfig fields {sorted(fields)}"
            )
        # Validated here, at construction (top_k <= n_iters, known modes, dtypes, ...).
        self.config = ArnoldiConfig(
            n_iters=n_iters,
            top_k=top_k,
            seed=seed,
            eigenvalue_policy=eigenvalue_policy,
            projection=projection,
            hvp_mode=hvp_mode,
            **engine_kwargs,
        )
        self.loss_fn = loss_fn
        self.every_n_epochs = every_n_epochs
        self.at_train_end = at_train_end
        self.hvp_samples = hvp_samples
        self.params = params
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.on_error = on_error
        self.log_top_n = log_top_n
        self.max_events = max_events
        self.progress = progress
        self.events: list[ScoringEvent] = []

    # -- public API ------------------------------------------------------------------------------
    @property
    def latest_event(self) -> ScoringEvent | None:
        """The newest scoring event, or None before the first analysis."""
        return self.events[-1] if self.events else None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_epochs=self.every_n_epochs,
            n_iters=self.config.n_iters,
            top_k=self.config.top_k,
            seed=self.config.seed,
        )

    def latest_scores(self) -> Tensor:
        """``[N]`` float64 self-influence of the newest event, indexed by dataset index."""
        event = self._require_event()
        return event.self_influence

    def latest_scores_frame(self) -> pandas.DataFrame:
        """The newest scores as a DataFrame indexed by dataset index, column ``self_influence``.

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
            {"self_influence": event.self_influence.numpy()},
            index=pandas.RangeIndex(event.self_influence.numel(), name="index"),
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
        return self._run(trainer, pl_module, trainer.current_epoch, "manual", dataloader)

    @classmethod
    def analyze_checkpoint(
        cls,
        checkpoint_path: str | os.PathLike,
        model: pl.LightningModule | type[pl.LightningModule],
        dataloader: DataLoader,
        *,
        dirpath: str | os.PathLike | None = None,
        loggers: Sequence[Logger] = (),
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> ScoringEvent:
        """Load a Lightning checkpoint into a module and analyse it, without training.

        Writes the same event folder as training would (named by the checkpoint's epoch and
        step) and logs to ``loggers``. Runs in this process only. Checkpoints are unpickled: load
        only checkpoints you trust.

        Args:
            checkpoint_path: a ``.ckpt`` written by Lightning.
            model: a LightningModule instance (the checkpoint's ``state_dict`` is loaded into it)
                or class (built with ``load_from_checkpoint``).
            dataloader: the training loader; its dataset is scored by index, its ``collate_fn`` and
                ``batch_size`` are reused.
            dirpath: where the event folder goes; None: ``<log_dir>/influence`` for a checkpoint
                in ``<log_dir>/checkpoints/``, else ``influence/`` beside the checkpoint.
            loggers: e.g. ``[TensorBoardLogger(...)]``; none by default.
            device: where to compute; None: CUDA when available, else CPU.
            **kwargs: ``InfluenceCallback`` arguments (``loss_fn``, ``n_iters``, ``top_k``, ...).

        Returns:
            The event (``on_error`` is ``"raise"`` here: a failure raises).

        Example::

            event = InfluenceCallback.analyze_checkpoint(
                "lightning_logs/version_0/checkpoints/epoch=9-step=500.ckpt",
                MyModule, train_loader, loss_fn=cross_entropy_loss, n_iters=100, top_k=50,
            )
        """
        path = Path(checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint_path={os.fspath(path)!r} is not a file")
        if dirpath is None:
            base = path.parent.parent if path.parent.name == "checkpoints" else path.parent
            dirpath = base / "influence"
        kwargs.update(dirpath=dirpath, on_error="raise")
        callback = cls(**kwargs)
        if isinstance(model, type):
            model = model.load_from_checkpoint(path, map_location="cpu")
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            model.on_load_checkpoint(checkpoint)
            model.load_state_dict(checkpoint["state_dict"])
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        model.to(device)
        loss_fn = callback._resolve_loss(model)
        progress = True if callback.progress is None else callback.progress
        runtime = Runtime(
            module=model,
            device=device,
            transfer=standalone_transfer(model, device),
            loggers=list(loggers),
            progress=progress,
            precision=str(next(model.parameters()).dtype),
        )
        event = callback._analyze(
            runtime,
            loss_fn,
            dataloader,
            Path(dirpath),
            epoch=int(checkpoint.get("epoch", 0)),
            step=int(checkpoint.get("global_step", 0)),
            trigger="checkpoint",
        )
        event.manifest["checkpoint"] = os.fspath(path)
        return event

    # -- Lightning hooks -------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._resolve_loss(pl_module)
        try:
            select_parameters(pl_module, self.params)
        except ValueError as err:
            raise MisconfigurationException(
                f"InfluenceCallback(params={self.params!r}): {err}"
            ) from err

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not self.every_n_epochs:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, trainer.current_epoch, "epoch_end")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.at_train_end:
            return
        latest = self.latest_event
        if latest is not None and latest.global_step == trainer.global_step:
            return  # the last epoch-end analysis already saw these weights
        # ``current_epoch`` counts finished epochs here; name the event by the last one.
        self._run(trainer, pl_module, max(trainer.current_epoch - 1, 0), "train_end")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "events": [event.state_dict() for event in self.events],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = [ScoringEvent.from_state_dict(dict(s)) for s in state_dict.get("events", [])]

    # -- the analysis ----------------------------------------------------------------------------
    def _run(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        epoch: int,
        trigger: Trigger,
        dataloader: DataLoader | None = None,
    ) -> ScoringEvent | None:
        loss_fn = self._resolve_loss(pl_module)
        loader = dataloader if dataloader is not None else trainer.train_dataloader
        root = Path(self.dirpath) if self.dirpath is not None else _default_root(trainer)
        root = Path(trainer.strategy.broadcast(os.fspath(root)))
        runtime = Runtime.of(trainer, pl_module, self.progress)
        step = trainer.global_step
        try:
            return self._analyze(runtime, loss_fn, loader, root, epoch, step, trigger)
        except MisconfigurationException:
            raise
        except Exception as err:
            message = f"InfluenceCallback: the influence analysis at epoch={epoch}, step={step} failed: {err}"
            if self.on_error == "raise":
                kind = FloatingPointError if isinstance(err, FloatingPointError) else RuntimeError
                raise kind(message) from err
            rank_zero_warn(
                message + " -- this analysis is skipped and training continues "
                "(InfluenceCallback(on_error='raise') makes it fatal)",
                category=RuntimeWarning,
            )
            return None

    def _analyze(
        self,
        runtime: Runtime,
        loss_fn: LossFn,
        loader: Any,
        root: Path,
        epoch: int,
        step: int,
        trigger: Trigger,
    ) -> ScoringEvent:
        dataset, collate_fn, batch_size = self._loader_parts(loader)
        num_examples = len(dataset)
        if num_examples < 1:
            raise MisconfigurationException("InfluenceCallback: the training dataset is empty")
        hvp_indices = self.hvp_indices(num_examples)
        if len(hvp_indices) < runtime.world_size:
            raise MisconfigurationException(
                f"InfluenceCallback(hvp_samples={self.hvp_samples}) gives {len(hvp_indices)} "
                f"examples for {runtime.world_size} processes: every process needs at least one; "
                f"raise hvp_samples to at least {runtime.world_size}"
            )

        def make_loader(indices: Sequence[int]) -> DataLoader:
            return DataLoader(
                Subset(dataset, list(indices)),
                batch_size=batch_size,
                shuffle=False,
                collate_fn=collate_fn,
                num_workers=self.num_workers,
                generator=torch.Generator(),  # keep the global RNG out of the loader's seeding
            )

        config = dataclasses.replace(
            self.config, progress=runtime.progress and runtime.is_global_zero
        )
        hvp_share = make_loader(hvp_indices[runtime.rank :: runtime.world_size].tolist())
        score_loader = make_loader(score_shard(num_examples, runtime.world_size, runtime.rank))

        wall = time.perf_counter()
        # inference_mode off for the whole analysis, not only the engine's autograd: event tensors
        # made under a caller's inference_mode would be inference tensors, unusable in training.
        with torch.inference_mode(False), preserved_rng_states(), runtime.rank_zero_buffers():
            engine = ArnoldiInfluence(
                runtime.module,
                loss_fn,
                params=self.params,
                config=config,
                transfer_batch=runtime.transfer,
            )
            if runtime.world_size > 1:
                # Fail together: a rank stopping before the first collective would hang the others.
                runtime.agree(lambda: _check_finite_losses(engine, hvp_share, epoch, step))
            engine.fit(hvp_share, reduce_fn=runtime.reduce_sum)
            fit_seconds = time.perf_counter() - wall
            start = time.perf_counter()
            local = runtime.agree(lambda: engine.self_influence(score_loader).double())
            scores = runtime.gather(local)[:num_examples].cpu()
            scoring_seconds = time.perf_counter() - start

        event = ScoringEvent(
            epoch=int(epoch),
            global_step=int(step),
            self_influence=scores.contiguous(),
            eigenvalues=engine.eigenvalues.detach().cpu().double(),
            residuals=engine.ritz_residuals.detach().cpu().double(),
            directory=os.fspath(root / f"epoch={int(epoch)}-step={int(step)}"),
        )
        event.manifest = self._manifest(runtime, engine, trigger, num_examples, len(hvp_indices))
        event.manifest["timings"] = {
            "fit_seconds": fit_seconds,
            "hvp_seconds": float(engine.fit_stats.get("hvp_seconds", float("nan"))),
            "scoring_seconds": scoring_seconds,
        }
        # Plain JSON types only: the manifest also goes into checkpoints, which Lightning may
        # load with ``weights_only=True`` (``torch.__version__`` is a TorchVersion, not a str).
        event.manifest = json.loads(json.dumps(event.manifest, default=str))

        runtime.agree(lambda: write_event(event, root) if runtime.is_global_zero else None)
        if runtime.is_global_zero:
            try:
                log_event(runtime.loggers, event, dataset, top_n=self.log_top_n)
            except Exception as err:  # the scores stand; a logger's failure must not drop them
                rank_zero_warn(
                    f"InfluenceCallback could not log the analysis at epoch={epoch}, step={step} "
                    f"to the loggers ({type(err).__name__}: {err}); its files are in "
                    f"{event.directory}",
                    category=RuntimeWarning,
                )
        self.events.append(event)
        if self.max_events is not None:
            del self.events[: -self.max_events]
        return event

    def hvp_indices(self, num_examples: int) -> Tensor:
        """The dataset indices of the HVP sample (sorted): ``hvp_samples`` drawn without
        replacement by a generator seeded with ``seed``, the same at every analysis."""
        if self.hvp_samples is None or self.hvp_samples >= num_examples:
            return torch.arange(num_examples)
        generator = torch.Generator().manual_seed(self.config.seed)
        return torch.randperm(num_examples, generator=generator)[: self.hvp_samples].sort().values

    # -- helpers ---------------------------------------------------------------------------------
    def _resolve_loss(self, pl_module: nn.Module) -> LossFn:
        if self.loss_fn is not None:
            return self.loss_fn
        if callable(getattr(pl_module, "influence_loss", None)):
            return _module_influence_loss
        raise MisconfigurationException(
            "InfluenceCallback needs one loss per training example. Either pass "
            "InfluenceCallback(loss_fn=...), e.g. lightning_influence.losses.cross_entropy_loss for "
            f"(inputs, class-index targets) batches, or add this method to {type(pl_module).__name__}:\n\n"
            "    def influence_loss(self, batch):  # -> Tensor[B], one loss per example\n"
            "        x, y = batch\n"
            "        return F.cross_entropy(self(x), y, reduction='none')\n"
        )

    def _loader_parts(self, loader: Any) -> tuple[Any, Callable | None, int]:
        if loader is None:
            raise MisconfigurationException(
                "InfluenceCallback found no training dataloader: analyse during or after "
                "trainer.fit, or pass analyze(..., dataloader=train_loader)"
            )
        if not isinstance(loader, DataLoader):
            raise MisconfigurationException(
                f"InfluenceCallback scores one training DataLoader, got {type(loader).__name__}: "
                "pass analyze(..., dataloader=the_loader_to_score)"
            )
        if isinstance(loader.dataset, IterableDataset):
            raise MisconfigurationException(
                "InfluenceCallback scores a map-style dataset by index; the training dataset is an "
                "IterableDataset: wrap the data in a map-style Dataset"
            )
        batch_size = self.batch_size or loader.batch_size
        if batch_size is None:
            batch_size = getattr(loader.batch_sampler, "batch_size", None)
        if batch_size is None:
            raise MisconfigurationException(
                "the training DataLoader has no batch_size (it uses a custom batch_sampler): pass "
                "InfluenceCallback(batch_size=...)"
            )
        return loader.dataset, loader.collate_fn, int(batch_size)

    def _manifest(
        self,
        runtime: Runtime,
        engine: ArnoldiInfluence,
        trigger: Trigger,
        num_examples: int,
        hvp_examples: int,
    ) -> dict[str, Any]:
        params = self.params
        if callable(params):
            params = getattr(params, "__qualname__", repr(params))
        elif params is not None:
            params = [params] if isinstance(params, str) else list(params)
        loss = self.loss_fn if self.loss_fn is not None else _module_influence_loss
        return {
            "method": "arnoldi",
            "trigger": trigger,
            "arguments": {
                **self.config.to_dict(),
                "hvp_samples": self.hvp_samples,
                "params": params,
                "batch_size": self.batch_size,
                "every_n_epochs": self.every_n_epochs,
                "loss_fn": getattr(loss, "__qualname__", repr(loss)),
            },
            "num_examples": num_examples,
            "hvp_examples": hvp_examples,
            "num_params": engine.space.dim,
            "world_size": runtime.world_size,
            "precision": runtime.precision,
            "compute_dtype": str(engine.compute_dtype).removeprefix("torch."),
            "projection_mode": engine.projection_mode_,
            "fit_stats": dict(engine.fit_stats),
            "versions": _versions(),
        }

    def _require_event(self) -> ScoringEvent:
        if not self.events:
            raise RuntimeError(
                "InfluenceCallback has no scores yet: they exist after the first analysis "
                "(an epoch end with every_n_epochs, the end of training, or analyze())"
            )
        return self.events[-1]


def _check_finite_losses(
    engine: ArnoldiInfluence, loader: DataLoader, epoch: int, step: int
) -> None:
    """Raise ``FloatingPointError`` naming the examples if any loss of the HVP sample is NaN/Inf."""
    from lightning_influence.core.context import analysis_context

    with analysis_context(engine.model), torch.no_grad():
        f, params = engine._functional(), engine._params()
        seen = 0
        for batch in engine._batches(loader, "HVP sample"):
            losses = f(params, batch)
            if isinstance(losses, Tensor) and not bool(torch.isfinite(losses).all()):
                bad = (~torch.isfinite(losses)).nonzero().flatten()[:5] + seen
                raise FloatingPointError(
                    f"non-finite loss at epoch={epoch}, step={step} on HVP-sample examples at "
                    f"positions {bad.tolist()} of this process's share: check those inputs and the "
                    "model's parameters"
                )
            seen += int(losses.shape[0]) if isinstance(losses, Tensor) and losses.ndim else 0


def _default_root(trainer: pl.Trainer) -> Path:
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir) / "influence"


def _versions() -> dict[str, str]:
    import lightning_influence

    return {
        "lightning_influence": lightning_influence.__version__,
        "torch": str(torch.__version__),
        "pytorch_lightning": str(pl.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }


def _check_int(name: str, value: Any, minimum: int, hint: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum} ({hint})")
