"""The one analysis pipeline: ``InfluenceCallback``, ``analyze_checkpoint`` and the CLI run it.

``run_analysis`` takes a model (in a ``Runtime``), the training loader and an ``AnalysisConfig``:

1. fits ``ArnoldiInfluence`` on a fixed, seeded sample of the training data (the HVP sample):
   the top-k eigenpairs ``(lambda_i, e_i)`` of the Hessian H of the mean training loss;
2. projects a clean validation set (when there is one): ``v_i = <e_i, sum_z g_z>``;
3. scores every training example, in dataset-index order, with its signals from one pass of
   projected gradients: self-influence ``I(x, x) = sum_i w_i <e_i, g_x>^2``, validation
   influence ``V(x) = sum_i w_i v_i <e_i, g_x>`` (``w_i ~ 1 / lambda_i``) and the loss;
4. writes ``<root>/epoch=E-step=S/`` (see ``lightning_influence.io.events``) and logs spectra,
   histograms and the most suspect examples to the runtime's loggers; the manifest states the
   cost of each phase and, given the epoch time, of the whole in training epochs.

Under DDP every rank computes HVPs on its share of the HVP sample (one collective per product),
scores its shard of the dataset, the shards are gathered, and global zero writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch import Tensor

from lightning_influence.config import (
    AnalysisConfig,
    ArnoldiConfig,
    ConfigurationError,
    field_names,
)
from lightning_influence.core import batch as _batch
from lightning_influence.core.context import analysis_context
from lightning_influence.engines.arnoldi import ArnoldiInfluence
from lightning_influence.engines.base import ValidationProjection, call_loss
from lightning_influence.io.atomic import atomic_write
from lightning_influence.io.eigenpairs import (
    EIGENPAIRS_FILE,
    eigenpairs_bytes,
    load_eigenpairs,
    save_eigenpairs,
)
from lightning_influence.io.events import (
    ScoringEvent,
    check_event_folder,
    read_event,
    weights_fingerprint,
    write_event,
)
from lightning_influence.io.manifest import analysis_arguments, build_manifest
from lightning_influence.io.shards import read_signals
from lightning_influence.lightning.loaders import LoaderParts, loader_parts, ordered_loader
from lightning_influence.lightning.loggers import log_event
from lightning_influence.lightning.runtime import Runtime, preserved_rng_states, score_shard
from lightning_influence.losses import LossFn, check_contract, resolve_loss

__all__ = [
    "Trigger",
    "WarmStart",
    "build_engine",
    "fit_engine",
    "hvp_indices",
    "project_validation",
    "run_analysis",
    "saved_engine",
    "validation_indices",
]

Trigger = Literal["epoch_end", "train_end", "manual", "checkpoint"]


def hvp_indices(num_examples: int, hvp_samples: int | None, seed: int) -> Tensor:
    """The dataset indices of the HVP sample (sorted): ``hvp_samples`` drawn without replacement by
    a generator seeded with ``seed``, the same at every analysis; all of them for None.

    Example:
        >>> hvp_indices(10, 4, seed=0).tolist()
        [1, 4, 5, 7]
    """
    if hvp_samples is None or hvp_samples >= num_examples:
        return torch.arange(num_examples)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_examples, generator=generator)[:hvp_samples].sort().values


def build_engine(
    runtime: Runtime, config: AnalysisConfig, loss_fn: LossFn | None
) -> ArnoldiInfluence:
    """An unfitted ``ArnoldiInfluence`` for this runtime and config."""
    engine_config = config.engine_config()
    engine_config.progress = config.progress and runtime.progress and runtime.is_global_zero
    return ArnoldiInfluence(
        runtime.module,
        resolve_loss(loss_fn, runtime.module),
        params=config.params,
        config=engine_config,
        transfer_batch=runtime.transfer,
    )


class WarmStart:
    """The previous analysis' eigenvectors, kept (summed: one ``[P]`` vector) between the
    analyses of a run so that the next fit starts from them (``ArnoldiInfluence.fit(warm=)``).

    Offered only to a fit of the same parameters (names and shapes); another selection is
    refused, logged, and fitted cold.
    """

    def __init__(self) -> None:
        self.layout: tuple[tuple[str, tuple[int, ...]], ...] | None = None
        self.vector: Tensor | None = None

    @staticmethod
    def _layout(engine: ArnoldiInfluence) -> tuple[tuple[str, tuple[int, ...]], ...]:
        space = engine.space
        return tuple((n, tuple(s)) for n, s in zip(space.names, space.shapes, strict=True))

    def offer(self, engine: ArnoldiInfluence) -> Tensor | None:
        """The warm vector for ``engine``'s fit, or None (none yet, or another layout)."""
        if self.vector is None:
            return None
        if self._layout(engine) != self.layout:
            rank_zero_info(
                "warm start refused: the previous analysis had another parameter selection or "
                "shapes; this analysis fits from a cold start"
            )
            return None
        return self.vector

    def keep(self, engine: ArnoldiInfluence) -> None:
        """Remember ``engine``'s eigenvectors for the next fit."""
        self.layout = self._layout(engine)
        self.vector = engine.eigenvectors.sum(0).detach().clone()

    def restore(self, folder: str | Path | None) -> None:
        """Take the eigenvectors saved in event ``folder`` (``eigenpairs.safetensors``) when none
        are held: a resumed run continues warm, as the uninterrupted one did."""
        if self.vector is not None or folder is None:
            return
        path = Path(folder) / EIGENPAIRS_FILE
        if not path.is_file():
            return
        state, _ = load_eigenpairs(path)
        names, shapes = state.get("param_names"), state.get("param_shapes")
        if names is None or shapes is None:
            return
        self.layout = tuple((n, tuple(s)) for n, s in zip(names, shapes, strict=True))
        self.vector = state["directions"].sum(0)


