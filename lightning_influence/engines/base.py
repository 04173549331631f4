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
from torch.utils.data import RandomSampler
from tqdm.auto import tqdm

from lightning_influence.config import ScoringConfig, parse_dtype
from lightning_influence.core import batch as _batch
from lightning_influence.core import scores
from lightning_influence.core.context import analysis_context
from lightning_influence.core.functional_loss import FunctionalLoss, LossFn, make_functional_loss
from lightning_influence.core.parameters import ParameterSpace, ParamSelector, select_parameters
from lightning_influence.core.projection import project_grad, project_jvp
from lightning_influence.losses import check_losses

__all__ = ["TopInfluences"]

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


def sync_device(device: torch.device) -> None:
    """Wait for queued kernels (for honest timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
                check_losses(f(params, batch), size, f"batch {i} of the {what} loader")
            count += size
            first = batch if first is None else first
            if keep:
                kept.append(batch)
        if reduce_fn is not None:
            count = int(reduce_fn(torch.tensor([float(count)], device=self.device)).item())
        return Sample(kept, count, first)

    def _grad_chunk(self) -> int:
        if self.config.example_chunk is not None:
            return self.config.example_chunk
        itemsize = torch.finfo(self.compute_dtype).bits // 8
        return max(1, _GRAD_CHUNK_BYTES // max(1, self.space.dim * itemsize))

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class ProjectedInfluence(EngineBase):
    """Base class: scoring from ``directions [k, P]`` and ``eigenvalues [k]``."""

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

    def _project_batch(self, f, params, batch, directions: Tensor, mode: str) -> Tensor:
        if mode == "jvp":
            return project_jvp(
                f, params, batch, directions, self.space, self.config.direction_chunk
            )
        return project_grad(f, params, batch, directions, self.space, self._grad_chunk())

    def _choose_projection(self, f, params, batch, directions: Tensor) -> tuple[str, Tensor | None]:
        """Pick the faster route for ``projection='auto'``; return it and, when already computed,
        the first batch's projections.

        The grad route is timed on the whole first batch (its result is kept, so the timing costs
        nothing): its per-call overhead (``vmap(grad)``) is large, so timing it on a small slice,
        as an earlier version did, made it look several times dearer per example than on real
        batches and picked the forward-mode route where it was 2-3x slower. The jvp route's cost
        per example and direction hardly depends on the batch size, so it is timed on a 16-example
        slice with one chunk of directions and extrapolated to the batch and to all directions.
        """
        device = self.device
        if device.type == "xla":
            # Reverse mode only: torch-xla 2.9 gets forward mode wrong for some losses
            # (F.cross_entropy with reduction='mean').
            return "grad", None
        size = _batch.batch_size(batch)
        k = directions.shape[0]
        chunk = min(k, self.config.direction_chunk)
        one = _batch.slice_batch(batch, 0, 1)
        self._project_batch(f, params, one, directions[:chunk], "grad")  # warm up both routes
        try:
            self._project_batch(f, params, one, directions[:chunk], "jvp")
        except (NotImplementedError, RuntimeError) as err:
            # An operation without a forward-mode derivative (a custom kernel, say): the
            # per-example-gradient route computes the same numbers.
            self._warn(
                f"projection='auto': the forward-mode route fails on this model "
                f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); using 'grad'"
            )
            return "grad", None

        sync_device(device)
        start = time.perf_counter()
        first = self._project_batch(f, params, batch, directions, "grad")
        sync_device(device)
        grad_seconds = time.perf_counter() - start

        probe = _batch.slice_batch(batch, 0, min(16, size))
        sync_device(device)
        start = time.perf_counter()
        self._project_batch(f, params, probe, directions[:chunk], "jvp")
        sync_device(device)
        jvp_seconds = (time.perf_counter() - start) * (size / min(16, size)) * (k / chunk)
        return ("jvp" if jvp_seconds < grad_seconds else "grad"), first

    def _settle_projection(self, f, params, batch: Any, directions: Tensor) -> None:
        """Fix the projection route at fit time (saved in ``state_dict``): scores are reproducible."""
        if self.config.projection != "auto":
            self.projection_mode_ = self.config.projection
        else:
            self.projection_mode_ = self._choose_projection(f, params, batch, directions)[0]

    def project(self, loader: Iterable[Any], *, desc: str = "Projecting") -> Tensor:
        """``[N, k]`` projected gradients ``<e_i, g_x>`` of every example, in loader order (CPU)."""
        directions, _ = self._require_fitted()
        out = []
        with analysis_context(self.model):
            f, params = self.functional_loss(), self.parameters()
            bar = tqdm(desc=desc, unit="batch", disable=not self.config.progress, leave=False)
            for i, batch in enumerate(self.batches(loader, "scoring")):
                if i == 0:
                    with torch.no_grad():
                        check_losses(
                            f(params, batch),
                            _batch.batch_size(batch),
                            "batch 0 of the scoring loader",
                        )
                    if self.projection_mode_ is None:
                        self.projection_mode_, first = self._choose_projection(
                            f, params, batch, directions
                        )
                        if first is not None:
                            out.append(first.cpu())
                            bar.update()
                            continue
                out.append(
                    self._project_batch(f, params, batch, directions, self.projection_mode_).cpu()
                )
                bar.update()
            bar.close()
        projections = torch.cat(out)
        if not bool(torch.isfinite(projections).all()):
            raise FloatingPointError(
                "projected gradients contain NaN or Inf: a loss or gradient overflowed on the "
                "scoring data; check for non-finite inputs or losses"
            )
        return projections

    def self_influence(self, loader: Iterable[Any]) -> Tensor:
        """``[N]`` self-influence ``I(x, x) = sum_i w_i <e_i, g_x>^2`` in loader order."""
        projections = self.project(loader, desc="Self-influence")
        return scores.self_influence(projections, self.inverse_eigenvalue_weights)

    def self_influence_shards(
        self,
        loader: Iterable[Any],
        output_dir: str | os.PathLike,
        *,
        shard_batches: int = 64,
        resume: bool = True,
    ) -> Path:
        """Self-influence of every example of ``loader``, written in shards as it is computed.

        Memory does not grow with N: each shard of ``shard_batches`` batches is written (atomically)
        as soon as it is scored and then dropped. A run killed at any point and started again with
        the same engine, loader and arguments skips the complete shards (their batches are read
        but not scored) and gives scores identical to an uninterrupted run. A progress bar shows
        examples per second. ``lightning_influence.io.shards.read_scores(dir)`` reads the result.

        Args:
            loader: in a fixed order (no shuffling): shards are positions in it.
            output_dir: the score directory (see ``lightning_influence.io.shards``).
            shard_batches: batches per shard.
            resume: keep an earlier run's complete shards (same arguments); False starts over.

        Returns:
            ``output_dir``.

        Raises:
            ConfigurationError: a shuffling loader, or a directory of other arguments or of a
                dataset of another size.
            OSError: a shard could not be written (the message says what is kept).
        """
        from lightning_influence.config import ConfigurationError
        from lightning_influence.io.shards import ScoreShards

        if shard_batches < 1:
            raise ValueError(f"shard_batches={shard_batches} must be a positive integer")
        if isinstance(getattr(loader, "sampler", None), RandomSampler):
            raise ConfigurationError(
                "resumable scoring needs a loader in a fixed order: build it with shuffle=False"
            )
        directions, _ = self._require_fitted()
        weights = self.inverse_eigenvalue_weights
        dataset = getattr(loader, "dataset", None)
        num_examples = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        arguments = {
            **self.score_arguments(),
            "shard_batches": shard_batches,
            "batch_size": getattr(loader, "batch_size", None),
        }
        shards = ScoreShards(output_dir, arguments, num_examples=num_examples, resume=resume)
        bar = tqdm(
            total=num_examples,
            desc="Self-influence",
            unit="ex",
            disable=not self.config.progress,
            leave=False,
        )
        position = start = 0
        pending: list[Tensor] = []
        checked = False
        k = -1
        with analysis_context(self.model):
            f, params = self.functional_loss(), self.parameters()
            device = self.device
            for i, raw in enumerate(loader):
                k = i // shard_batches
                if i % shard_batches == 0:
                    start = position
                if shards.done(k):
                    size = _batch.batch_size(raw)
                else:
                    batch = self._prepare(raw, device)
                    size = _batch.batch_size(batch)
                    if not checked:
                        with torch.no_grad():
                            check_losses(f(params, batch), size, f"batch {i} of the scoring loader")
                        checked = True
                    if self.projection_mode_ is None:
                        self.projection_mode_ = self._choose_projection(
                            f, params, batch, directions
                        )[0]
                    projections = self._project_batch(
                        f, params, batch, directions, self.projection_mode_
                    ).cpu()
                    if not bool(torch.isfinite(projections).all()):
                        raise FloatingPointError(
                            f"projected gradients of batch {i} contain NaN or Inf: check its "
                            "inputs and losses"
                        )
                    pending.append(scores.self_influence(projections, weights))
                    if (i + 1) % shard_batches == 0:
                        shards.write(k, start, torch.cat(pending))
                        pending = []
                position += size
                bar.update(size)
            if pending:
                shards.write(k, start, torch.cat(pending))
        bar.close()
        if k < 0:
            raise ValueError(
                "the scoring loader yielded no batches: pass a loader over at least one example"
            )
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
        train = self.project(train_loader, desc="Projecting train")
        test = self.project(test_loader, desc="Projecting test")
        return scores.influence(test, train, self.inverse_eigenvalue_weights)

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

    # -- persistence ---------------------------------------------------------------------------
    def _base_state(self) -> dict[str, Any]:
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

    def _load_base_state(self, state: dict[str, Any]) -> None:
        if state.get("engine") != type(self).__name__:
            raise ValueError(
                f"state_dict was saved by {state.get('engine')!r}, not {type(self).__name__}: load it "
                "into the engine that produced it"
            )
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
