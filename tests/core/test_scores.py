import pytest
import torch

from lightning_influence.core.scores import influence, inverse_eigenvalues, self_influence

LAM = torch.tensor([4.0, -2.0, 1e-14, 0.0, 0.5], dtype=torch.float64)


def test_policies():
    torch.testing.assert_close(
        inverse_eigenvalues(LAM, "abs"), torch.tensor([0.25, 0.5, 0, 0, 2.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        inverse_eigenvalues(LAM, "signed"),
        torch.tensor([0.25, -0.5, 0, 0, 2.0], dtype=torch.float64),
    )
    torch.testing.assert_close(
        inverse_eigenvalues(LAM, "positive"),
        torch.tensor([0.25, 0, 0, 0, 2.0], dtype=torch.float64),
    )
    torch.testing.assert_close(
        inverse_eigenvalues(LAM, "damped", damping=0.5),
        # -2 + 0.5 < 0: negative curvature is dropped, never given the largest weight 1 / damping
        torch.tensor([1 / 4.5, 0.0, 1 / (0.5 + 1e-14), 2.0, 1.0], dtype=torch.float64),
    )


@pytest.mark.parametrize("policy", ["abs", "signed", "positive", "damped"])
def test_never_nan_or_inf(policy):
    lam = torch.tensor([0.0, -0.0, 1e-300, -1e-300, 3.0, -7.0], dtype=torch.float64)
    w = inverse_eigenvalues(lam, policy, damping=1e-3)
    assert torch.isfinite(w).all()
    assert torch.isfinite(inverse_eigenvalues(torch.zeros(3), policy, damping=1e-3)).all()


def test_bad_policy_and_damping():
    with pytest.raises(ValueError, match="eigenvalue_policy='inverse'"):
        inverse_eigenvalues(LAM, "inverse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="damping > 0"):
        inverse_eigenvalues(LAM, "damped")


def test_formulas():
    p_train = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    p_test = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    w = torch.tensor([0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(
        self_influence(p_train, w), torch.tensor([0.5 + 8.0, 4.5 + 2.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        influence(p_test, p_train, w), torch.tensor([[0.25 + 4.0, 0.75 - 2.0]], dtype=torch.float64)
    )
