"""Shared machinery of the influence engines: batches in, projected gradients and scores out.

An engine holds k directions ``e_i`` in parameter space and k eigenvalues ``lambda_i``
(Arnoldi: Hessian eigenvectors; RandProj: a whitened Gaussian sketch); scoring is the same for all.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import RandomSampler, Subset
from tqdm.auto import tqdm

from lightning_influence.config import ConfigurationError, ScoringConfig, parse_dtype
from lightning_influence.core import batch as _batch
from lightning_influence.core import scores
from lightning_influence.core.context import analysis_context
from lightning_influence.core.functional_loss import FunctionalLoss, LossFn, make_functional_loss
from lightning_influence.core.hooks import HooksUnsupported, hook_support
from lightning_influence.core.parameters import ParameterSpace, ParamSelector, select_parameters
from lightning_influence.core.projection import project
from lightning_influence.io.shards import ScoreShards
from lightning_influence.losses import check_losses

__all__ = ["MAX_CLASS_COLUMNS", "TopInfluences", "ValidationProjection"]

TransferFn = Callable[[Any], Any]
_GRAD_CHUNK_BYTES = 256 * 2**20


class Sample(NamedTuple):
    """A sample read once by ``EngineBase.load_sample``: its batches (when kept), its global
    example count, and its first batch."""

    batches: list[Any]
    count: int
    first: Any


class TopInfluences(NamedTuple):
    """The strongest training examples for each test example (rows follow the test loader).

    Indices are positions in the training loader's order (dataset indices for an unshuffled
    loader over the whole dataset). Proponents have the largest positive influence (removing them
    would raise the test loss), opponents the most negative.
    """

    proponents: Tensor
    proponent_scores: Tensor
    opponents: Tensor
    opponent_scores: Tensor


def dataset_indices(loader: Any, batch_index: int, size: int) -> list[int] | None:
    """The dataset indices of batch ``batch_index`` of an unshuffled loader (a ``Subset``'s
    own indices, or positions), for error messages; None when the order is not known."""
    sampler = getattr(loader, "sampler", None)
    step = getattr(loader, "batch_size", None)
    if sampler is None or step is None or isinstance(sampler, RandomSampler):
        return None
    start = batch_index * step
    positions = range(start, start + size)
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, Subset):
        return [int(dataset.indices[p]) for p in positions]
    return list(positions)


def sync_device(device: torch.device) -> None:
    """Wait for queued kernels (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_loss(f: FunctionalLoss, params: dict[str, Tensor], batch: Any, where: str) -> Any:
    """``f(params, batch)``, with a ``TypeError`` (the model's forward refusing or missing an
    input) turned into a ``ConfigurationError`` that names the batch and the fix."""
    try:
        return f(params, batch)
    except TypeError as err:
        raise ConfigurationError(
            f"loss_fn raised TypeError on {where}: {err}. The loss function must pass the "
            "model every input its forward needs (e.g. model(input_ids, attention_mask=...)); "
            "for a dict batch of a Hugging Face model use "
            "lightning_influence.losses.sequence_classification_loss or causal_lm_loss"
        ) from err


class EngineBase:
    """Plumbing shared by every engine: parameters, the functional loss, batches, checks."""

    config: ScoringConfig

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        config: ScoringConfig,
        params: ParamSelector = None,
        transfer_batch: TransferFn | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(
                "loss_fn must be callable as loss_fn(model, batch) -> Tensor[B] of per-example losses"
            )
        self.model = model
        self.loss_fn = loss_fn
        self.config = config
        self.param_selector = params
        self.space = ParameterSpace.of(select_parameters(model, params))
        self.transfer_batch = transfer_batch

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(iter(select_parameters(self.model, self.param_selector).values())).device

    @property
    def compute_dtype(self) -> torch.dtype:
        explicit = parse_dtype(self.config.compute_dtype, "compute_dtype")
        if explicit is not None:
            return explicit
        dtype = next(iter(select_parameters(self.model, self.param_selector).values())).dtype
        return torch.promote_types(dtype, torch.float32)

    def parameters(self, source: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The selected parameters, detached, in the compute dtype (``source`` overrides values)."""
        live = select_parameters(self.model, self.param_selector)
        out = {}
        for name, p in live.items():
            value = source[name] if source is not None else p
            out[name] = value.detach().to(p.device, self.compute_dtype)
        return out

    def functional_loss(self) -> FunctionalLoss:
        """``f(params, batch) -> Tensor[B]``: the loss with parameters swapped in (``torch.func``)."""
        dtype = self.compute_dtype
        model_dtype = next(iter(self.model.parameters())).dtype
        return make_functional_loss(
            self.model, self.loss_fn, None if dtype == model_dtype else dtype
        )

    def batches(self, loader: Iterable[Any], what: str) -> Iterator[Any]:
        """The batches of ``loader`` on the device, ready for autograd (``what`` names it in errors)."""
        empty = True
        device = self.device  # resolved once, not per batch (it walks the selected parameters)
        for batch in loader:
            empty = False
            yield self._prepare(batch, device)
        if empty:
            raise ValueError(
                f"the {what} loader yielded no batches: pass a loader over at least one example"
            )

    def _prepare(self, batch: Any, device: torch.device) -> Any:
        batch = _batch.as_pytree(batch)
        if self.transfer_batch is not None:
            batch = self.transfer_batch(batch)
        else:
            batch = _batch.to_device(batch, device)
        return _batch.to_autograd_tensors(batch)

    def check_losses(self, loader: Iterable[Any], what: str) -> int:
        """Raise unless every batch of ``loader`` gives finite per-example losses; the example count.

        Under DDP the callback runs this on every rank before the first collective, so that a
        rank with a bad batch fails together with the others instead of leaving them waiting.
        """
        with analysis_context(self.model):
            f, params = self.functional_loss(), self.parameters()
            return self.load_sample(f, params, loader, what, keep=False).count

    def load_sample(
        self,
        f: FunctionalLoss,
        params: dict[str, Tensor],
        loader: Iterable[Any],
        what: str,
        *,
        keep: bool = True,
        reduce_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> Sample:
        """Read ``loader`` once: every batch's losses checked (finite, one per example), the
        examples counted (summed over processes with ``reduce_fn``), the batches kept on the
        device when ``keep``. The one reading of an HVP sample or of data to check."""
        kept, count, first = [], 0, None
        for i, batch in enumerate(self.batches(loader, what)):
            size = _batch.batch_size(batch)
            with torch.no_grad():
                check_losses(
                    call_loss(f, params, batch, f"batch {i} of the {what} loader"),
                    size,
                    f"batch {i} of the {what} loader",
                    indices=dataset_indices(loader, i, size),
                    weights=params,
                )
            count += size
            first = batch if first is None else first
            if keep:
                kept.append(batch)
        if reduce_fn is not None:
            count = int(reduce_fn(torch.tensor([float(count)], device=self.device)).item())
        return Sample(kept, count, first)

    def check_parameters_used(
        self, f: FunctionalLoss, params: dict[str, Tensor], batch: Any
    ) -> None:
        """Raise when no selected parameter reaches the loss, warn for those that do not: their
        influence would be zero, silently (a LoRA adapter merged into the base weights with
        ``merge_adapter()`` is still a parameter, unused by the forward)."""
        merged = sorted(
            name
            for name, module in self.model.named_modules()
            if getattr(module, "merged_adapters", None)  # peft's BaseTunerLayer after a merge
        )
        if merged:
            raise ConfigurationError(
                f"the LoRA adapters of {len(merged)} layers ({', '.join(merged[:3])}) are merged "
                "into the base weights (merge_adapter()): the adapter parameters no longer reach "
                "the loss and their influence would be zero. Analyse before merging, or call "
                "unmerge_adapter() first"
            )
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():
            total = f(leaves, batch).sum()
            grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
        unused = [n for n, g in zip(leaves, grads, strict=True) if g is None]
        if len(unused) == len(leaves):
            raise ConfigurationError(
                f"none of the {len(leaves)} selected parameters reaches the loss (e.g. "
                f"{', '.join(unused[:3])}): their influence would be zero. A LoRA adapter merged "
                "into the base weights (merge_adapter()) is no longer used: unmerge it "
                "(unmerge_adapter()) or select the parameters the forward uses with params=[...]"
            )
        if unused:
            self._warn(
                f"{len(unused)} selected parameters do not reach the loss ({', '.join(unused[:5])}"
                f"{', ...' if len(unused) > 5 else ''}): their part of the influence is zero; "
                "leave them out with params=[...]"
            )

    def influence(self, train_loader: Iterable[Any], test_loader: Iterable[Any]) -> Tensor:
        """``[N_test, N_train]`` influence of every training example on every test example."""
        raise NotImplementedError

    def top_influences(
        self, train_loader: Iterable[Any], test_loader: Iterable[Any], k: int = 10
    ) -> TopInfluences:
        """The ``k`` strongest proponents and opponents in ``train_loader`` of each test example."""
        if k < 1:
            raise ValueError(f"k={k} must be a positive integer")
        matrix = self.influence(train_loader, test_loader)
        k = min(k, matrix.shape[1])
        top = matrix.topk(k, dim=1)
        bottom = (-matrix).topk(k, dim=1)
        return TopInfluences(top.indices, top.values, bottom.indices, -bottom.values)

    def _grad_chunk(self) -> int:
        if self.config.example_chunk is not None:
            return self.config.example_chunk
        itemsize = torch.finfo(self.compute_dtype).bits // 8
        return max(1, _GRAD_CHUNK_BYTES // max(1, self.space.dim * itemsize))

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class ValidationProjection(NamedTuple):
    """The projected gradients of a validation set: ``total[i] = <e_i, sum_z g_z>`` over all of
    it, and per class ``by_class[c][i] = <e_i, sum_{z in c} g_z>`` (when the classes are known).
    ``count`` is the number of validation examples."""

    total: Tensor
    by_class: dict[int, Tensor] | None
    count: int


class _Scored(NamedTuple):
    index: int
    size: int
    projections: Tensor | None  # [B, k] on the CPU, None for a skipped batch
    losses: Tensor | None
    batch: Any = None  # the batch on the device (None when skipped)


MAX_CLASS_COLUMNS = 32
"""Validation influence per class gets a column per class up to this many classes (the minimum
over classes and its class are always computed)."""


class ProjectedInfluence(EngineBase):
    """Base class: scoring from ``directions [k, P]`` and ``eigenvalues [k]``.

    Every score comes from the projected gradients ``P[x, i] = <e_i, g_x>`` of one pass over the
    data (``_scored``), and the weights ``w_i ~ 1 / lambda_i``:

    * self-influence ``I(x, x) = sum_i w_i P[x, i]^2``;
    * influence on a test example ``I(x, z) = sum_i w_i P[z, i] P[x, i]``;
    * validation influence ``V(x) = sum_z I(x, z) = sum_i w_i <e_i, sum_z g_z> P[x, i]`` over a
      validation set: approximately ``<g_val, H^-1 g_x>`` with ``g_val`` the gradient of the
      summed validation loss. Negative: removing x would lower the validation loss (x hurts it).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        config: ScoringConfig,
        params: ParamSelector = None,
        transfer_batch: TransferFn | None = None,
    ) -> None:
        super().__init__(model, loss_fn, config, params=params, transfer_batch=transfer_batch)
        self.directions: Tensor | None = None
        self.eigenvalues_: Tensor | None = None
        self.projection_mode_: str | None = (
            None if config.projection == "auto" else config.projection
        )
        self._owners: Any = None
        # why projection='auto' passed over a route (recorded in the manifest)
        self.route_notes: list[str] = []

    def _require_fitted(self) -> tuple[Tensor, Tensor]:
        if self.directions is None or self.eigenvalues_ is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call .fit(loader) or .load_state_dict(...) "
                "before scoring"
            )
        return self.directions, self.eigenvalues_

    # -- scoring -------------------------------------------------------------------------------
    @property
    def weights(self) -> Tensor:
        """Deprecated name of ``inverse_eigenvalue_weights``."""
        warnings.warn(
            "engine.weights is now engine.inverse_eigenvalue_weights",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.inverse_eigenvalue_weights

    @property
    def inverse_eigenvalue_weights(self) -> Tensor:
        """``[k]`` weights ``w_i ~ 1 / lambda_i`` under the configured eigenvalue policy."""
        _, lam = self._require_fitted()
        return scores.inverse_eigenvalues(
            lam,
            self.config.eigenvalue_policy,
            damping=self.config.damping,
            rtol=self.config.eigenvalue_rtol,
        )

    def _hooked_layers(self) -> Any:
        """The layers of the hooks route, or why it does not apply (a string); cached."""
        if self._owners is None:
            self._owners = hook_support(self.model, self.space.names)
        return self._owners

    def _project_batch(
        self, f, params, batch, directions: Tensor, mode: str, *, check: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``([B, k] projections, [B] losses)`` of one batch by route ``mode``."""
        owners = self._hooked_layers() if mode == "hooks" else None
        if mode == "hooks" and isinstance(owners, str):
            raise ConfigurationError(
                f"projection='hooks' does not apply to this model: {owners}; use "
                "projection='auto' (it falls back to a vmap route)"
            )
        return project(
            mode,
            f,
            params,
            batch,
            directions,
            self.space,
            example_chunk=self._grad_chunk(),
            direction_chunk=self.config.direction_chunk,
            model=self.model,
            owners=owners,
            check=check,
        )

    def _choose_projection(
        self, f, params, batch, directions: Tensor
    ) -> tuple[str, tuple[Tensor, Tensor] | None]:
        """Pick the route for ``projection='auto'``; return it and, when already computed, the
        first batch's projections and losses.

        * ``hooks`` when every selected parameter sits in a layer it covers and the first batch
          passes its exactness check (the sum over the batch equals the gradient of the summed
          loss): one ordinary backward pass, the cheapest route.
        * otherwise the faster of ``grad`` (``vmap`` of per-example gradients; ``loop`` when
          ``vmap`` cannot trace the model) and ``jvp`` (forward mode), timed: the grad route on
          the whole first batch (its per-call overhead is large, so timing it on a small slice
          made it look several times dearer per example than on real batches), the jvp route on
          a 16-example slice with one chunk of directions, extrapolated.
        """
        device = self.device
        if device.type == "xla":
            # Reverse mode only: torch-xla 2.9 gets forward mode wrong for some losses
            # (F.cross_entropy with reduction='mean'); static shapes, no hooks.
            return "grad", None
        owners = self._hooked_layers()
        if isinstance(owners, str):
            self.route_notes.append(f"hooks: {owners}")
        else:
            try:
                return "hooks", self._project_batch(
                    f, params, batch, directions, "hooks", check=True
                )
            except HooksUnsupported as err:
                # expected for some models (a weight penalty in the loss, a position embedding
                # broadcast over the batch): recorded in the manifest, not warned about
                self.route_notes.append(f"hooks: {err}")
        size = _batch.batch_size(batch)
        k = directions.shape[0]
        chunk = min(k, self.config.direction_chunk)
        one = _batch.slice_batch(batch, 0, 1)
        reverse = "grad"
        try:
            self._project_batch(f, params, one, directions[:chunk], "grad")  # warm-up
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
            # Data-dependent control flow in the model (an attention mask checked with
            # `if mask.all()`, say): one example at a time traces it as training does.
            note = f"vmap cannot trace this model ({str(err).splitlines()[0][:120]})"
            self.route_notes.append(f"grad: {note}")
            self._warn(f"projection='auto': {note}; per-example gradients one example at a time")
            reverse = "loop"
        try:
            self._project_batch(f, params, one, directions[:chunk], "jvp")
        except (NotImplementedError, RuntimeError) as err:
            # An operation without a forward-mode derivative (a custom kernel, say): the
            # per-example-gradient route computes the same numbers.
            self._warn(
                f"projection='auto': the forward-mode route fails on this model "
                f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); using {reverse!r}"
            )
            return reverse, None

        sync_device(device)
        start = time.perf_counter()
        first = self._project_batch(f, params, batch, directions, reverse)
        sync_device(device)
        grad_seconds = time.perf_counter() - start

        probe = _batch.slice_batch(batch, 0, min(16, size))
        sync_device(device)
        start = time.perf_counter()
        self._project_batch(f, params, probe, directions[:chunk], "jvp")
        sync_device(device)
        jvp_seconds = (time.perf_counter() - start) * (size / min(16, size)) * (k / chunk)
        return ("jvp" if jvp_seconds < grad_seconds else reverse), first

    def _settle_projection(self, f, params, batch: Any, directions: Tensor) -> None:
        """Fix the projection route at fit time (saved in ``state_dict``): scores are reproducible."""
        if self.config.projection != "auto":
            self.projection_mode_ = self.config.projection
        else:
            self.projection_mode_ = self._choose_projection(f, params, batch, directions)[0]

    def _scored(
        self,
        loader: Iterable[Any],
        what: str,
        *,
        skip: Callable[[int], bool] | None = None,
        desc: str = "Projecting",
        total: int | None = None,
    ) -> Iterator[_Scored]:
        """The one pass over scored data: per batch, its projected gradients and losses (CPU).

        ``skip(i)`` True leaves batch ``i`` unscored (it is read, not moved or differentiated):
        resumed shards. The first scored batch's losses are checked (one per example, finite) and
        fix the projection route under ``projection='auto'``.
        """
        directions, _ = self._require_fitted()
        bar = tqdm(total=total, desc=desc, unit="ex", disable=not self.config.progress, leave=False)
        checked = False
        with analysis_context(self.model):
            f, params = self.functional_loss(), self.parameters()
            device = self.device
            index = -1
            for index, raw in enumerate(loader):
                if skip is not None and skip(index):
                    size = _batch.batch_size(raw)
                    bar.update(size)
                    yield _Scored(index, size, None, None)
                    continue
                batch = self._prepare(raw, device)
                size = _batch.batch_size(batch)
                result = None
                if not checked:
                    with torch.no_grad():
                        check_losses(
                            f(params, batch),
                            size,
                            f"batch {index} of the {what} loader",
                            indices=dataset_indices(loader, index, size),
                            weights=params,
                        )
                    checked = True
                    if self.projection_mode_ is None:
                        self.projection_mode_, result = self._choose_projection(
                            f, params, batch, directions
                        )
                if result is None:
                    result = self._project_batch(
                        f, params, batch, directions, self.projection_mode_
                    )
                projections, losses = result[0].cpu(), result[1].cpu()
                if not bool(torch.isfinite(projections).all()):
                    raise FloatingPointError(
                        f"projected gradients of batch {index} of the {what} loader contain NaN "
                        "or Inf: a loss or gradient overflowed; check its inputs and losses"
                    )
                bar.update(size)
                yield _Scored(index, size, projections, losses, batch)
        bar.close()
        if index < 0:
            raise ValueError(
                f"the {what} loader yielded no batches: pass a loader over at least one example"
            )

    def project(self, loader: Iterable[Any], *, desc: str = "Projecting") -> Tensor:
        """``[N, k]`` projected gradients ``<e_i, g_x>`` of every example, in loader order (CPU)."""
        return torch.cat([s.projections for s in self._scored(loader, "scoring", desc=desc)])

    def self_influence(self, loader: Iterable[Any]) -> Tensor:
        """``[N]`` self-influence ``I(x, x) = sum_i w_i <e_i, g_x>^2`` in loader order."""
        projections = self.project(loader, desc="Self-influence").double()
        return scores.self_influence(projections, self.inverse_eigenvalue_weights)

    def validation_projection(
        self,
        loader: Iterable[Any],
        *,
        targets: Callable[[Any], Tensor | None] | None = _batch.class_targets,
    ) -> ValidationProjection:
        """The projected gradients of a validation set, in total and per class.

        ``total[i] = <e_i, sum_z g_z>`` (the gradient of the summed validation loss on the
        eigenvectors) and, when ``targets(batch)`` gives each example's class, the same sum per
        class. Costs one pass of projections over the validation set.

        Args:
            loader: the validation data (any order; its losses must be finite).
            targets: ``batch -> [B]`` class indices, or None for no classes; the default finds
                the class-index tensor of ``(inputs, targets)`` and dict (``"labels"``) batches.
        """
        _, lam = self._require_fitted()
        total = torch.zeros(lam.numel(), dtype=torch.float64)
        by_class: dict[int, Tensor] | None = {} if targets is not None else None
        count = 0
        for scored in self._scored(loader, "validation", desc="Validation"):
            assert scored.projections is not None
            p = scored.projections.double()
            total += p.sum(0)
            count += scored.size
            if by_class is not None:
                classes = targets(scored.batch) if targets is not None else None
                if classes is None:
                    by_class = None
                    continue
                classes = torch.as_tensor(classes).detach().cpu().long().reshape(-1)
                for c in classes.unique().tolist():
                    part = p[classes == c].sum(0)
                    by_class[c] = by_class[c] + part if c in by_class else part
        return ValidationProjection(total, by_class, count)

    def validation_influence(
        self, train_loader: Iterable[Any], val_loader: Iterable[Any]
    ) -> Tensor:
        """``[N]`` validation influence ``V(x) = sum_z I(x, z)`` of every training example over
        the validation set, in ``train_loader`` order: ``sum_i w_i <e_i, sum_z g_z> <e_i, g_x>``,
        approximately ``<g_val, H^-1 g_x>``.

        Negative: removing x would lower the validation loss (x hurts the validation set: a
        mislabeled example, say); positive: x helps it. Equal to
        ``influence(train_loader, val_loader).sum(0)`` at the cost of one pass over each set.
        """
        val = self.validation_projection(val_loader, targets=None)
        return self.signals(train_loader, validation=val)["validation_influence"]

    def signals(
        self,
        loader: Iterable[Any],
        *,
        validation: ValidationProjection | None = None,
    ) -> dict[str, Tensor]:
        """Every per-example signal of one pass over ``loader``, in loader order (float64, CPU):

        * ``self_influence``: ``sum_i w_i P[x, i]^2``;
        * ``loss``: the per-example loss at the current weights (eval mode);
        * with ``validation`` (``validation_projection(val_loader)``): ``validation_influence``
          ``sum_i w_i v_i P[x, i]`` and, when the validation classes are known,
          ``validation_influence_min`` (the lowest over the classes c of
          ``V_c(x) = sum_i w_i v_{c,i} P[x, i]``, the class x hurts most),
          ``validation_influence_min_class`` (that class) and, up to ``MAX_CLASS_COLUMNS``
          classes, ``validation_influence_class_<c>``.
        """
        weights = self.inverse_eigenvalue_weights
        out: dict[str, list[Tensor]] = {}
        for scored in self._scored(loader, "scoring", desc="Scoring"):
            assert scored.projections is not None and scored.losses is not None
            for name, value in self._batch_signals(
                scored.projections, scored.losses, weights, validation
            ).items():
                out.setdefault(name, []).append(value)
        return {name: torch.cat(parts) for name, parts in out.items()}

    @staticmethod
    def _batch_signals(
        projections: Tensor,
        losses: Tensor,
        weights: Tensor,
        validation: ValidationProjection | None,
    ) -> dict[str, Tensor]:
        p = projections.double()
        w = weights.to(p)
        out = {"self_influence": scores.self_influence(p, w), "loss": losses.double()}
        if validation is not None:
            out["validation_influence"] = p @ (w * validation.total.to(p))
            classes = sorted((validation.by_class or {}).items())
            if classes:
                per_class = p @ (w[:, None] * torch.stack([v.to(p) for _, v in classes], 1))
                # the validation class each example hurts most, and by how much: a mislabeled
                # example hurts the class it truly belongs to, which a sum over classes dilutes
                low, which = per_class.min(1)
                out["validation_influence_min"] = low
                ids = torch.tensor([c for c, _ in classes], dtype=torch.float64)
                out["validation_influence_min_class"] = ids[which]
                if len(classes) <= MAX_CLASS_COLUMNS:
                    for j, (c, _) in enumerate(classes):
                        out[f"validation_influence_class_{c}"] = per_class[:, j]
        return out

    def self_influence_shards(
        self,
        loader: Iterable[Any],
        output_dir: str | os.PathLike,
        *,
        shard_batches: int = 64,
        resume: bool = True,
        validation: ValidationProjection | None = None,
    ) -> Path:
        """Every signal of ``signals`` for every example of ``loader``, written in shards as it is
        computed (``read_scores(dir)`` reads the self-influence, ``read_signals(dir)`` all).

        Memory does not grow with N: each shard of ``shard_batches`` batches is written (atomically)
        as soon as it is scored and then dropped. A run killed at any point and started again with
        the same engine, loader and arguments skips the complete shards (their batches are read
        but not scored) and gives scores identical to an uninterrupted run. A progress bar shows
        examples per second.

        Args:
            loader: in a fixed order (no shuffling): shards are positions in it.
            output_dir: the score directory (see ``lightning_influence.io.shards``).
            shard_batches: batches per shard.
            resume: keep an earlier run's complete shards (same arguments); False starts over.
            validation: a ``validation_projection``, to stream validation influence too.

        Returns:
            ``output_dir``.

        Raises:
            ConfigurationError: a shuffling loader, or a directory of other arguments or of a
                dataset of another size.
            OSError: a shard could not be written (the message says what is kept).
        """
        if shard_batches < 1:
            raise ValueError(f"shard_batches={shard_batches} must be a positive integer")
        if isinstance(getattr(loader, "sampler", None), RandomSampler):
            raise ConfigurationError(
                "resumable scoring needs a loader in a fixed order: build it with shuffle=False"
            )
        weights = self.inverse_eigenvalue_weights
        dataset = getattr(loader, "dataset", None)
        num_examples = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        arguments = {
            **self.score_arguments(),
            "shard_batches": shard_batches,
            "batch_size": getattr(loader, "batch_size", None),
        }
        if validation is not None:
            digest = hashlib.sha1(validation.total.double().numpy().tobytes()).hexdigest()
            arguments["validation_sha1"] = digest
        shards = ScoreShards(output_dir, arguments, num_examples=num_examples, resume=resume)
        position = start = 0
        pending: dict[str, list[Tensor]] = {}
        k = -1
        for scored in self._scored(
            loader,
            "scoring",
            skip=lambda i: shards.done(i // shard_batches),
            desc="Scoring",
            total=num_examples,
        ):
            i = scored.index
            k = i // shard_batches
            if i % shard_batches == 0:
                start = position
            if scored.projections is not None and scored.losses is not None:
                for name, value in self._batch_signals(
                    scored.projections, scored.losses, weights, validation
                ).items():
                    pending.setdefault(name, []).append(value)
                if (i + 1) % shard_batches == 0:
                    shards.write(k, start, {n: torch.cat(v) for n, v in pending.items()})
                    pending = {}
            position += scored.size
        if pending:
            shards.write(k, start, {n: torch.cat(v) for n, v in pending.items()})
        shards.finish(k + 1, position)
        return Path(output_dir)

    def score_arguments(self) -> dict[str, Any]:
        """What this engine's scores depend on: its config, route and a fingerprint of its
        eigenpairs (a refit with other arguments gives other scores: never mixed with these)."""
        directions, lam = self._require_fitted()
        config = {k: v for k, v in self.config.to_dict().items() if k != "progress"}
        flat = directions.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 100_000)].double().cpu()
        digest = hashlib.sha1(lam.double().cpu().numpy().tobytes())
        digest.update(sample.numpy().tobytes())
        return {
            "engine": type(self).__name__,
            "config": config,
            "projection_mode": self.projection_mode_,
            "parameters": list(self.space.names),
            "eigenpairs_sha1": digest.hexdigest(),
        }

    def influence(self, train_loader: Iterable[Any], test_loader: Iterable[Any]) -> Tensor:
        """``[N_test, N_train]`` influence ``I(x, z) = sum_i w_i <e_i, g_z><e_i, g_x>``.

        Positive when removing training example x would raise the loss on test example z.
        """
        train = self.project(train_loader, desc="Projecting train").double()
        test = self.project(test_loader, desc="Projecting test").double()
        return scores.influence(test, train, self.inverse_eigenvalue_weights)

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The directions, eigenvalues, parameter layout, route and config: enough to score later
        without refitting."""
        directions, lam = self._require_fitted()
        return {
            "engine": type(self).__name__,
            "config": self.config.to_dict(),
            "param_names": list(self.space.names),
            "param_shapes": [list(s) for s in self.space.shapes],
            "eigenvalues": lam.detach().cpu(),
            "directions": directions.detach().cpu(),
            # The route chosen by projection="auto" travels too, so that a reloaded engine
            # reproduces the scores bit for bit.
            "projection_mode": self.projection_mode_,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved (the config too, except ``progress``)."""
        if state.get("engine") != type(self).__name__:
            raise ValueError(
                f"state_dict was saved by {state.get('engine')!r}, not {type(self).__name__}: load it "
                "into the engine that produced it"
            )
        saved = dict(state["config"])
        saved["progress"] = self.config.progress
        self.config = type(self.config)(**saved)
        self.space.check_compatible(state["param_names"], state["param_shapes"])
        directions = state["directions"]
        if (
            directions.shape[1] != self.space.dim
            or directions.shape[0] != state["eigenvalues"].numel()
        ):
            raise ValueError("state_dict directions and eigenvalues have inconsistent shapes")
        self.directions = directions.to(self._directions_device())
        self.eigenvalues_ = state["eigenvalues"].to(torch.float64)
        if self.config.projection == "auto":
            self.projection_mode_ = state.get("projection_mode")
        else:
            self.projection_mode_ = self.config.projection

    def _directions_device(self) -> torch.device:
        return self.device
