"""Block products (``experimental.matmat``), cached pullbacks (``cache=True``) and block Arnoldi."""

import pytest
import torch

from lightning_influence.core.arnoldi import NonFiniteError, arnoldi, distill
from lightning_influence.core.functional_loss import make_functional_loss
from lightning_influence.core.ggn import DatasetGGN, OutputSplit
from lightning_influence.core.hvp import DatasetHessian
from lightning_influence.core.parameters import ParameterSpace
from lightning_influence.experimental import block_arnoldi, distill_block, matmat
from tests.conftest import Dense, cross_entropy, make_data, make_mlp


def operator(n=23, **kwargs):
    model = make_mlp()
    x, y, _ = make_data(n=n)
    batches = [(x[:10], y[:10]), (x[10:20], y[10:20]), (x[20:], y[20:])]  # uneven
    params = {k: p.detach() for k, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    f = make_functional_loss(model, cross_entropy)
    mode = kwargs.pop("mode", "fwd-rev")
    op = DatasetHessian(f, params, space, batches, mode, n, **kwargs)
    return op, Dense(model, x, y), model


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("b", [1, 3, 8])
def test_matmat_matches_single_products_and_the_dense_hessian(mode, cache, b):
    op, dense, _ = operator(mode=mode, cache=cache)
    single, _, _ = operator(mode=mode)
    V = torch.randn(
        b, op.space.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(b)
    )
    block = matmat(op, V)
    torch.testing.assert_close(block, torch.stack([single(v) for v in V]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(block, V @ dense.hessian(), rtol=1e-10, atol=1e-12)
    assert op.calls == b and op.seconds > 0


def test_cached_products_match_the_dense_hessian_and_run_the_loss_once_per_batch():
    op, dense, _ = operator(cache=True)
    runs = []
    loss = op.f

    def counted(params, batch):
        runs.append(len(batch[1]))
        return loss(params, batch)

    op.f = counted
    H = dense.hessian()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):  # the cached pullbacks stay valid product after product
        v = torch.randn(op.space.dim, dtype=torch.float64, generator=gen)
        torch.testing.assert_close(op(v), H @ v, rtol=1e-10, atol=1e-12)
    V = torch.randn(4, op.space.dim, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(matmat(op, V), V @ H, rtol=1e-10, atol=1e-12)
    assert runs == [10, 10, 3]  # the loss ran once per batch, for 7 products
    op.clear_cache()
    torch.testing.assert_close(op(V[0]), H @ V[0], rtol=1e-10, atol=1e-12)
    assert runs == [10, 10, 3] * 2  # rebuilt after clear_cache


def test_matmat_of_the_gauss_newton_operator_matches_single_products():
    model = make_mlp()
    _, _, batches = make_data(n=20)
    params = {k: p.detach() for k, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    split = OutputSplit(model, cross_entropy)
    op = DatasetGGN(split, params, space, batches, "fwd-rev", 20)
    V = torch.randn(3, space.dim, dtype=torch.float64)
    torch.testing.assert_close(
        matmat(op, V), torch.stack([op(v) for v in V]), rtol=1e-10, atol=1e-12
    )


def test_matmat_reduce_fn_sees_one_flat_vector_per_block():
    seen = []

    def reduce_fn(t):  # a 2-process sum where the other process holds the same data
        seen.append(t.shape)
        return 2 * t

    op, dense, _ = operator(reduce_fn=reduce_fn)
    op.num_examples = 46
    V = torch.randn(5, op.space.dim, dtype=torch.float64)
    torch.testing.assert_close(matmat(op, V), V @ dense.hessian(), rtol=1e-10, atol=1e-12)
    assert seen == [torch.Size([5 * op.space.dim])]


def test_bad_arguments_are_refused_with_the_fix():
    op, _, _ = operator()
    with pytest.raises(ValueError, match=r"matmat takes a \[b, P=\d+\] matrix"):
        matmat(op, torch.randn(op.space.dim, dtype=torch.float64))
    with pytest.raises(ValueError, match="matmat takes"):
        matmat(op, torch.randn(2, op.space.dim + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"pass list\(batches\)"):
        DatasetHessian(op.f, op.params, op.space, iter(op.batches), "fwd-rev", 23, cache=True)


def test_engine_hvp_cache_gives_the_same_eigenpairs():
    from lightning_influence import ArnoldiInfluence

    model = make_mlp()
    _, _, batches = make_data(n=40)
    cfg = {"n_iters": 12, "top_k": 5, "progress": False}
    plain = ArnoldiInfluence(model, cross_entropy, hvp_cache=False, **cfg).fit(batches)
    cached = ArnoldiInfluence(model, cross_entropy, hvp_cache=True, **cfg).fit(batches)
    torch.testing.assert_close(cached.eigenvalues, plain.eigenvalues, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(
        cached.self_influence(batches), plain.self_influence(batches), rtol=1e-6, atol=1e-10
    )
    assert cached.fit_stats["hvp_cache"].startswith("on (hvp_cache='on'): estimated")
    assert plain.fit_stats["hvp_cache"] == "off"
    auto = ArnoldiInfluence(model, cross_entropy, **cfg).fit(batches)  # the default: 'auto'
    assert auto.fit_stats["hvp_cache"].startswith("on: estimated")
    torch.testing.assert_close(auto.eigenvalues, cached.eigenvalues, rtol=1e-10, atol=0)


def test_engine_hvp_cache_refuses_what_it_cannot_cache():
    from lightning_influence import ArnoldiInfluence

    model = make_mlp()
    with pytest.raises(ValueError, match="pass hvp_cache='off', or curvature='hessian'"):
        ArnoldiInfluence(model, cross_entropy, hvp_cache=True, curvature="ggn")
    with pytest.raises(ValueError, match="needs cache_batches=True"):
        ArnoldiInfluence(model, cross_entropy, hvp_cache=True, cache_batches=False)


def _symmetric(dim=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    lam = torch.linspace(-2.0, 10.0, dim, dtype=torch.float64)
    return (u * lam) @ u.T


@pytest.mark.parametrize("b", [1, 3])
def test_block_arnoldi_relation_orthonormality_and_residuals(b):
    A = _symmetric()
    start = torch.randn(b, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    r = block_arnoldi(lambda V: V @ A, start, 4)
    m = 4 * b
    assert r.iterations == m and not r.breakdown and r.basis.shape == (m + b, 30)
    Q = r.basis
    torch.testing.assert_close(Q @ Q.T, torch.eye(m + b, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(A @ Q[:m].T, Q.T @ r.hessenberg, atol=1e-10, rtol=0)
    pairs = distill_block(r, 3)
    true = (pairs.eigenvectors @ A - pairs.eigenvalues[:, None] * pairs.eigenvectors).norm(dim=1)
    torch.testing.assert_close(pairs.residuals, true, atol=1e-10, rtol=1e-8)


def test_block_arnoldi_of_one_vector_matches_arnoldi():
    A = _symmetric()
    start = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    single = distill(arnoldi(lambda v: A @ v, start, 12), 5)
    block = distill_block(block_arnoldi(lambda V: V @ A, start[None], 12), 5)
    torch.testing.assert_close(block.eigenvalues, single.eigenvalues, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(block.eigenvectors, single.eigenvectors, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(block.residuals, single.residuals, rtol=1e-6, atol=1e-12)


def test_block_arnoldi_on_the_dataset_hessian_finds_the_dense_eigenpairs():
    model = make_mlp(hidden=4)  # P = 35: 5 blocks of 7 span the whole space
    x, y, batches = make_data(n=20)
    params = {k: p.detach() for k, p in model.named_parameters()}
    space = ParameterSpace.of(params)
    f = make_functional_loss(model, cross_entropy)
    op = DatasetHessian(f, params, space, batches, "fwd-rev", 20, cache=True)
    start = torch.randn(
        7, space.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    r = block_arnoldi(lambda V: matmat(op, V), start, 6)
    assert space.dim == 35 and r.breakdown and r.iterations == 35
    evals, evecs = Dense(model, x, y).top_eigenpairs(4)
    pairs = distill_block(r, 4)
    torch.testing.assert_close(pairs.eigenvalues, evals, rtol=1e-8, atol=1e-10)
    overlap = (pairs.eigenvectors @ evecs).abs().diagonal()
    torch.testing.assert_close(overlap, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-6)
    assert float(pairs.residuals.max()) < 1e-8


def test_block_arnoldi_stops_on_an_invariant_block_and_refuses_bad_input():
    A = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
    r = block_arnoldi(lambda V: V @ A, torch.randn(2, 6, dtype=torch.float64), 10)
    assert r.breakdown and r.iterations == 6
    with pytest.raises(ValueError, match="n_blocks=0 must be at least 1"):
        block_arnoldi(lambda V: V, torch.randn(2, 6), 0)
    with pytest.raises(ValueError, match=r"\[b, P\] block"):
        block_arnoldi(lambda V: V, torch.randn(6), 2)
    with pytest.raises(ValueError, match="full rank"):
        block_arnoldi(lambda V: V, torch.ones(2, 6, dtype=torch.float64), 2)
    with pytest.raises(NonFiniteError, match="block product 0"):
        block_arnoldi(lambda V: V * float("nan"), torch.randn(2, 6), 2)


def test_hvp_cache_auto_falls_back_with_a_message_when_memory_is_short(monkeypatch, tmp_path):
    from lightning_influence import ArnoldiInfluence
    from lightning_influence.engines import arnoldi

    model = make_mlp()
    _, _, batches = make_data(n=40)
    # an explicit basis file (float64): no room is asked of memory for the basis
    basis = str(tmp_path / "basis.bin")
    cfg = {"n_iters": 12, "top_k": 5, "progress": False, "basis_file": basis}
    cached = ArnoldiInfluence(model, cross_entropy, hvp_cache="on", **cfg).fit(batches)
    monkeypatch.setattr(arnoldi, "memory_available", lambda device: 0)  # a machine with no room
    with pytest.warns(RuntimeWarning, match=r"hvp_cache='auto'.*recomputes its graph"):
        short = ArnoldiInfluence(model, cross_entropy, **cfg).fit(batches)
    assert short.fit_stats["hvp_cache"].startswith("off: estimated")
    torch.testing.assert_close(short.eigenvalues, cached.eigenvalues, rtol=1e-8, atol=1e-12)
