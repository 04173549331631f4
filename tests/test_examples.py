"""Smoke tests: every example under examples/ runs end to end with tiny settings."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as `python examples/NAME.py` would see it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _forget_example_modules():
    yield
    for name in ("explain_prediction", "tabular_dict_batches", "noisy_labels"):
        sys.modules.pop(name, None)


def test_explain_prediction(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    example = load_example("explain_prediction")
    out = tmp_path / "explain.png"
    example.main(
        ["--epochs", "1", "--n-iters", "8", "--top-k", "4", "--hvp-samples", "64", "-k", "2",
         "--examples", "0", "1", "--out", str(out), "--logdir", str(tmp_path / "logs")]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert out.stat().st_size > 1000
    assert printed.count("proponents (train index, label)") == 2
    assert "lightning-influence explain --ckpt" in printed


def test_tabular_dict_batches(tmp_path, capsys):
    example = load_example("tabular_dict_batches")
    example.main(
        ["--epochs", "2", "--every-n-epochs", "1", "--n-iters", "8", "--top-k", "4",
         "--logdir", str(tmp_path / "logs")]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "labels flipped" in printed and "most self-influential" in printed
    assert "['epoch=0-step=15', 'epoch=1-step=30']" in printed
    assert "proponents:" in printed and "opponents:" in printed


def test_noisy_labels(tmp_path, capsys):
    example = load_example("noisy_labels")
    example.main(
        ["--epochs", "2", "--every-n-epochs", "1", "--n-iters", "6", "--top-k", "3",
         "--logdir", str(tmp_path / "logs")]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "mean weight" in printed and "on flipped labels" in printed
    assert "weights.csv" in printed
    assert "dropped 215 from epoch 0" in printed  # 20% of the demo split's 1,077 training digits
