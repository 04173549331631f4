import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from torch import nn

from lightning_influence import ArnoldiInfluence, ConfigurationError
from lightning_influence.core.scores import inverse_eigenvalues
from tests.conftest import Dense, cross_entropy, make_data, make_mlp

# The MLP's Hessian has a null space (shifting every logit alike changes nothing), so a full
# Krylov space is smaller than P; K = the number of eigenpairs compared.
K = 30


def _fit(model, batches, **kwargs):
    kwargs = {"n_iters": 80, "top_k": K, "progress": False, **kwargs}
    return ArnoldiInfluence(model, cross_entropy, **kwargs).fit(batches)


@pytest.mark.parametrize("policy", ["abs", "signed", "positive"])
def test_exact_against_dense_hessian(policy):
    model = make_mlp()
    x, y, batches = make_data()
    dense = Dense(model, x, y)
    engine = _fit(model, batches, eigenvalue_policy=policy)
    ref_vals, ref_vecs = dense.top_eigenpairs(K)
    assert engine.fit_stats["breakdown"]  # n_iters > P: the Krylov space was exhausted
    torch.testing.assert_close(engine.eigenvalues, ref_vals, rtol=1e-8, atol=1e-12)
    assert engine.relative_residuals.max() < 1e-8

    w = inverse_eigenvalues(ref_vals, policy)
    proj = dense.gradients(x, y) @ ref_vecs
    torch.testing.assert_close(
        engine.self_influence(batches), (proj.square() * w).sum(1), rtol=1e-8, atol=1e-12
    )
    xt, yt, test_batches = make_data(n=6, seed=7, batch=4)
    proj_t = dense.gradients(xt, yt) @ ref_vecs
    torch.testing.assert_close(
        engine.influence(batches, test_batches), (proj_t * w) @ proj.T, rtol=1e-8, atol=1e-12
    )


def test_projection_routes_and_hvp_modes_agree():
    model = make_mlp()
    _, _, batches = make_data()
    a = _fit(model, batches, hvp_mode="fwd-rev", projection="jvp")
    b = _fit(model, batches, hvp_mode="rev-rev", projection="grad")
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(
        a.self_influence(batches), b.self_influence(batches), rtol=1e-8, atol=1e-12
    )
    for route in ("hooks", "loop"):
        c = _fit(model, batches, projection=route)
        torch.testing.assert_close(
            c.self_influence(batches), a.self_influence(batches), rtol=1e-8, atol=1e-12
        )
    auto = _fit(model, batches)
    auto.self_influence(batches)
    assert auto.projection_mode_ == "hooks"  # every parameter sits in a Linear layer


def test_top_influences_are_the_extremes_of_the_matrix():
    model = make_mlp()
    _, _, batches = make_data()
    engine = _fit(model, batches)
    test = batches[:1]
    matrix = engine.influence(batches, test)
    top = engine.top_influences(batches, test, k=3)
    assert top.proponents.shape == (10, 3)
    torch.testing.assert_close(top.proponent_scores, matrix.gather(1, top.proponents))
    torch.testing.assert_close(top.opponent_scores[:, 0], matrix.min(dim=1).values)
    assert (top.proponent_scores[:, 0] == matrix.max(dim=1).values).all()


def test_state_dict_round_trip_gives_identical_scores(tmp_path):
    model = make_mlp()
    _, _, batches = make_data()
    engine = _fit(model, batches, top_k=10, eigenvalue_policy="signed")
    path = tmp_path / "eigen.pt"
    torch.save(engine.state_dict(), path)
    fresh = ArnoldiInfluence(model, cross_entropy, progress=False)
    fresh.load_state_dict(torch.load(path))
    assert fresh.config.top_k == 10 and fresh.config.eigenvalue_policy == "signed"
    assert torch.equal(fresh.self_influence(batches), engine.self_influence(batches))
    assert torch.equal(fresh.ritz_residuals, engine.ritz_residuals)


