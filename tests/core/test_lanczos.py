import pytest
import torch

from lightning_influence.core.arnoldi import arnoldi, distill
from lightning_influence.core.lanczos import _orthogonalize, thick_restart_lanczos


def _spectrum_matrix(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g).double())
    return (q * eigenvalues) @ q.T


def _hessian_like(dim: int = 300, seed: int = 0) -> torch.Tensor:
    # A decaying spectrum of both signs, like a trained network's Hessian.
    g = torch.Generator().manual_seed(seed)
    mags = torch.logspace(1, -3, dim, dtype=torch.float64)
    signs = torch.where(torch.rand(dim, generator=g) < 0.2, -1.0, 1.0).double()
    return _spectrum_matrix(mags * signs, seed)


def _top(a: torch.Tensor, k: int) -> torch.Tensor:
    evals = torch.linalg.eigvalsh(a)
    return evals[torch.sort(evals.abs(), descending=True, stable=True).indices[:k]]


def test_restarts_until_the_top_pairs_converge_and_matches_the_dense_answer():
    a = _hessian_like()
    start = torch.randn(300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = thick_restart_lanczos(lambda v: a @ v, start, 20, basis_size=40, tol=1e-8)
    assert out.restarts > 0 and out.converged == 20
    torch.testing.assert_close(out.pairs.eigenvalues, _top(a, 20), rtol=1e-10, atol=0)
    vecs = out.pairs.eigenvectors
    true = (a @ vecs.T - vecs.T * out.pairs.eigenvalues).norm(dim=0)
    assert (true <= 1e-8 * out.pairs.eigenvalues.abs()).all()  # the residuals it promises
    torch.testing.assert_close(out.pairs.residuals, true, rtol=1e-3, atol=1e-12)
    torch.testing.assert_close(
        vecs @ vecs.T, torch.eye(20, dtype=torch.float64), atol=1e-10, rtol=0
    )


def test_one_gram_schmidt_pass_per_product_keeps_the_basis_orthonormal():
    # A symmetric operator: the recurrence leaves only rounding along the older vectors, so the
    # second pass is rare, and the basis stays orthonormal through the restarts (float32 too).
    a = _hessian_like(seed=6)
    start = torch.randn(300, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = thick_restart_lanczos(lambda v: a @ v, start, 20, basis_size=40, tol=1e-8)
    assert out.restarts > 0 and out.converged == 20
    assert out.reorthogonalized <= out.products // 4, (out.reorthogonalized, out.products)
    torch.testing.assert_close(out.pairs.eigenvalues, _top(a, 20), rtol=1e-10, atol=0)
    single = a.float()
    out32 = thick_restart_lanczos(lambda v: single @ v, start.float(), 10, basis_size=30)
    vecs = out32.pairs.eigenvectors
    gram = vecs @ vecs.T
    assert (gram - torch.eye(10)).abs().max() < 1e-5
    torch.testing.assert_close(
        out32.pairs.eigenvalues.double(), _top(a, 10), rtol=1e-2 * 1.01, atol=0
    )


def test_gram_schmidt_subtracts_only_the_components_above_rounding():
    # Rows 4 and 5 are "recent" (removed whatever their size); of the older rows only those whose
    # coefficient exceeds 8 eps ||w|| are subtracted: row 2 (1e-3) is, row 0 (below the floor)
    # is not, and the coefficients returned are the ones removed (the Krylov relation holds).
    g = torch.Generator().manual_seed(11)
    q, _ = torch.linalg.qr(torch.randn(50, 7, generator=g, dtype=torch.float64))
    basis, rest = q.T[:6].contiguous(), q.T[6]
    tiny = 2 * torch.finfo(torch.float64).eps
    w_in = rest + tiny * basis[0] + 1e-3 * basis[2] + 0.5 * basis[4] - 0.25 * basis[5]
    w = w_in.clone()
    c, second = _orthogonalize(basis, w, recent=4)
    assert not second
    assert c[0] == 0 and c[1] == 0 and c[3] == 0
    torch.testing.assert_close(c[[2, 4, 5]], torch.tensor([1e-3, 0.5, -0.25]).double())
    torch.testing.assert_close(w + basis.T @ c, w_in, atol=1e-15, rtol=0)
    assert (basis[1:] @ w).abs().max() < 1e-15  # what was subtracted is gone
    assert abs(float(basis[0] @ w)) < 8 * torch.finfo(torch.float64).eps  # what was left is tiny

    # when most rows carry more than rounding, one full pass removes them all
    w_in = rest + 1e-3 * basis[:4].sum(0)
    w = w_in.clone()
    c, _ = _orthogonalize(basis, w, recent=5)
    torch.testing.assert_close(c[:4], torch.full((4,), 1e-3, dtype=torch.float64))
    assert (basis @ w).abs().max() < 1e-15


def test_a_drifting_operator_triggers_the_second_pass():
    # A non-symmetric operator breaks the recurrence: in a space not much larger than the basis
    # the full pass removes most of the product, and the second pass runs.
    g = torch.Generator().manual_seed(8)
    a = torch.randn(30, 30, generator=g, dtype=torch.float64)
    start = torch.randn(30, generator=g, dtype=torch.float64)
    out = thick_restart_lanczos(lambda v: a @ v, start, 5, basis_size=20, max_products=40)
    assert out.reorthogonalized > 10
    vecs = out.pairs.eigenvectors
    torch.testing.assert_close(vecs @ vecs.T, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)


def test_converges_in_a_basis_where_plain_arnoldi_of_that_size_does_not():
    # The point of restarting: the memory of a 40-vector basis, the accuracy of a longer run.
    a = _hessian_like(seed=2)
    start = torch.randn(300, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plain = distill(arnoldi(lambda v: a @ v, start, 40), 20)
    assert (plain.residuals > 1e-6 * plain.eigenvalues.abs()).any()
    out = thick_restart_lanczos(lambda v: a @ v, start, 20, basis_size=40, tol=1e-6)
    assert out.converged == 20 and out.restarts > 0 and out.products > 40
    torch.testing.assert_close(out.pairs.eigenvalues, _top(a, 20), rtol=1e-9, atol=0)


def test_stops_at_the_product_budget_and_says_how_many_converged():
    a = _hessian_like(seed=4)
    start = torch.randn(300, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = thick_restart_lanczos(
        lambda v: a @ v, start, 20, basis_size=30, tol=1e-12, max_products=45
    )
    assert out.products == 45 and out.converged < 20
    assert len(out.pairs.eigenvalues) == 20


def test_invariant_subspace_gives_exact_pairs():
    a = _spectrum_matrix(torch.arange(1.0, 13.0, dtype=torch.float64))
    out = thick_restart_lanczos(
        lambda v: a @ v, torch.ones(12, dtype=torch.float64), 3, basis_size=12
    )
    assert out.pairs.residuals.max() == 0 and out.converged == 3
    torch.testing.assert_close(
        out.pairs.eigenvalues, torch.tensor([12.0, 11.0, 10.0], dtype=torch.float64)
    )


def test_bad_arguments_name_the_fix():
    a = torch.eye(50, dtype=torch.float64)
    with pytest.raises(ValueError, match="top_k"):
        thick_restart_lanczos(lambda v: a @ v, torch.ones(50, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="basis_size=5 must be at least top_k \\+ 2"):
        thick_restart_lanczos(lambda v: a @ v, torch.ones(50, dtype=torch.float64), 4, basis_size=5)
    with pytest.raises(ValueError, match="keep"):
        thick_restart_lanczos(lambda v: a @ v, torch.ones(50, dtype=torch.float64), 4, keep=2)
    with pytest.raises(ValueError, match="non-zero"):
        thick_restart_lanczos(lambda v: a @ v, torch.zeros(50, dtype=torch.float64), 4)
