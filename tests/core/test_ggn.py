"""Gauss-Newton products against a dense float64 GGN built from per-example Jacobians."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev

from lightning_influence import ArnoldiInfluence
from lightning_influence.core.ggn import DatasetGGN, OutputSplit, ggn_vector_product
from lightning_influence.core.parameters import ParameterSpace
from lightning_influence.losses import mse_loss
from tests.conftest import Dense, cross_entropy, make_data, make_mlp


def dense_ggn(model, x, loss_hessian) -> torch.Tensor:
    """(1/N) sum_x J_x^T H_l(z_x) J_x with J_x = d logits_x / d theta, [P, P]."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    total = torch.zeros(space.dim, space.dim, dtype=torch.float64)
    for i in range(len(x)):
        jac = jacrev(lambda p, i=i: functional_call(model, p, (x[i : i + 1],))[0])(params)
        j = space.flatten_batched(jac)  # [C, P]
        z = model(x[i : i + 1])[0].detach()
        total += j.T @ loss_hessian(z) @ j
    return total / len(x)


def softmax_hessian(z):
    p = z.softmax(-1)
    return torch.diag(p) - torch.outer(p, p)


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_ggn_product_matches_the_dense_ggn(mode):
    model = make_mlp()
    x, y, _ = make_data(n=12)
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    split = OutputSplit(model, cross_entropy)
    v = torch.randn(space.dim, dtype=torch.float64)
    batch = (x, y)
    out = ggn_vector_product(split, params, batch, split.inputs(batch), space.unflatten(v), mode)
    expected = dense_ggn(model, x, softmax_hessian) @ v
    torch.testing.assert_close(space.flatten(out) / len(x), expected, rtol=1e-10, atol=1e-12)


def test_dataset_ggn_over_batches_is_psd_and_differs_from_the_hessian():
    model = make_mlp()
    x, y, batches = make_data(n=23, batch=10)
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    op = DatasetGGN(OutputSplit(model, cross_entropy), params, space, batches, "fwd-rev", 23)
    dense = torch.stack([op(e) for e in torch.eye(space.dim, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(dense, dense_ggn(model, x, softmax_hessian), rtol=1e-10, atol=1e-12)
    assert float(torch.linalg.eigvalsh((dense + dense.T) / 2).min()) > -1e-12
    hessian = Dense(model, x, y).hessian()
    assert float((hessian - dense).abs().max()) > 1e-3  # the outputs' curvature is left out


def test_ggn_of_squared_error():
    model = make_mlp(classes=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    y = torch.randn(9, 2, generator=g, dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    split = OutputSplit(model, mse_loss)
    v = torch.randn(space.dim, dtype=torch.float64)
    out = ggn_vector_product(split, params, (x, y), split.inputs((x, y)), space.unflatten(v))
    # mse_loss = mean over the 2 outputs of (z - y)^2: H_l = (2 / 2) I
    expected = dense_ggn(model, x, lambda z: torch.eye(2, dtype=torch.float64)) @ v
    torch.testing.assert_close(space.flatten(out) / len(x), expected, rtol=1e-10, atol=1e-12)


def test_engine_with_ggn_curvature_has_no_negative_eigenvalues():
    model = make_mlp()
    x, _, batches = make_data(n=40)
    engine = ArnoldiInfluence(
        model, cross_entropy, n_iters=38, top_k=10, curvature="ggn", progress=False
    ).fit(batches)
    assert engine.fit_stats["curvature"] == "ggn"
    expected = torch.linalg.eigvalsh(dense_ggn(model, x, softmax_hessian)).flip(0)[:10]
    torch.testing.assert_close(engine.eigenvalues, expected, rtol=1e-6, atol=1e-10)
    assert bool((engine.eigenvalues > -1e-10).all())


def test_a_loss_that_calls_the_model_twice_is_refused():
    model = make_mlp()
    x, y, _ = make_data(n=4)

    def twice(m, batch):
        return F.cross_entropy(m(batch[0]) + m(batch[0]), batch[1], reduction="none")

    with pytest.raises(ValueError, match="exactly once per batch; this one called it 2 times"):
        OutputSplit(model, twice).inputs((x, y))
    with pytest.raises(ValueError, match="curvature"):
        ArnoldiInfluence(model, cross_entropy, curvature="fisher")
