import pytest
import torch
from conftest import Dense, cross_entropy, make_data, make_mlp

from lightning_influence import RandomProjectionInfluence, TracInInfluence


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


def _checkpoints():
    states, lrs = [], [0.1, 0.05]
    for seed in (0, 1):
        states.append({k: v.clone() for k, v in make_mlp(seed=seed).state_dict().items()})
    return states, lrs


def test_tracin_equals_hand_computation(tmp_path):
    states, lrs = _checkpoints()
    x, y, batches = make_data()
    xt, yt, test = make_data(n=4, seed=5, batch=4)
    expected_self = torch.zeros(len(x), dtype=torch.float64)
    expected_pair = torch.zeros(len(xt), len(x), dtype=torch.float64)
    for state, lr in zip(states, lrs, strict=True):
        m = make_mlp()
        m.load_state_dict(state)
        dense = Dense(m, x, y)
        g, gt = dense.gradients(x, y), dense.gradients(xt, yt)
        expected_self += lr * g.square().sum(1)
        expected_pair += lr * gt @ g.T
    # A path to a Lightning-style checkpoint ("state_dict" with a "model." prefix) works too.
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in states[1].items()}, "epoch": 3}, path)
    engine = TracInInfluence(
        make_mlp(seed=7), cross_entropy, [states[0], path], lrs, progress=False, example_chunk=7
    )
    torch.testing.assert_close(
        engine.self_influence(batches), expected_self, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        engine.influence(batches, test), expected_pair, rtol=1e-10, atol=1e-12
    )


def test_tracin_errors(tmp_path):
    states, _ = _checkpoints()
    with pytest.raises(ValueError, match="2 learning rates for 1 checkpoints"):
        TracInInfluence(make_mlp(), cross_entropy, states[:1], [0.1, 0.2])
    with pytest.raises(ValueError, match="checkpoints is empty"):
        TracInInfluence(make_mlp(), cross_entropy, [])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TracInInfluence(make_mlp(), cross_entropy, [tmp_path / "missing.ckpt"])
    with pytest.raises(KeyError, match="no entries for parameters"):
        TracInInfluence(make_mlp(), cross_entropy, [{"other.weight": torch.zeros(1)}])
