"""The package's layout holds: the core and engines know nothing of Lightning, the public API is
complete, and the old import paths still work (with a DeprecationWarning)."""

import importlib
import subprocess
import sys
import warnings

import pytest

import lightning_influence


def test_core_and_engines_import_no_lightning():
    code = (
        "import lightning_influence.core, lightning_influence.engines, lightning_influence.io, "
        "lightning_influence.pruning, lightning_influence.config, lightning_influence.losses, sys; "
        "bad = [m for m in sys.modules if m.startswith(('pytorch_lightning', 'lightning'))"
        " and not m.startswith('lightning_influence')]; "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_every_public_name_resolves():
    for name in lightning_influence.__all__:
        assert getattr(lightning_influence, name) is not None, name
    for package in ("core", "engines", "io", "pruning", "lightning", "cli", "demo"):
        module = importlib.import_module(f"lightning_influence.{package}")
        for name in module.__all__:
            assert hasattr(module, name), f"{package}.{name}"


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("callback", "InfluenceCallback", "lightning_influence.lightning.callback"),
        ("results", "read_event", "lightning_influence.io.events"),
        ("baselines", "TracInInfluence", "lightning_influence.engines.tracin"),
        ("baselines", "RandomProjectionConfig", "lightning_influence.config"),
        ("scores", "inverse_eigenvalues", "lightning_influence.core.scores"),
        ("sampler", "SamplingPlan", "lightning_influence.pruning.plan"),
    ],
)
def test_old_import_paths_warn_and_work(old, name, new):
    sys.modules.pop(f"lightning_influence.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"lightning_influence.{old}")
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
