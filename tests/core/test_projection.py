import torch
import torch.nn.functional as F
from torch import nn

from lightning_influence.core.functional_loss import make_functional_loss
from lightning_influence.core.parameters import ParameterSpace
from lightning_influence.core.projection import per_example_gradients, project_grad, project_jvp
from tests.conftest import Dense, cross_entropy, make_data, make_mlp


def _setup():
    model = make_mlp()
    x, y, _ = make_data(n=9)
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    directions = torch.randn(7, space.dim, dtype=torch.float64)
    return model, x, y, params, space, directions


def test_per_example_gradients_match_autograd():
    model, x, y, params, space, _ = _setup()
    g = per_example_gradients(make_functional_loss(model, cross_entropy), params, (x, y), space)
    torch.testing.assert_close(g, Dense(model, x, y).gradients(x, y), rtol=1e-10, atol=1e-12)


def test_both_routes_agree_with_explicit_projection_in_any_chunking():
    model, x, y, params, space, e = _setup()
    f = make_functional_loss(model, cross_entropy)
    ref = Dense(model, x, y).gradients(x, y) @ e.T
    for chunk in (1, 4, 100):
        torch.testing.assert_close(
            project_grad(f, params, (x, y), e, space, chunk), ref, rtol=1e-10, atol=1e-12
        )
        torch.testing.assert_close(
            project_jvp(f, params, (x, y), e, space, chunk), ref, rtol=1e-10, atol=1e-12
        )


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2).double()

    def forward(self, batch):
        return self.net(batch["features"]) * batch["scale"]


def test_dict_batches_with_non_tensor_leaves():
    torch.manual_seed(0)
    model = DictModel()
    batch = {
        "features": torch.randn(5, 3, dtype=torch.float64),
        "label": torch.randint(0, 2, (5,)),
        "scale": torch.tensor(2.0, dtype=torch.float64),  # not indexed by example
        "name": "split-a",
    }

    def loss(m, b):
        assert b["name"] == "split-a"
        return F.cross_entropy(m(b), b["label"], reduction="none")

    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    e = torch.randn(4, space.dim, dtype=torch.float64)
    f = make_functional_loss(model, loss)
    a = project_grad(f, params, batch, e, space, 2)
    b = project_jvp(f, params, batch, e, space, 3)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert a.shape == (5, 4)
