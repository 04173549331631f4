import pytest
import torch

from lightning_influence.core.functional_loss import make_functional_loss
from lightning_influence.core.hvp import DatasetHessian, hvp, resolve_hvp_mode
from lightning_influence.core.parameters import ParameterSpace
from tests.conftest import Dense, cross_entropy, make_data, make_mlp


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_hvp_matches_dense_hessian(mode):
    model = make_mlp()
    x, y, _ = make_data(n=12)
    dense = Dense(model, x, y)
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    f = make_functional_loss(model, cross_entropy)
    v = torch.randn(space.dim, dtype=torch.float64)
    out = space.flatten(hvp(f, params, (x, y), space.unflatten(v), mode))
    # hvp differentiates the sum of per-example losses; the dense reference is of the mean.
    torch.testing.assert_close(out / len(x), dense.hessian() @ v, rtol=1e-10, atol=1e-12)


def test_dataset_hessian_is_mean_over_uneven_batches():
    model = make_mlp()
    x, y, _ = make_data(n=23)
    batches = [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])]
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    op = DatasetHessian(
        make_functional_loss(model, cross_entropy), params, space, batches, "fwd-rev", 23
    )
    v = torch.randn(space.dim, dtype=torch.float64)
    torch.testing.assert_close(op(v), Dense(model, x, y).hessian() @ v, rtol=1e-10, atol=1e-12)
    assert op.calls == 1 and op.seconds > 0


def test_dataset_hessian_reduce_fn_sees_one_flat_vector():
    model = make_mlp()
    x, y, batches = make_data(n=20)
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    seen = []

    def reduce_fn(t):  # a 2-process sum where the other process holds the same data
        seen.append(t.shape)
        return 2 * t

    op = DatasetHessian(
        make_functional_loss(model, cross_entropy), params, space, batches, "rev-rev", 40, reduce_fn
    )
    v = torch.randn(space.dim, dtype=torch.float64)
    torch.testing.assert_close(op(v), Dense(model, x, y).hessian() @ v, rtol=1e-10, atol=1e-12)
    assert seen == [torch.Size([space.dim])]


def test_resolve_hvp_mode():
    assert resolve_hvp_mode("auto", torch.device("cpu")) == "fwd-rev"
    assert resolve_hvp_mode("auto", torch.device("xla", 0)) == "rev-rev"
    assert resolve_hvp_mode("rev-rev", torch.device("cpu")) == "rev-rev"
    with pytest.raises(ValueError, match="hvp_mode='fwd'"):
        resolve_hvp_mode("fwd", torch.device("cpu"))
