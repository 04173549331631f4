"""Shared tiny models and data. Exactness tests run in float64 against dense Hessians."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lightning_influence.core.parameters import ParameterSpace


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def make_mlp(seed: int = 0, d_in: int = 4, hidden: int = 5, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def make_data(n: int = 40, d_in: int = 4, classes: int = 3, seed: int = 1, batch: int = 10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y, [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class Dense:
    """Dense Hessian and per-example gradients of the mean cross-entropy, for reference."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y
        self.space = ParameterSpace.of(dict(model.named_parameters()))
        self.theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.model, self.space.unflatten(theta), (x,)), y)

    def hessian(self) -> torch.Tensor:
        return torch.autograd.functional.hessian(lambda t: self.loss(t, self.x, self.y), self.theta)

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = [
            torch.autograd.functional.jacobian(
                lambda t, i=i: self.loss(t, x[i : i + 1], y[i : i + 1]), self.theta
            )
            for i in range(len(x))
        ]
        return torch.stack(rows)

    def top_eigenpairs(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        evals, evecs = torch.linalg.eigh(self.hessian())
        order = torch.sort(evals.abs(), descending=True, stable=True).indices[:k]
        return evals[order], evecs[:, order]


@pytest.fixture
def mlp() -> nn.Module:
    return make_mlp()


@pytest.fixture
def data():
    return make_data()
