import pytest
import torch

from lightning_influence import TracInInfluence
from tests.conftest import Dense, cross_entropy, make_data, make_mlp


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
    # validation influence: the influence matrix on the validation set, summed over it
    torch.testing.assert_close(
        engine.validation_influence(batches, test), expected_pair.sum(0), rtol=1e-10, atol=1e-12
    )
    top = engine.top_influences(batches, test, k=3)
    assert top.proponents.shape == (len(xt), 3)
    torch.testing.assert_close(top.proponent_scores, expected_pair.topk(3, dim=1).values)
    # state_dict round trip into another engine: the same scores
    other = TracInInfluence(make_mlp(seed=9), cross_entropy, [states[0]], 1.0, progress=False)
    other.load_state_dict(engine.state_dict())
    torch.testing.assert_close(other.self_influence(batches), expected_self, rtol=1e-10, atol=1e-12)


def test_tracin_errors(tmp_path):
    states, _ = _checkpoints()
    with pytest.raises(ValueError, match="2 learning rates for 1 checkpoints"):
        TracInInfluence(make_mlp(), cross_entropy, states[:1], [0.1, 0.2])
    with pytest.raises(ValueError, match="checkpoints is empty"):
        TracInInfluence(make_mlp(), cross_entropy, [])
    with pytest.raises(FileNotFoundError, match="no such file"):
        TracInInfluence(make_mlp(), cross_entropy, [tmp_path / "missing.ckpt"])
    with pytest.raises(KeyError, match="no entries for parameters"):
        TracInInfluence(make_mlp(), cross_entropy, [{"other.weight": torch.zeros(1)}])