def test_state_dict_for_another_model_is_refused():
    _, _, batches = make_data()
    engine = _fit(make_mlp(), batches, top_k=5)
    other = ArnoldiInfluence(make_mlp(hidden=6), cross_entropy, progress=False)
    with pytest.raises(ValueError, match="other parameters"):
        other.load_state_dict(engine.state_dict())


def test_parameter_subset_equals_dense_hessian_block():
    model = make_mlp()
    x, y, batches = make_data()
    engine = _fit(model, batches, params=["2"], n_iters=40, top_k=12)
    h = Dense(model, x, y).hessian()
    last = slice(h.shape[0] - 18, h.shape[0])  # 2.weight (15) + 2.bias (3)
    evals = torch.linalg.eigvalsh(h[last, last])
    evals = evals[torch.sort(evals.abs(), descending=True, stable=True).indices]
    torch.testing.assert_close(engine.eigenvalues, evals[:12], rtol=1e-8, atol=1e-12)


def test_float32_model_is_analysed_in_float32_and_modes_are_restored():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3)
    )
    model.train()
    model[1].eval()  # a submodule kept in eval mode by the user must stay so
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    running = model[1].running_mean.clone()
    with torch.inference_mode():  # hooks may run under inference mode; the engine owns its context
        engine = ArnoldiInfluence(model, cross_entropy, n_iters=20, top_k=5, progress=False).fit(
            batches
        )
        scores = engine.self_influence(batches)
    # projections in the model's float32, the scores summed in float64
    assert engine.project(batches).dtype == torch.float32 and scores.dtype == torch.float64
    assert torch.isfinite(scores).all() and (scores >= 0).all()
    assert model.training and not model[1].training and model[2].training
    assert torch.equal(model[1].running_mean, running)  # eval mode: running stats untouched
    with torch.no_grad():
        again = engine.self_influence(batches)
    torch.testing.assert_close(again, scores)


def test_bfloat16_model_is_analysed_in_float32():
    model = make_mlp().to(torch.bfloat16)
    _, _, batches = make_data()
    batches = [(x.to(torch.bfloat16), y) for x, y in batches]
    engine = ArnoldiInfluence(model, cross_entropy, n_iters=10, top_k=3, progress=False).fit(
        batches
    )
    assert engine.compute_dtype == torch.float32 and engine.eigenvectors.dtype == torch.float32
    assert torch.isfinite(engine.self_influence(batches)).all()


def test_basis_offload_and_low_precision_storage():
    model = make_mlp().float()
    _, _, batches = make_data()
    batches = [(x.float(), y) for x, y in batches]
    ref = ArnoldiInfluence(model, cross_entropy, n_iters=25, top_k=5, progress=False).fit(batches)
    low = ArnoldiInfluence(
        model,
        cross_entropy,
        n_iters=25,
        top_k=5,
        progress=False,
        basis_device="cpu",
        basis_dtype="bfloat16",
    ).fit(batches)
    torch.testing.assert_close(low.eigenvalues, ref.eigenvalues, rtol=3e-2, atol=0)


def test_the_basis_stays_in_memory_when_it_fits():
    model = make_mlp(hidden=20)
    _, _, batches = make_data(n=60)
    engine = _fit(model, batches, n_iters=12, top_k=5, restart_tol=1e-6)
    assert engine.fit_stats["solver"] == "lanczos"
    assert engine.fit_stats["basis"].startswith("cpu memory: ")


