"""Analyse a saved Lightning checkpoint, without training: the same pipeline, files and logs.

``analyze_checkpoint`` reads the checkpoint once, loads it into the LightningModule and runs
``run_analysis`` in this process; ``lightning-influence score`` calls ``analyze_loaded`` with the
module and checkpoint it built. Checkpoints are unpickled: load only checkpoints you trust.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from lightning_influence.config import AnalysisConfig, with_overrides
from lightning_influence.io.checkpoint import read_checkpoint, saved_init_args
from lightning_influence.io.events import ScoringEvent
from lightning_influence.io.manifest import analysis_arguments, analysis_name
from lightning_influence.lightning.analysis import run_analysis
from lightning_influence.lightning.runtime import Runtime
from lightning_influence.losses import LossFn

__all__ = ["analyze_checkpoint", "analyze_loaded", "checkpoint_position", "default_dirpath"]


def default_dirpath(checkpoint_path: str | os.PathLike) -> Path:
    """``<log_dir>/influence`` for a checkpoint in ``<log_dir>/checkpoints/``, else ``influence/``
    beside the checkpoint: where training with ``InfluenceCallback`` writes its events."""
    path = Path(checkpoint_path)
    base = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return base / "influence"


def checkpoint_position(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """``(epoch, global_step)`` naming the checkpoint's weights as the callback names them.

    A checkpoint saved after training (or after a ``max_steps`` stop) carries Lightning's
    ``epoch`` counter one past the epoch of its last batch; an ``InfluenceCallback`` state in it
    knows the epoch of that batch, and then wins, so that one state never gets two folders.
    """
    step = int(checkpoint.get("global_step", 0))
    epoch = int(checkpoint.get("epoch", 0))
    for key, state in (checkpoint.get("callbacks") or {}).items():
        last = state.get("last_trained") if isinstance(state, dict) else None
        if str(key).startswith("InfluenceCallback") and last is not None and int(last[1]) == step:
            return int(last[0]), step
    return epoch, step


def analyze_checkpoint(
    checkpoint_path: str | os.PathLike,
    model: pl.LightningModule | type[pl.LightningModule],
    dataloader: Any,
    *,
    loss_fn: LossFn | None = None,
    config: AnalysisConfig | None = None,
    name: str | None = None,
    dirpath: str | os.PathLike | None = None,
    loggers: Sequence[Logger] = (),
    device: str | torch.device | None = None,
    resume: bool = True,
    **config_kwargs: Any,
) -> ScoringEvent:
    """Load a Lightning checkpoint into a module and analyse it, without training.

    Writes the same event folder as training would (``<dirpath>/<name>/epoch=E-step=S``, named
    by the checkpoint's epoch and step) and logs to ``loggers``. Runs in this process only; a
    failure raises.

    Args:
        checkpoint_path: a ``.ckpt`` written by Lightning.
        model: a LightningModule instance (the checkpoint's ``state_dict`` is loaded into it) or
            class (built from the checkpoint's saved hyper-parameters).
        dataloader: the training loader; its dataset is scored by index, its ``collate_fn`` and
            ``batch_size`` are reused.
        loss_fn: the per-example loss; None uses the module's ``influence_loss`` method.
        config: the analysis' arguments; or pass ``AnalysisConfig`` fields as keywords
            (``n_iters``, ``top_k``, ...), as to ``InfluenceCallback``.
        name: the analysis' name (default: the hash of its arguments, as the callback's).
        dirpath: where the analysis' folder goes; None: see ``default_dirpath``.
        loggers: e.g. ``[TensorBoardLogger(...)]``; none by default.
        device: where to compute; None: CUDA when available, else CPU.
        resume: with ``shard_batches``, continue an interrupted analysis of this checkpoint from
            its saved eigenpairs and complete score shards; False starts over.

    Returns:
        The event.

    Example::

        event = analyze_checkpoint(
            "lightning_logs/version_0/checkpoints/epoch=9-step=500.ckpt",
            MyModule, train_loader, loss_fn=cross_entropy_loss, n_iters=100, top_k=50,
        )
    """
    config = with_overrides(AnalysisConfig, config, config_kwargs)
    checkpoint = read_checkpoint(checkpoint_path)
    if isinstance(model, type):
        model = model(**saved_init_args(model, checkpoint))
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    return analyze_loaded(
        model,
        checkpoint,
        checkpoint_path,
        dataloader,
        loss_fn=loss_fn,
        config=config,
        name=name,
        dirpath=dirpath,
        loggers=loggers,
        device=device,
        resume=resume,
    )


def analyze_loaded(
    model: pl.LightningModule,
    checkpoint: dict[str, Any],
    checkpoint_path: str | os.PathLike,
    dataloader: Any,
    *,
    loss_fn: LossFn | None = None,
    config: AnalysisConfig | None = None,
    name: str | None = None,
    dirpath: str | os.PathLike | None = None,
    loggers: Sequence[Logger] = (),
    device: str | torch.device | None = None,
    resume: bool = True,
) -> ScoringEvent:
    """``analyze_checkpoint`` for a module that already holds the checkpoint's weights."""
    config = config or AnalysisConfig()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    model.to(device)
    name = name or analysis_name(analysis_arguments(config, loss_fn))
    base = Path(dirpath) if dirpath is not None else default_dirpath(checkpoint_path)
    epoch, step = checkpoint_position(checkpoint)
    return run_analysis(
        Runtime.standalone(model, device, loggers, progress=config.progress),
        config,
        loss_fn,
        dataloader,
        root=base / name,
        epoch=epoch,
        step=step,
        trigger="checkpoint",
        provenance={"name": name, "checkpoint": os.fspath(checkpoint_path)},
        resume=resume,
    )
