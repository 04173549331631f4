"""Influence scores from projected gradients: the formulas, in one place.

With directions ``e_i`` (eigenvectors of the Hessian H) and eigenvalues ``lambda_i``, and
``P[x, i] = <e_i, g_x>`` the projected gradient of example x:

* influence of training example x on test example z:
  ``I(x, z) = sum_i w_i P[z, i] P[x, i]``, approximately ``<g_z, H^-1 g_x>``. Positive: removing
  x would raise the loss on z (x is a proponent of z); negative: x is an opponent.
* self-influence: ``I(x, x) = sum_i w_i P[x, i]^2``.

``w_i`` approximates ``1 / lambda_i`` under an explicit eigenvalue policy (``inverse_eigenvalues``),
so that negative or tiny eigenvalues never produce NaN or Inf.
"""

from __future__ import annotations

import typing
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "EIGENVALUE_POLICIES",
    "EigenvaluePolicy",
    "influence",
    "inverse_eigenvalues",
    "self_influence",
]

EigenvaluePolicy = Literal["abs", "signed", "positive", "damped"]
EIGENVALUE_POLICIES: tuple[str, ...] = typing.get_args(EigenvaluePolicy)


def inverse_eigenvalues(
    eigenvalues: Tensor,
    policy: EigenvaluePolicy = "abs",
    *,
    damping: float = 0.0,
    rtol: float = 1e-10,
) -> Tensor:
    """Weights ``w_i`` standing for ``1 / lambda_i``.

    * ``abs`` (default, the paper's): ``w = 1 / |lambda|``. Keeps every score a positive
      semi-definite form, so self-influence is never negative.
    * ``signed``: ``w = 1 / lambda``, the literal inverse; negative curvature lowers scores.
    * ``positive``: ``w = 1 / lambda`` for ``lambda > 0``, 0 for the rest (drops negative curvature).
    * ``damped``: ``w = 1 / (lambda + damping)`` where ``lambda + damping`` is positive, 0 elsewhere:
      ``(H + damping I)^-1`` on the positive part of the shifted spectrum (Captum's
      ``hessian_reg``). ``damping`` must be positive. Negative curvature is dropped, not clipped
      to zero: clipping would give those directions the largest weight, ``1 / damping``.

    In every policy a denominator with ``|d| <= rtol * max |lambda|`` (numerically zero) gets
    weight 0.

    Example:
        >>> inverse_eigenvalues(torch.tensor([4.0, -2.0, 0.0]))
        tensor([0.2500, 0.5000, 0.0000])
    """
    lam = eigenvalues
    if lam.numel() == 0:
        return lam.clone()
    floor = rtol * lam.abs().max()
    zero = torch.zeros_like(lam)
    if policy == "damped":
        if not damping > 0:
            raise ValueError(f"eigenvalue_policy='damped' needs damping > 0, got damping={damping}")
        shifted = lam + damping
        pos = shifted > floor
        return torch.where(pos, 1.0 / torch.where(pos, shifted, torch.ones_like(lam)), zero)
    if policy == "abs":
        big = lam.abs() > floor
        return torch.where(big, 1.0 / torch.where(big, lam.abs(), torch.ones_like(lam)), zero)
    if policy == "signed":
        big = lam.abs() > floor
        return torch.where(big, 1.0 / torch.where(big, lam, torch.ones_like(lam)), zero)
    if policy == "positive":
        pos = lam > floor
        return torch.where(pos, 1.0 / torch.where(pos, lam, torch.ones_like(lam)), zero)
    raise ValueError(
        f"eigenvalue_policy={policy!r} is not one of 'abs', 'signed', 'positive', 'damped'"
    )


def self_influence(projections: Tensor, weights: Tensor) -> Tensor:
    """``[N]``: ``sum_i w_i P[x, i]^2`` for projections ``[N, k]`` and weights ``[k]``."""
    return (projections.square() * weights.to(projections)).sum(dim=-1)


def influence(test_projections: Tensor, train_projections: Tensor, weights: Tensor) -> Tensor:
    """``[M, N]``: ``I(x_n, z_m) = sum_i w_i P[z_m, i] P[x_n, i]``."""
    return (test_projections * weights.to(test_projections)) @ train_projections.T
