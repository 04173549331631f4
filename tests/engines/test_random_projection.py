import torch

from lightning_influence import RandomProjectionInfluence
from tests.conftest import Dense, cross_entropy, make_data, make_mlp


def test_random_projection_equals_hand_computation():
    model = make_mlp()
    x, y, batches = make_data()
    dense = Dense(model, x, y)
    engine = RandomProjectionInfluence(
        model, cross_entropy, dim=6, seed=3, eigenvalue_policy="signed", progress=False
    ).fit(batches)
    g = torch.randn(
        6, dense.theta.numel(), generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    g = g / 6**0.5
    torch.testing.assert_close(engine.sketch, g)
    m = g @ dense.hessian() @ g.T
    grads = dense.gradients(x, y)
    u = grads @ g.T
    expected = (u @ torch.linalg.inv(m) * u).sum(1)
    torch.testing.assert_close(engine.self_influence(batches), expected, rtol=1e-8, atol=1e-10)
    xt, yt, test = make_data(n=5, seed=9, batch=5)
    ut = dense.gradients(xt, yt) @ g.T
    torch.testing.assert_close(
        engine.influence(batches, test), ut @ torch.linalg.inv(m) @ u.T, rtol=1e-8, atol=1e-10
    )


def test_random_projection_sketch_is_isotropic_in_expectation():
    model = make_mlp()
    _, _, batches = make_data()
    engine = RandomProjectionInfluence(model, cross_entropy, dim=100, progress=False).fit(
        batches[:1]
    )
    gram = engine.sketch.T @ engine.sketch  # E[G^T G] = I
    assert abs(gram.diagonal().mean().item() - 1) < 0.1


def test_random_projection_state_round_trip():
    model = make_mlp()
    _, _, batches = make_data()
    a = RandomProjectionInfluence(model, cross_entropy, dim=5, progress=False).fit(batches)
    b = RandomProjectionInfluence(model, cross_entropy, progress=False)
    b.load_state_dict(a.state_dict())
    assert b.config.dim == 5
    assert torch.equal(a.self_influence(batches), b.self_influence(batches))
