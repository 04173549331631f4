"""The hooks route: projected per-example gradients from one backward pass, exact against the
``vmap`` route in float64, and refusals where it cannot be exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_influence.core.functional_loss import make_functional_loss
from lightning_influence.core.hooks import HooksUnsupported, hook_support, project_hooks
from lightning_influence.core.parameters import ParameterSpace, select_parameters
from lightning_influence.core.projection import project_grad


class Conv1D(nn.Module):
    """The layout of Hugging Face's GPT-2 ``Conv1D``: ``y = x @ W + b`` with ``W`` ``[in, out]``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return x @ self.weight + self.bias


class Image(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv1d(4, 3, 2, dilation=2)
        self.head = nn.Linear(3 * 2, 3)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)))  # [B, 4, 3, 3]
        h = torch.tanh(self.conv1(h.flatten(2)))  # [B, 3, 7]
        return self.head(h[:, :, :2].flatten(1))


class Sequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6, padding_idx=0)
        self.norm = nn.LayerNorm(6)
        self.proj = Conv1D(5, 6)
        self.head = nn.Linear(5, 3)

    def forward(self, ids):
        h = torch.tanh(self.proj(self.norm(self.embed(ids))))  # [B, T, 5]
        return self.head(h.mean(1))


def _check(model, batch, params=None, k=5):
    model = model.double().eval()
    for m in model.modules():  # non-trivial running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)

    def loss(m, b):
        return F.cross_entropy(m(b[0]), b[1], reduction="none")

    chosen = select_parameters(model, params)
    space = ParameterSpace.of(chosen)
    values = {n: p.detach() for n, p in chosen.items()}
    f = make_functional_loss(model, loss)
    directions = torch.randn(k, space.dim, dtype=torch.float64)
    owners = hook_support(model, space.names)
    assert isinstance(owners, dict), owners
    got, losses = project_hooks(f, values, batch, directions, space, model, owners, check=True)
    expected = project_grad(f, values, batch, directions, space, 3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(losses, f(values, batch).detach())


def test_linear_conv_batchnorm_layers_match_the_vmap_route():
    torch.manual_seed(0)
    batch = (torch.randn(7, 2, 6, 6, dtype=torch.float64), torch.randint(0, 3, (7,)))
    _check(Image(), batch)


def test_embedding_layernorm_and_transposed_linear_over_positions_match_the_vmap_route():
    torch.manual_seed(1)
    ids = torch.randint(0, 11, (5, 4))
    ids[0, 2:] = 0  # padding rows have no gradient
    _check(Sequence(), (ids, torch.randint(0, 3, (5,))))


def test_a_parameter_subset_uses_the_hooks_of_its_layers_only():
    torch.manual_seed(2)
    ids = torch.randint(1, 11, (4, 3))
    _check(Sequence(), (ids, torch.randint(0, 3, (4,))), params=["proj", "head.weight"])


class Flat(nn.Module):
    """Single-position layers: a GPT-2 Conv1D and a Linear without bias on one vector each."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = Conv1D(5, 6)
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x)))


def test_single_position_linear_layers_contract_without_per_example_gradients(monkeypatch):
    from lightning_influence.core import hooks

    def refuse(*args, **kwargs):
        raise AssertionError("per-example gradients were materialized")

    monkeypatch.setattr(hooks, "_per_example", refuse)
    torch.manual_seed(4)
    batch = (torch.randn(6, 6, dtype=torch.float64), torch.randint(0, 3, (6,)))
    _check(Flat(), batch)
    _check(Flat(), batch, params=["proj.weight", "head"], k=1)


class Shared(nn.Module):
    """A weight used twice (tied) and an unsupported parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.layer(torch.tanh(self.layer(x))) * self.scale


def test_a_layer_called_twice_adds_both_calls():
    torch.manual_seed(3)
    batch = (torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 4, (6,)))
    _check(Shared(), batch, params=["layer"])


def test_unsupported_parameters_and_uses_outside_forward_are_refused():
    model = Shared().double()
    assert "scale belongs to Shared" in hook_support(model, ("layer.weight", "scale"))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, x):  # the weight used outside the module's own forward
            return self.layer(x) + F.linear(x, self.layer.weight)

    model = Functional().double().eval()
    chosen = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(chosen)
    f = make_functional_loss(model, lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none"))
    batch = (torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,)))
    owners = hook_support(model, space.names)
    directions = torch.randn(3, space.dim, dtype=torch.float64)
    with pytest.raises(HooksUnsupported, match=r"layer\.weight.*do not add up"):
        project_hooks(f, chosen, batch, directions, space, model, owners, check=True)


def test_inputs_not_indexed_by_example_are_refused():
    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(5, 3)
            self.positions = nn.Embedding(4, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, ids):
            pos = torch.arange(ids.shape[1]).unsqueeze(0)  # batch size 1, broadcast
            return self.head((self.tokens(ids) + self.positions(pos)).mean(1))

    model = Positions().double().eval()
    chosen = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(chosen)
    f = make_functional_loss(model, lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none"))
    batch = (torch.randint(0, 5, (3, 4)), torch.randint(0, 2, (3,)))
    owners = hook_support(model, space.names)
    with pytest.raises(HooksUnsupported, match="positions saw indices of leading size 1"):
        project_hooks(f, chosen, batch, torch.randn(2, space.dim).double(), space, model, owners)