def test_a_basis_that_does_not_fit_in_memory_goes_to_a_temporary_file(monkeypatch, tmp_path):
    import tempfile

    from lightning_influence.engines import arnoldi

    model = make_mlp(hidden=20)  # P = 163
    x, y, batches = make_data(n=60)
    ref_vals, _ = Dense(model, x, y).top_eigenpairs(5)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # room for the cache estimate's comparison but not for 13 basis rows of 163 float64
    monkeypatch.setattr(arnoldi, "memory_available", lambda device: 1000)
    kwargs = {"n_iters": 40, "top_k": 5, "hvp_cache": "off", "restart_tol": 1e-6}
    with pytest.warns(RuntimeWarning, match=r"does not fit in half of the 0 MiB.*float16 file"):
        engine = _fit(model, batches, **kwargs)
    stats = engine.fit_stats
    assert stats["solver"] == "arnoldi" and stats["basis"].startswith("file: ")
    assert stats["iterations"] == 40  # the fixed-product solver: a file is not rewritten
    # a float16 basis: the top eigenvalues to the precision of its storage
    torch.testing.assert_close(engine.eigenvalues, ref_vals, rtol=2e-3, atol=0)
    assert list(tmp_path.iterdir()) == []  # the file and its folder are gone after the fit

    # no room on the disk either: an error naming the sizes and the fixes, before any product
    monkeypatch.setattr(arnoldi.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})())
    with pytest.raises(ConfigurationError, match=r"lower n_iters.*basis_file="):
        _fit(model, batches, **kwargs)


def test_processes_agree_on_the_most_cautious_basis_placement(monkeypatch, tmp_path):
    # Under data parallelism every process must run the same solver: one process short of
    # memory (simulated: its vote for a file is added by the reduction) sends all to the file.
    import tempfile

    model = make_mlp(hidden=20)
    _, _, batches = make_data(n=60)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    other = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)

    def reduce_fn(v):  # the other process: the same HVPs and counts, a vote for the file
        return v + other if v.numel() == 4 and v.sum() == 1 else v

    kwargs = {"n_iters": 20, "top_k": 5, "restart_tol": 1e-6, "hvp_cache": "off"}
    engine = ArnoldiInfluence(model, cross_entropy, progress=False, **kwargs)
    with pytest.warns(RuntimeWarning, match="float16 file"):
        engine.fit(batches, reduce_fn=reduce_fn)
    assert engine.fit_stats["solver"] == "arnoldi" and engine.fit_stats["basis"].startswith("file")


def test_a_cached_hvp_sample_is_joined_into_larger_batches_with_the_same_answer():
    model = make_mlp(hidden=20)
    x, y, batches = make_data(n=60)  # six batches of 10
    ref_vals, _ = Dense(model, x, y).top_eigenpairs(5)
    kwargs = {"n_iters": 30, "top_k": 5, "restart_tol": 1e-10}
    joined = _fit(model, batches, hvp_cache="on", **kwargs)
    apart = _fit(model, batches, hvp_cache="off", **kwargs)
    assert joined.fit_stats["hvp_batches"] == 1 and apart.fit_stats["hvp_batches"] == 6
    torch.testing.assert_close(joined.eigenvalues, ref_vals, rtol=1e-10, atol=0)
    torch.testing.assert_close(joined.eigenvalues, apart.eigenvalues, rtol=1e-10, atol=0)


def test_same_seed_same_result_other_seed_same_converged_top():
    model = make_mlp()
    _, _, batches = make_data()
    a, b = _fit(model, batches, top_k=5), _fit(model, batches, top_k=5)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    c = _fit(model, batches, top_k=5, seed=1)
    torch.testing.assert_close(a.eigenvalues, c.eigenvalues, rtol=1e-8, atol=0)


def test_restart_tol_converges_with_a_small_basis_to_the_dense_answer():
    model = make_mlp(hidden=20)  # P = 163: a basis of 12 is far from the whole space
    x, y, batches = make_data(n=60)
    dense = Dense(model, x, y)
    ref_vals, ref_vecs = dense.top_eigenpairs(5)
    kwargs = {"n_iters": 12, "top_k": 5, "progress": False}
    plain = ArnoldiInfluence(model, cross_entropy, **kwargs).fit(batches)
    assert (plain.eigenvalues - ref_vals).abs().max() > 1e-3  # 12 products are not enough
    engine = ArnoldiInfluence(model, cross_entropy, restart_tol=1e-10, **kwargs).fit(batches)
    stats = engine.fit_stats
    assert stats["restarts"] > 0 and stats["converged"] == 5 and not stats["breakdown"]
    assert stats["iterations"] <= 120  # the default budget, 10 x n_iters
    assert engine.relative_residuals.max() <= 1e-10
    torch.testing.assert_close(engine.eigenvalues, ref_vals, rtol=1e-10, atol=0)
    proj = dense.gradients(x, y) @ ref_vecs
    expected = (proj.square() / ref_vals.abs()).sum(1)
    torch.testing.assert_close(engine.self_influence(batches), expected, rtol=1e-7, atol=1e-12)


