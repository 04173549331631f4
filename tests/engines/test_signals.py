"""Validation influence and the other per-example signals of one pass, exact in float64 against
a dense Hessian, and equal across the in-memory and streamed paths."""

from __future__ import annotations

import torch

from lightning_influence import ArnoldiInfluence, read_scores
from lightning_influence.io.shards import read_signals
from tests.conftest import Dense, cross_entropy, make_data, make_mlp


def _full_rank_engine(model, batches, policy="signed"):
    # n_iters > P exhausts the Krylov space; top_k = the Hessian's numerical rank
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    H = Dense(model, x, y).hessian()
    evals = torch.linalg.eigvalsh(H)
    rank = int((evals.abs() > 1e-9 * evals.abs().max()).sum())
    engine = ArnoldiInfluence(
        model, cross_entropy, n_iters=80, top_k=rank, eigenvalue_policy=policy, progress=False
    ).fit(batches)
    return engine, H


def test_validation_influence_is_g_val_h_inverse_g_x_with_the_exact_hessian():
    model = make_mlp()
    x, y, batches = make_data(n=40)
    xv, yv, val = make_data(n=12, seed=5, batch=5)
    engine, H = _full_rank_engine(model, batches)
    dense = Dense(model, x, y)
    g_x = dense.gradients(x, y)  # [N, P]
    g_val = dense.gradients(xv, yv).sum(0)  # the gradient of the summed validation loss
    # the pseudo-inverse: the Hessian's null space (logits shifted alike) carries no influence
    expected = g_x @ torch.linalg.pinv(H, rtol=1e-9, hermitian=True) @ g_val
    got = engine.validation_influence(batches, val)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)
    # the same as the influence matrix on the validation set, summed over it
    torch.testing.assert_close(got, engine.influence(batches, val).sum(0), rtol=1e-9, atol=1e-11)


def test_signals_of_one_pass_per_class_and_loss():
    model = make_mlp()
    _, _, batches = make_data(n=40)
    _, yv, val = make_data(n=15, seed=6, batch=4)
    engine = ArnoldiInfluence(model, cross_entropy, n_iters=30, top_k=10, progress=False)
    engine.fit(batches)
    validation = engine.validation_projection(val)
    assert validation.count == 15 and sorted(validation.by_class) == sorted(yv.unique().tolist())
    torch.testing.assert_close(sum(validation.by_class.values()), validation.total)
    signals = engine.signals(batches, validation=validation)
    torch.testing.assert_close(signals["self_influence"], engine.self_influence(batches))
    torch.testing.assert_close(
        signals["validation_influence"], engine.validation_influence(batches, val)
    )
    matrix = engine.influence(batches, val)
    for c in validation.by_class:
        torch.testing.assert_close(
            signals[f"validation_influence_class_{c}"],
            matrix[yv == c].sum(0),
            rtol=1e-9,
            atol=1e-11,
        )
    expected_loss = torch.cat([cross_entropy(model, b) for b in batches]).detach()
    torch.testing.assert_close(signals["loss"], expected_loss.double())


def test_streamed_signals_equal_the_in_memory_ones(tmp_path):
    model = make_mlp()
    _, _, batches = make_data(n=40)
    _, _, val = make_data(n=9, seed=7, batch=3)
    engine = ArnoldiInfluence(model, cross_entropy, n_iters=30, top_k=10, progress=False)
    engine.fit(batches)
    validation = engine.validation_projection(val)
    expected = engine.signals(batches, validation=validation)

    class Ordered(list):  # a fixed-order loader (no sampler)
        pass

    folder = engine.self_influence_shards(
        Ordered(batches), tmp_path / "s", shard_batches=3, validation=validation
    )
    streamed = read_signals(folder)
    assert set(streamed) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(streamed[name], value, rtol=0, atol=0)
    torch.testing.assert_close(read_scores(folder), expected["self_influence"], rtol=0, atol=0)
