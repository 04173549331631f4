"""Baselines of the paper's Table 1 in the engines' API: RandProj and TracIn."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_influence import _batch
from lightning_influence._context import analysis_context
from lightning_influence._engine import EngineBase, ProjectedInfluence, TransferFn
from lightning_influence._functional import LossFn
from lightning_influence.config import ScoringConfig
from lightning_influence.hvp import DatasetHessian, HVPMode, ReduceFn, resolve_hvp_mode
from lightning_influence.parameters import ParamSelector
from lightning_influence.projection import per_example_gradients

__all__ = ["RandomProjectionConfig", "RandomProjectionInfluence", "TracInInfluence"]


@dataclass
class RandomProjectionConfig(ScoringConfig):
    """Arguments of ``RandomProjectionInfluence``."""

    dim: int = field(default=100, metadata={"help": "sketch size p (rows of G, HVPs in fit)."})
    seed: int = field(default=0, metadata={"help": "seed of the Gaussian sketch G."})
    hvp_mode: HVPMode = field(default="auto", metadata={"help": "as in ArnoldiConfig."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 1:
            raise ValueError(f"dim={self.dim} must be a positive integer")
        if self.hvp_mode not in ("auto", "fwd-rev", "rev-rev"):
            raise ValueError(
                f"hvp_mode={self.hvp_mode!r} is not one of 'auto', 'fwd-rev', 'rev-rev'"
            )


class RandomProjectionInfluence(ProjectedInfluence):
    """The paper's RandProj: influence through a random Gaussian sketch instead of eigenvectors.

    ``G`` is ``[p, P]`` with i.i.d. ``N(0, 1/p)`` entries, so ``E[G^T G] = I``. ``fit`` builds the
    projected Hessian ``M = G H G^T`` from p HVPs, and scores use
    ``I(x, z) = (G g_z)^T M^-1 (G g_x)``. Internally ``M = U diag(mu) U^T`` and the engine scores
    with directions ``U^T G`` and eigenvalues ``mu``, so the eigenvalue policy applies to ``mu``
    exactly as to Arnoldi's eigenvalues.

    Args: as ``ArnoldiInfluence``, with ``RandomProjectionConfig`` fields (``dim``, ``seed``, ...).
    """

    config: RandomProjectionConfig

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        *,
        params: ParamSelector = None,
        config: RandomProjectionConfig | None = None,
        transfer_batch: TransferFn | None = None,
        **kwargs: Any,
    ) -> None:
        if config is None:
            config = RandomProjectionConfig(**kwargs)
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        super().__init__(model, loss_fn, config, params=params, transfer_batch=transfer_batch)
        self.sketch: Tensor | None = None
        self.projected_hessian: Tensor | None = None

    @property
    def eigenvalues(self) -> Tensor:
        """Eigenvalues ``mu`` of ``G H G^T``, sorted by ``|mu|`` descending."""
        return self._require_fitted()[1]

    def fit(
        self, loader: Iterable[Any], *, reduce_fn: ReduceFn | None = None
    ) -> RandomProjectionInfluence:
        """Build ``M = G H G^T`` (p HVPs over ``loader``) and diagonalize it."""
        cfg = self.config
        with analysis_context(self.model):
            f, params = self._functional(), self._params()
            device, dtype = self.device, self.compute_dtype
            batches, count = [], 0
            for i, batch in enumerate(self._batches(loader, "HVP sample")):
                with torch.no_grad():
                    self._check_losses(f(params, batch), batch, i, "HVP sample")
                count += _batch.batch_size(batch)
                batches.append(batch)
            if reduce_fn is not None:
                count = int(reduce_fn(torch.tensor([float(count)], device=device)).item())
            hessian = DatasetHessian(
                f,
                params,
                self.space,
                batches,
                resolve_hvp_mode(cfg.hvp_mode, device),
                count,
                reduce_fn,
            )
            generator = torch.Generator().manual_seed(cfg.seed)
            sketch = torch.randn(cfg.dim, self.space.dim, generator=generator, dtype=torch.float64)
            sketch = (sketch / cfg.dim**0.5).to(device, dtype)
            rows = []
            for g in tqdm(
                sketch, desc="RandProj", unit="hvp", disable=not cfg.progress, leave=False
            ):
                rows.append(hessian(g))
            hg = torch.stack(rows)  # [p, P] = (H G^T)^T
            if not bool(torch.isfinite(hg).all()):
                raise FloatingPointError(
                    "a Hessian-vector product of the sketch returned NaN or Inf: check the HVP sample "
                    "for extreme inputs"
                )
            projected = (sketch @ hg.T).to("cpu", torch.float64)
            projected = (projected + projected.T) / 2
            mu, u = torch.linalg.eigh(projected)
            order = torch.sort(mu.abs(), descending=True, stable=True).indices
            mu, u = mu[order], u[:, order]
            self.sketch = sketch
            self.projected_hessian = projected
            self.directions = u.T.to(device, dtype) @ sketch
            self._settle_projection(f, params, batches[0], self.directions)
        self.eigenvalues_ = mu
        return self

    def state_dict(self) -> dict[str, Any]:
        """Directions ``U^T G``, eigenvalues ``mu``, the parameter layout and the config."""
        return self._base_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = dict(state["config"])
        saved["progress"] = self.config.progress
        self.config = RandomProjectionConfig(**saved)
        self._load_base_state(state)


def _load_checkpoint(checkpoint: dict[str, Tensor] | str | os.PathLike) -> dict[str, Tensor]:
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.exists(checkpoint):
            raise FileNotFoundError(f"checkpoint {os.fspath(checkpoint)!r} does not exist")
        # Lightning checkpoints hold hyper-parameters and loop state besides tensors; only load
        # checkpoints you trust.
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise TypeError(
            f"a checkpoint must be a state dict or a path to one, got {type(checkpoint).__name__}"
        )
    return checkpoint


def _match_names(state: dict[str, Tensor], names: Sequence[str]) -> dict[str, Tensor]:
    """``state`` keyed by ``names``, allowing one common key prefix (``"model."`` of a LightningModule)."""
    if all(n in state for n in names):
        return {n: state[n] for n in names}
    first = names[0]
    for key in state:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            if all(prefix + n in state for n in names):
                return {n: state[prefix + n] for n in names}
    missing = [n for n in names if n not in state][:5]
    raise KeyError(
        f"checkpoint has no entries for parameters {missing}: pass checkpoints of this model "
        "(state_dict() of the same architecture, or a Lightning checkpoint of it)"
    )


class TracInInfluence(EngineBase):
    """TracIn (Pruthi et al., 2020): gradient similarity summed over training checkpoints.

    ``I(x, z) = sum_c eta_c <g_c(z), g_c(x)>`` and self-influence ``sum_c eta_c ||g_c(x)||^2``,
    with ``g_c`` the per-example gradient at checkpoint c and ``eta_c`` its learning rate.

    Args:
        model: the architecture; its parameters are replaced functionally by each checkpoint's.
        loss_fn: as for ``ArnoldiInfluence``.
        checkpoints: state dicts, Lightning checkpoints, or paths to either.
        learning_rates: one per checkpoint, or a single float for all.
        params, transfer_batch: as for ``ArnoldiInfluence``.
        example_chunk, progress: as in ``ScoringConfig``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        checkpoints: Sequence[dict[str, Tensor] | str | os.PathLike],
        learning_rates: float | Sequence[float] = 1.0,
        *,
        params: ParamSelector = None,
        transfer_batch: TransferFn | None = None,
        example_chunk: int | None = None,
        progress: bool = True,
    ) -> None:
        config = ScoringConfig(projection="grad", example_chunk=example_chunk, progress=progress)
        super().__init__(model, loss_fn, config, params=params, transfer_batch=transfer_batch)
        if len(checkpoints) == 0:
            raise ValueError(
                "checkpoints is empty: pass at least one state dict or checkpoint path"
            )
        if isinstance(learning_rates, (int, float)):
            learning_rates = [float(learning_rates)] * len(checkpoints)
        if len(learning_rates) != len(checkpoints):
            raise ValueError(
                f"got {len(learning_rates)} learning rates for {len(checkpoints)} checkpoints: pass "
                "one per checkpoint or a single float"
            )
        self.learning_rates = [float(lr) for lr in learning_rates]
        self.checkpoints = [
            _match_names(_load_checkpoint(c), self.space.names) for c in checkpoints
        ]

    def _gradients(self, f, params, loader: Iterable[Any], desc: str):
        for i, batch in enumerate(self._batches(loader, desc)):
            if i == 0:
                with torch.no_grad():
                    self._check_losses(f(params, batch), batch, 0, desc)
            size = _batch.batch_size(batch)
            step = self._grad_chunk()
            for start in range(0, size, step):
                part = _batch.slice_batch(batch, start, min(start + step, size))
                yield per_example_gradients(f, params, part, self.space)

    def self_influence(self, loader: Iterable[Any]) -> Tensor:
        """``[N]``: ``sum_c eta_c ||g_c(x)||^2`` in loader order."""
        total: Tensor | None = None
        with analysis_context(self.model):
            f = self._functional()
            for ckpt, lr in tqdm(
                list(zip(self.checkpoints, self.learning_rates, strict=True)),
                desc="TracIn",
                disable=not self.config.progress,
                leave=False,
            ):
                params = self._params(ckpt)
                norms = torch.cat(
                    [g.square().sum(1).cpu() for g in self._gradients(f, params, loader, "scoring")]
                )
                total = lr * norms if total is None else total + lr * norms
        assert total is not None
        return total

    def influence(self, train_loader: Iterable[Any], test_loader: Iterable[Any]) -> Tensor:
        """``[N_test, N_train]``: ``sum_c eta_c <g_c(z), g_c(x)>``."""
        total: Tensor | None = None
        with analysis_context(self.model):
            f = self._functional()
            for ckpt, lr in zip(self.checkpoints, self.learning_rates, strict=True):
                params = self._params(ckpt)
                test = torch.cat(list(self._gradients(f, params, test_loader, "test")))
                block = torch.cat(
                    [(test @ g.T).cpu() for g in self._gradients(f, params, train_loader, "train")],
                    dim=1,
                )
                total = lr * block if total is None else total + lr * block
        assert total is not None
        return total