def test_restart_tol_out_of_budget_warns_and_keeps_the_pairs():
    model = make_mlp(hidden=20)
    _, _, batches = make_data(n=60)
    kwargs = {"n_iters": 7, "top_k": 5, "restart_tol": 1e-13, "progress": False}
    with pytest.warns(RuntimeWarning, match=r"spent its 70 products with 4 of 5 eigenpairs"):
        engine = ArnoldiInfluence(model, cross_entropy, **kwargs).fit(batches)
    assert engine.fit_stats["iterations"] == 70 and engine.fit_stats["converged"] == 4
    assert len(engine.eigenvalues) == 5 and (engine.relative_residuals > 1e-13).any()


def test_restart_tol_bad_settings_are_refused():
    model = make_mlp()
    with pytest.raises(ValueError, match=r"restart_tol=0 must be in \(0, 1\)"):
        ArnoldiInfluence(model, cross_entropy, restart_tol=0)
    with pytest.raises(ValueError, match=r"restart_tol=1.5 must be in"):
        ArnoldiInfluence(model, cross_entropy, restart_tol=1.5)
    with pytest.raises(ValueError, match=r"n_iters >= top_k \+ 2 = 12 .*got 11"):
        ArnoldiInfluence(model, cross_entropy, n_iters=11, top_k=10, restart_tol=1e-2)
    with pytest.raises(ValueError, match="basis_file is not supported"):
        ArnoldiInfluence(model, cross_entropy, restart_tol=1e-2, basis_file="basis.npy")


# ---- leave-one-out retraining: predicted vs actual change of the test loss -----------------------

L2 = 3e-2


