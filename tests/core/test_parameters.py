import pytest
import torch
from torch import nn

from lightning_influence.core.parameters import ParameterSpace, select_parameters


def _model():
    return nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4))


def test_selection_forms():
    m = _model()
    assert list(select_parameters(m)) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert list(select_parameters(m, ["2"])) == ["2.weight", "2.bias"]
    assert list(select_parameters(m, ["*.weight"])) == ["0.weight", "2.weight"]
    assert list(select_parameters(m, ["2.bias", "0.weight"])) == [
        "0.weight",
        "2.bias",
    ]  # model order
    assert list(select_parameters(m, lambda n, p: p.ndim == 1)) == ["0.bias", "2.bias"]


def test_frozen_parameters_are_left_out_by_default_and_analysed_when_named():
    m = _model()
    m[0].requires_grad_(False)
    assert list(select_parameters(m)) == ["2.weight", "2.bias"]
    assert list(select_parameters(m, ["0"])) == ["0.weight", "0.bias"]
    # the hint of a fully frozen model, followed, works
    frozen = _model().requires_grad_(False)
    with pytest.raises(ValueError, match=r"pass params=\[...\] naming the parameters"):
        select_parameters(frozen)
    assert list(select_parameters(frozen, ["2"])) == ["2.weight", "2.bias"]


def test_selection_errors():
    m = _model()
    with pytest.raises(ValueError, match="'fc' matches no parameter"):
        select_parameters(m, ["fc"])
    with pytest.raises(ValueError, match="selects no parameter"):
        select_parameters(m, lambda n, p: False)
    with pytest.raises(ValueError, match="no parameter of the model requires grad"):
        select_parameters(_model().requires_grad_(False))
    with pytest.raises(ValueError, match="has no parameters"):
        select_parameters(nn.ReLU())


def test_space_round_trip():
    m = _model()
    params = select_parameters(m)
    space = ParameterSpace.of(params)
    assert space.dim == 2 * 3 + 3 + 3 * 4 + 4
    flat = space.flatten(params)
    for name, t in space.unflatten(flat).items():
        assert torch.equal(t, params[name])
    batched = torch.stack([flat, 2 * flat])
    assert torch.equal(space.flatten_batched(space.unflatten_batched(batched)), batched)
    with pytest.raises(ValueError, match="other parameters"):
        space.check_compatible(["x"], [[1]])