# Examples per scoring batch when the analysis' batch size is left to it (``batch_size=None``).
SCORING_BATCH = 256
_SCORING_BATCH_BYTES = 256 * 2**20


def scoring_parts(
    parts: LoaderParts, config: AnalysisConfig, engine: ArnoldiInfluence
) -> LoaderParts:
    """The loader parts the scoring and the validation set use: the training loader's batch
    size, raised to up to ``SCORING_BATCH`` examples when ``config.batch_size`` is None and the
    memory per example is known to allow it: a float32 gradient of the selected parameters (the
    projection routes' per-example work) and the HVP sample's cached graph per example (measured
    by ``hvp_cache``), within 256 MiB per batch. Kept as they are when scores stream to shards
    (laid out by batches, for resuming) or on XLA (static shapes), or when the graph was not
    measured. Scores do not depend on the batch size (the model is in eval mode)."""
    if config.batch_size is not None or config.shard_batches or engine.device.type == "xla":
        return parts
    graph = engine.fit_stats.get("graph_bytes_per_example")
    if graph is None:
        return parts
    per_example = max(4 * engine.space.dim, int(graph), 1)
    size = min(SCORING_BATCH, _SCORING_BATCH_BYTES // per_example)
    if size <= parts.batch_size:
        return parts
    return dataclasses.replace(parts, batch_size=size)


def fit_engine(
    runtime: Runtime,
    config: AnalysisConfig,
    loss_fn: LossFn | None,
    parts: LoaderParts,
    warm: WarmStart | None = None,
) -> tuple[ArnoldiInfluence, int]:
    """Fit ``ArnoldiInfluence`` on this rank's share of the HVP sample; the engine and the sample's
    global size. Call it on every rank, under ``torch.inference_mode(False)``."""
    num_examples = len(parts.dataset)  # type: ignore[arg-type]
    indices = hvp_indices(num_examples, config.hvp_samples, config.seed)
    if len(indices) < runtime.world_size:
        raise ConfigurationError(
            f"hvp_samples={config.hvp_samples} gives {len(indices)} examples for "
            f"{runtime.world_size} processes: every process needs at least one; raise hvp_samples "
            f"to at least {runtime.world_size}"
        )
    share = ordered_loader(
        parts, indices[runtime.rank :: runtime.world_size].tolist(), num_workers=config.num_workers
    )
    engine = build_engine(runtime, config, loss_fn)
    if runtime.world_size > 1:
        # Fail together: a rank stopping before the first collective would hang the others.
        runtime.agree(lambda: engine.check_losses(share, "HVP sample"))
    engine.fit(
        share,
        reduce_fn=runtime.reduce_sum,
        warm=None if warm is None or not config.warm_start else warm.offer(engine),
    )
    if warm is not None:
        warm.keep(engine)
    return engine, len(indices)


def _fitted_or_saved(
    runtime: Runtime,
    config: AnalysisConfig,
    loss_fn: LossFn | None,
    parts: LoaderParts,
    saved: Path,
    weights: str,
    resume: bool,
    warm: WarmStart | None = None,
) -> tuple[ArnoldiInfluence, int]:
    """The fitted engine: read from ``saved`` (``eigenpairs.safetensors`` of an interrupted
    analysis of these weights and arguments) when resuming, else fitted now and saved there by
    global zero (when its size is within ``config.max_eigenpairs_mb``)."""
    engine = build_engine(runtime, config, loss_fn)
    if resume and saved.is_file():
        state, theirs = load_eigenpairs(saved)
        if theirs == weights and _same_fit(state.get("config", {}), engine.config.to_dict()):
            engine.load_state_dict(state)
            return engine, int(state.get("fit_stats", {}).get("num_examples", 0))
    engine, hvp_examples = fit_engine(runtime, config, loss_fn, parts, warm)
    state = engine.state_dict()
    cap = config.max_eigenpairs_mb
    size = eigenpairs_bytes(state)
    if cap is None or size <= cap * 2**20:

        def save() -> None:
            save_eigenpairs(saved, state, weights_sha256=weights)

        runtime.agree(lambda: save() if runtime.is_global_zero else None)
    elif runtime.is_global_zero:
        rank_zero_info(
            f"the eigenpairs ({size / 2**20:.0f} MiB) are not saved beside the signals: they "
            f"exceed max_eigenpairs_mb={cap}; raise it (None: no cap) to keep them"
        )
    return engine, hvp_examples


def saved_engine(
    runtime: Runtime, config: AnalysisConfig, loss_fn: LossFn | None, folder: Path
) -> ArnoldiInfluence | None:
    """The engine of the eigenpairs saved in event ``folder`` when they were fitted at these
    weights with these arguments, else None."""
    path = Path(folder) / EIGENPAIRS_FILE
    if not path.is_file():
        return None
    engine = build_engine(runtime, config, loss_fn)
    state, theirs = load_eigenpairs(path)
    if theirs != weights_fingerprint(engine.parameters()):
        return None
    if not _same_fit(state.get("config", {}), engine.config.to_dict()):
        return None
    engine.load_state_dict(state)
    return engine


def _same_fit(theirs: dict[str, Any], ours: dict[str, Any]) -> bool:
    # what the eigenpairs depend on: every engine argument but the display and execution ones
    keys = field_names(ArnoldiConfig, "result")
    return all(theirs.get(k) == ours.get(k) for k in keys)


def check_loss_contract(
    runtime: Runtime, config: AnalysisConfig, loss_fn: LossFn | None, trainer: Any
) -> None:
    """Run the loss on the first examples of the training set, as the analysis will (its
    compute dtype, its transfer; a fixed slice: no sampler, no random stream is touched), and
    raise ``ConfigurationError`` unless it gives one value per example."""
    loader = getattr(trainer, "train_dataloader", None)
    if loader is None:
        return
    parts = loader_parts(loader, config.batch_size)
    size = min(parts.batch_size, len(parts.dataset))  # type: ignore[arg-type]
    engine = build_engine(runtime, config, loss_fn)
    with preserved_rng_states(), analysis_context(runtime.module), torch.no_grad():
        batch = next(engine.batches(ordered_loader(parts, list(range(size))), "training"))
        losses = call_loss(
            engine.functional_loss(), engine.parameters(), batch, "the first training batch"
        )
        check_contract(losses, _batch.batch_size(batch), "the first training batch")


def validation_indices(num_examples: int, samples: int | None, seed: int) -> Tensor:
    """The dataset indices of the validation examples used (sorted): all of them, or
    ``samples`` drawn without replacement with ``seed`` (another stream than the HVP sample's).

    Example:
        >>> validation_indices(5, None, seed=0).tolist()
        [0, 1, 2, 3, 4]
    """
    return hvp_indices(num_examples, samples, seed + 1_000_003)


def project_validation(
    runtime: Runtime,
    engine: ArnoldiInfluence,
    parts: LoaderParts,
    config: AnalysisConfig,
) -> ValidationProjection:
    """The validation set's projected gradients, in total and per class; under DDP every rank
    projects its block of the validation examples and the sums are added (one collective)."""
    num = len(parts.dataset)  # type: ignore[arg-type]
    chosen = validation_indices(num, config.validation_samples, config.seed).tolist()
    # each rank its contiguous block, without score_shard's padding: every example counts once
    per_rank = -(-len(chosen) // runtime.world_size)
    share = chosen[runtime.rank * per_rank : (runtime.rank + 1) * per_rank]
    loader = ordered_loader(parts, share, num_workers=config.num_workers) if share else []
    k = engine.eigenvalues.numel()
    if share:
        local = engine.validation_projection(loader)
    else:
        local = ValidationProjection(torch.zeros(k, dtype=torch.float64), {}, 0)
    if runtime.world_size == 1:
        return local
    classes = sorted((local.by_class or {}).keys())
    top = torch.tensor([float(max(classes) + 1 if classes else 0)], dtype=torch.float64)
    reduce = runtime.reduce_sum
    assert reduce is not None
    width = int(runtime.strategy.reduce(top.to(runtime.device), reduce_op="max").item())
    dense = torch.zeros(1 + width, k + 1, dtype=torch.float64)
    dense[0, :k] = local.total
    dense[0, k] = local.count
    for c, v in (local.by_class or {}).items():
        dense[1 + c, :k] = v
        dense[1 + c, k] = 1.0  # this class has members on this rank
    dense = reduce(dense.to(runtime.device)).cpu()
    by_class = {c: dense[1 + c, :k] for c in range(width) if dense[1 + c, k] > 0}
    return ValidationProjection(dense[0, :k], by_class, int(dense[0, k]))


def run_analysis(
    runtime: Runtime,
    config: AnalysisConfig,
    loss_fn: LossFn | None,
    loader: Any,
    *,
    root: str | Path,
    epoch: int,
    step: int,
    trigger: Trigger,
    provenance: dict[str, Any] | None = None,
    resume: bool = True,
    validation_loader: Any = None,
    extra_signals: dict[str, Tensor] | None = None,
    epoch_seconds: float | None = None,
    view: Callable[[ScoringEvent], tuple[tuple[str, Tensor] | None, Tensor | None]] | None = None,
    warm: WarmStart | None = None,
    candidates: Tensor | None = None,
) -> ScoringEvent:
    """Analyse the training set of ``loader`` at the runtime's current weights; call it on every rank.

    Args:
        runtime: the model and where it runs (``Runtime.of(trainer, ...)`` or
            ``Runtime.standalone(...)``).
        config: every argument of the analysis.
        loss_fn: the per-example loss; None uses the model's ``influence_loss`` method.
        loader: the training DataLoader; its dataset is scored by index, its ``collate_fn`` and
            batch size are reused.
        root: the analysis' folder; the event goes to ``root/epoch=E-step=S``.
        epoch, step: the training position of the weights, which names the event.
        trigger: what asked for the analysis (recorded in the manifest).
        provenance: more manifest entries (e.g. the checkpoint path), written with the rest.
        resume: with ``config.shard_batches``, continue an interrupted analysis of this event
            from its saved eigenpairs and complete score shards (``<event>/scores/``); False
            starts it over.
        validation_loader: a clean validation set: adds ``validation_influence`` (and per class)
            to the event's signals (unless ``config.validation == "off"``).
        extra_signals: ``[N]`` signals computed elsewhere (the training dynamics), added as is.
        epoch_seconds: the wall time of one training epoch, to state the analysis' cost in
            epochs (the manifest's ``cost_epochs``).
        view: ``event -> (ranking, keep)`` for the loggers: which signal orders the examples
            they show (None: the self-influence) and the pruning plan's keep-mask (dropped
            examples are marked, the grid shows the top of the kept set).
        warm: the run's ``WarmStart``: the fit starts from the previous analysis' eigenvectors
            (with ``config.warm_start``) and leaves its own there for the next.
        candidates: sorted dataset indices to score (global zero's are used on every rank); the
            other examples get NaN in every signal the analysis computes (``extra_signals`` are
            kept whole). None scores every example. Ignored with ``config.shard_batches``.

    Returns:
        The event, written and logged (on global zero) and identical on every rank.

    Raises:
        ConfigurationError: arguments, loss or data the analysis cannot use, or an event folder
            made with other arguments or weights (checked before any computation).
    """
    parts = loader_parts(loader, config.batch_size)
    num_examples = len(parts.dataset)  # type: ignore[arg-type]
    val_parts = None
    if validation_loader is not None and config.validation != "off":
        val_parts = loader_parts(validation_loader, config.batch_size, what="validation")
    arguments = analysis_arguments(config, loss_fn)
    root = Path(root)
    folder = root / f"epoch={int(epoch)}-step={int(step)}"
    engine_probe = build_engine(runtime, config, loss_fn)
    weights = weights_fingerprint(engine_probe.parameters())
    if runtime.agree(lambda: check_event_folder(folder, arguments, weights)):
        # This event exists (the same weights and arguments: a resumed run, or the command line
        # on the checkpoint of an analysed epoch): it is reused, never written over, so the
        # references other checkpoints hold to it stay valid.
        with torch.inference_mode(False):
            return runtime.agree(lambda: read_event(folder))

    streamed = folder / "scores" if config.shard_batches else None
    scored = _scored_indices(runtime, candidates if streamed is None else None, num_examples)
    num_scored = num_examples if scored is None else len(scored)
    timings: dict[str, float] = {}
    wall = time.perf_counter()
    # inference_mode off for the whole analysis, not only the engine's autograd: event tensors
    # made under a caller's inference_mode would be inference tensors, unusable in training.
    with torch.inference_mode(False), preserved_rng_states(), runtime.rank_zero_buffers():
        engine, hvp_examples = _fitted_or_saved(
            runtime, config, loss_fn, parts, folder / EIGENPAIRS_FILE, weights, resume, warm
        )
        timings["fit_seconds"] = time.perf_counter() - wall
        start = time.perf_counter()
        validation = None
        parts = scoring_parts(parts, config, engine)
        if val_parts is not None:
            val_parts = scoring_parts(val_parts, config, engine)
            validation = runtime.agree(
                lambda: project_validation(runtime, engine, val_parts, config)
            )
        timings["validation_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        positions = score_shard(num_scored, runtime.world_size, runtime.rank)
        shard = ordered_loader(
            parts,
            positions if scored is None else scored[positions].tolist(),
            num_workers=config.num_workers,
        )
        if streamed is None:
            local = runtime.agree(lambda: engine.signals(shard, validation=validation))
        else:
            # every rank streams its own block of dataset indices into its own shards
            rank_dir = streamed / f"rank-{runtime.rank}-of-{runtime.world_size}"
            local = runtime.agree(
                lambda: read_signals(
                    engine.self_influence_shards(
                        shard,
                        rank_dir,
                        shard_batches=config.shard_batches,
                        resume=resume,
                        validation=validation,
                    )
                )
            )
        signals = {
            name: _spread(runtime.gather(value.double())[:num_scored].cpu(), scored, num_examples)
            for name, value in local.items()
        }
        timings["scoring_seconds"] = time.perf_counter() - start
    for name, value in (extra_signals or {}).items():
        signals[name] = value.detach().cpu().double().contiguous()

    event = ScoringEvent(
        epoch=int(epoch),
        global_step=int(step),
        signals=signals,
        eigenvalues=engine.eigenvalues.detach().cpu().double(),
        residuals=engine.ritz_residuals.detach().cpu().double(),
        directory=str(folder),
    )
    timings["hvp_seconds"] = float(engine.fit_stats.get("hvp_seconds", float("nan")))
    event.manifest = build_manifest(
        arguments,
        namespace=runtime.namespace,
        trigger=trigger,
        num_examples=num_examples,
        hvp_examples=hvp_examples,
        validation_examples=None if validation is None else validation.count,
        num_params=engine.space.dim,
        world_size=runtime.world_size,
        precision=runtime.precision,
        compute_dtype=str(engine.compute_dtype).removeprefix("torch."),
        projection_mode=engine.projection_mode_,
        projection_notes=list(engine.route_notes),
        fit_stats=dict(engine.fit_stats),
        weights_sha256=weights,
        timings=timings,
        scoring_batch_size=parts.batch_size,
        scored_examples=num_scored,
        **(provenance or {}),
    )
    # Every rank names the same event: global zero's uid.
    event.uid = runtime.broadcast(event.uid)
    start = time.perf_counter()
    runtime.agree(lambda: write_event(event, root) if runtime.is_global_zero else None)
    timings["writing_seconds"] = time.perf_counter() - start
    total = time.perf_counter() - wall
    timings["total_seconds"] = total
    cost = _cost(total, epoch_seconds)
    event.manifest.update(cost)
    if runtime.is_global_zero:
        _record_cost(event, cost, timings)
        try:
            ranking, keep = view(event) if view is not None else (None, None)
            log_event(
                runtime.loggers,
                event,
                parts.dataset,
                top_n=config.log_top_n,
                ranking=ranking,
                keep=keep,
            )
        except Exception as err:  # the scores stand; a logger's failure must not drop them
            warnings.warn(
                f"could not log the influence analysis at epoch={epoch}, step={step} to the "
                f"loggers ({type(err).__name__}: {err}); its files are in {event.directory}",
                RuntimeWarning,
                stacklevel=2,
            )
    return event


def _scored_indices(runtime: Runtime, candidates: Tensor | None, num: int) -> Tensor | None:
    """Global zero's candidates (sorted, unique, within ``[0, num)``) on every rank, or None."""
    chosen = None
    if candidates is not None:
        chosen = torch.unique(torch.as_tensor(candidates, dtype=torch.long).flatten().cpu())
        if chosen.numel() == 0 or int(chosen[0]) < 0 or int(chosen[-1]) >= num:
            span = f"[{int(chosen[0])}, {int(chosen[-1])}]" if chosen.numel() else "none"
            raise ConfigurationError(
                f"candidates must be at least one dataset index in [0, {num}); got "
                f"{chosen.numel()} in {span}"
            )
    listed = runtime.broadcast(None if chosen is None else chosen.tolist())
    if listed is None or len(listed) == num:
        return None
    return torch.tensor(listed, dtype=torch.long)


def _spread(values: Tensor, scored: Tensor | None, num: int) -> Tensor:
    """``[num]`` signal values: ``values`` at the ``scored`` indices, NaN elsewhere."""
    if scored is None:
        return values.contiguous()
    full = torch.full((num,), float("nan"), dtype=values.dtype)
    full[scored] = values
    return full


def _cost(total: float, epoch_seconds: float | None) -> dict[str, Any]:
    if epoch_seconds is None or not epoch_seconds > 0:
        return {"epoch_seconds": None, "cost_epochs": None}
    return {"epoch_seconds": epoch_seconds, "cost_epochs": total / epoch_seconds}


def _record_cost(event: ScoringEvent, cost: dict[str, Any], timings: dict[str, float]) -> None:
    """The writing time and the cost in epochs are known only once the files are written: they
    go into the manifest file in a second, atomic rewrite."""
    if event.directory is None:
        return
    path = Path(event.directory) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(cost)
    manifest["timings"] = dict(timings)
    atomic_write(path, lambda h: json.dump(manifest, h, indent=2, default=str))
    event.manifest["timings"] = dict(timings)