def _logreg_data():
    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float64)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(data.target, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    train, test = perm[:300], perm[300:]
    return x[train], y[train], x[test], y[test]


class LogReg(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, 1).double()

    def forward(self, x):
        return self.linear(x).squeeze(-1)


def _data_losses(model, batch):
    x, y = batch
    return F.binary_cross_entropy_with_logits(model(x), y, reduction="none")


def _example_losses(model, batch):
    return _data_losses(model, batch) + 0.5 * L2 * model.linear.weight.square().sum()


def _newton(x, y, init=None):
    """The L2-regularized logistic regression fitted to machine precision (Newton's method)."""
    d = x.shape[1]
    theta = torch.zeros(d + 1, dtype=torch.float64)
    if init is not None:
        theta = torch.cat([init.linear.weight.detach().reshape(-1), init.linear.bias.detach()])

    def objective(t):
        logits = x @ t[:d] + t[d]
        data = F.binary_cross_entropy_with_logits(logits, y)
        return data + 0.5 * L2 * t[:d].square().sum()

    for _ in range(50):
        g = torch.autograd.functional.jacobian(objective, theta)
        if g.norm() < 1e-12:
            break
        theta = theta - torch.linalg.solve(torch.autograd.functional.hessian(objective, theta), g)
    model = LogReg(d)
    with torch.no_grad():
        model.linear.weight.copy_(theta[:d].view(1, d))
        model.linear.bias.copy_(theta[d:])
    return model


def _test_loss(model, x, y):
    with torch.no_grad():
        return F.binary_cross_entropy_with_logits(model(x), y, reduction="sum").item()


def test_leave_one_out_retraining_matches_predicted_influence():
    x, y, xt, yt = _logreg_data()
    model = _newton(x, y)
    train = [(x[i : i + 100], y[i : i + 100]) for i in range(0, len(y), 100)]
    engine = ArnoldiInfluence(model, _example_losses, n_iters=60, top_k=31, progress=False).fit(
        train
    )
    assert engine.fit_stats["iterations"] == 31  # P = 31: the whole Hessian
    # The regularizer belongs to the training objective (and so to H), not to the test loss:
    # score with the data loss alone, reusing the fitted eigenpairs.
    scorer = ArnoldiInfluence(model, _data_losses, progress=False)
    scorer.load_state_dict(engine.state_dict())
    # I(x, z) ~ <g_z, H^-1 g_x>; removing x moves the test loss by about I / (n - 1).
    predicted = scorer.influence(train, [(xt, yt)]).sum(0) / (len(y) - 1)

    chosen = predicted.abs().argsort(descending=True)[:40]
    base = _test_loss(model, xt, yt)
    actual = []
    for i in chosen.tolist():
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[i] = False
        retrained = _newton(x[keep], y[keep], init=model)
        actual.append(_test_loss(retrained, xt, yt) - base)
    predicted, actual = predicted[chosen].numpy(), np.array(actual)
    pearson = np.corrcoef(predicted, actual)[0, 1]
    assert pearson >= 0.95, pearson
    slope = np.polyfit(predicted, actual, 1)[0]
    assert 0.8 < slope < 1.25, slope  # the right scale, not only the right ranking


# ---- bad input --------------------------------------------------------------------------------


def test_bad_input_errors():
    model = make_mlp()
    _, _, batches = make_data()

    def scalar_loss(m, b):
        return cross_entropy(m, b).mean()

    with pytest.raises(
        ValueError,
        match=r"shape \(\) for batch 0 of the HVP sample loader of 10 examples.*reduction='none'",
    ):
        ArnoldiInfluence(model, scalar_loss, n_iters=3, top_k=2, progress=False).fit(batches)
    with pytest.raises(
        ValueError, match=r"shape \(9,\) for batch 0 of the HVP sample loader of 10"
    ):
        ArnoldiInfluence(
            model, lambda m, b: cross_entropy(m, b)[1:], n_iters=3, top_k=2, progress=False
        ).fit(batches)
    with pytest.raises(
        ConfigurationError, match=r"returned float for batch 0 .*must return a Tensor"
    ):
        ArnoldiInfluence(model, lambda m, b: 1.0, n_iters=3, top_k=2, progress=False).fit(batches)
    with pytest.raises(ValueError, match="yielded no batches"):
        ArnoldiInfluence(model, cross_entropy, n_iters=3, top_k=2, progress=False).fit([])
    with pytest.raises(ValueError, match="top_k=300 exceeds n_iters=200"):
        ArnoldiInfluence(model, cross_entropy, top_k=300)
    with pytest.raises(ValueError, match="projection='fast'"):
        ArnoldiInfluence(model, cross_entropy, projection="fast")
    with pytest.raises(ValueError, match="damping > 0"):
        ArnoldiInfluence(model, cross_entropy, eigenvalue_policy="damped")
    with pytest.raises(ValueError, match="basis_dtype='half-ish'"):
        ArnoldiInfluence(model, cross_entropy, basis_dtype="half-ish")
    with pytest.raises(ValueError, match="requires grad"):
        ArnoldiInfluence(make_mlp().requires_grad_(False), cross_entropy)
    with pytest.raises(ValueError, match="matches no parameter"):
        ArnoldiInfluence(model, cross_entropy, params=["encoder"])
    with pytest.raises(RuntimeError, match=r"not fitted: call \.fit"):
        ArnoldiInfluence(model, cross_entropy).self_influence(batches)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ArnoldiInfluence(model, "cross_entropy")  # type: ignore[arg-type]


def test_non_finite_loss_names_the_batch():
    model = make_mlp()
    _, _, batches = make_data()
    bad = list(batches)
    xb = bad[2][0].clone()
    xb[3, 0] = float("nan")
    bad[2] = (xb, bad[2][1])
    with pytest.raises(
        FloatingPointError,
        match=r"batch 2 of the HVP sample loader \(1 of its 10 .*positions \[3\]",
    ):
        ArnoldiInfluence(model, cross_entropy, n_iters=3, top_k=2, progress=False).fit(bad)
    # an unshuffled DataLoader over a Subset: the message names the dataset index
    from torch.utils.data import DataLoader, Subset, TensorDataset

    x = torch.cat([b[0] for b in bad])
    y = torch.cat([b[1] for b in bad])
    loader = DataLoader(Subset(TensorDataset(x, y), list(range(5, 40))), batch_size=10)
    with pytest.raises(FloatingPointError, match=r"dataset indices \[23\]"):
        ArnoldiInfluence(model, cross_entropy, n_iters=3, top_k=2, progress=False).fit(loader)


def test_non_finite_hvp_names_the_batch():
    # sqrt(|w x|) is finite at w x = 0 but its curvature there is infinite.
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()

    def loss(m, b):
        return m(b).squeeze(-1).abs().sqrt()

    batches = [torch.randn(4, 3, dtype=torch.float64) for _ in range(3)]
    with torch.no_grad():
        model.bias.zero_()
    batches[1][2] = 0.0  # w x + b = 0 for this example
    with pytest.raises(FloatingPointError, match="batch 1 of the HVP sample"):
        ArnoldiInfluence(model, loss, n_iters=5, top_k=2, progress=False).fit(batches)


def test_a_parameter_subset_builds_no_graph_through_the_other_parameters():
    # Bug: the parameters left out of `params` stayed live in functional_call, so every HVP and
    # score carried an autograd graph through them (memory grew with n) and results required grad.
    model = make_mlp()
    _, _, batches = make_data()
    engine = ArnoldiInfluence(
        model, cross_entropy, params=["2"], n_iters=10, top_k=4, progress=False
    )
    engine.fit(batches)
    scores = engine.self_influence(batches)
    assert not scores.requires_grad
    assert not engine.eigenvectors.requires_grad and not engine.eigenvalues.requires_grad
    assert not engine.influence(batches, batches[:1]).requires_grad
    ggn = ArnoldiInfluence(
        model, cross_entropy, params=["2"], n_iters=10, top_k=4, curvature="ggn", progress=False
    ).fit(batches)
    assert not ggn.eigenvectors.requires_grad


def test_a_frozen_model_is_analysed_when_its_parameters_are_named():
    model = make_mlp().requires_grad_(False)
    _, _, batches = make_data()
    engine = ArnoldiInfluence(
        model, cross_entropy, params=["2"], n_iters=20, top_k=4, progress=False
    ).fit(batches)
    reference = make_mlp()
    reference[0].requires_grad_(False)  # the same weights, only the head trainable
    expected = ArnoldiInfluence(reference, cross_entropy, n_iters=20, top_k=4, progress=False)
    expected.fit(batches)
    torch.testing.assert_close(engine.eigenvalues, expected.eigenvalues, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        engine.self_influence(batches), expected.self_influence(batches), rtol=1e-8, atol=1e-12
    )


def test_a_warm_start_converges_in_fewer_products_and_refuses_another_size():
    model = make_mlp()
    _, _, batches = make_data()
    kwargs = {
        "solver": "lanczos",
        "restart_tol": 1e-6,
        "n_iters": 10,
        "top_k": 4,
        "progress": False,
    }
    cold = ArnoldiInfluence(model, cross_entropy, **kwargs).fit(batches)
    warm = ArnoldiInfluence(model, cross_entropy, **kwargs).fit(batches, warm=cold.eigenvectors)
    assert cold.fit_stats["warm_start"] == "cold" and warm.fit_stats["warm_start"] == "warm"
    assert warm.fit_stats["iterations"] < cold.fit_stats["iterations"]
    torch.testing.assert_close(warm.eigenvalues, cold.eigenvalues, rtol=1e-6, atol=0)
    with pytest.warns(RuntimeWarning, match=r"warm start refused: warm vectors of size 3"):
        other = ArnoldiInfluence(model, cross_entropy, **kwargs).fit(batches, warm=torch.ones(3))
    assert other.fit_stats["warm_start"].startswith("refused")
    torch.testing.assert_close(other.eigenvalues, cold.eigenvalues, rtol=0, atol=0)
