"""``RandomProjectionInfluence``: the paper's RandProj baseline in the engines' API."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_influence.config import RandomProjectionConfig, with_overrides
from lightning_influence.core.context import analysis_context
from lightning_influence.core.curvature import CurvatureInputs, ReduceFn, make_curvature
from lightning_influence.core.functional_loss import LossFn
from lightning_influence.core.hvp import resolve_hvp_mode
from lightning_influence.core.parameters import ParamSelector
from lightning_influence.engines.base import ProjectedInfluence, TransferFn

__all__ = ["RandomProjectionInfluence"]


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
        config = with_overrides(RandomProjectionConfig, config, kwargs)
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
            f, params = self.functional_loss(), self.parameters()
            device, dtype = self.device, self.compute_dtype
            sample = self.load_sample(f, params, loader, "HVP sample", reduce_fn=reduce_fn)
            batches = sample.batches
            hessian = make_curvature(
                "hessian",
                CurvatureInputs(
                    f,
                    params,
                    self.space,
                    batches,
                    sample.count,
                    resolve_hvp_mode(cfg.hvp_mode, device),
                    reduce_fn,
                ),
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
