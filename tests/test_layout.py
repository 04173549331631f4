"""The package's layout holds: the core and engines know nothing of Lightning, the public API is
small and complete, and importing it has no side effects."""

import importlib
import subprocess
import sys
from pathlib import Path

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


def test_the_top_level_is_small_and_taught():
    # the bound: what the README teaches, no more than 16 names
    assert len(lightning_influence.__all__) <= 16
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for name in lightning_influence.__all__:
        assert name in readme, f"{name} is exported but the README never teaches it"


def test_no_import_hook_and_no_side_effects_on_import():
    before = list(sys.meta_path)
    importlib.reload(lightning_influence)
    assert sys.meta_path == before
    # the demo's __main__ runs nothing when imported
    code = "import lightning_influence.demo.__main__"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode == 0 and not result.stdout


def test_the_old_module_paths_are_gone_and_the_function_arnoldi_is_not_shadowed():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lightning_influence.callback")
    assert callable(lightning_influence.core.arnoldi)


@pytest.mark.parametrize(
    ("name", "new"),
    [
        ("arnoldi", "lightning_influence.core"),
        ("cross_entropy_loss", "lightning_influence.losses"),
        ("write_event", "lightning_influence.io"),
    ],
)
def test_names_that_left_the_top_level_warn_and_work(name, new):
    with pytest.warns(DeprecationWarning, match=new):
        value = getattr(lightning_influence, name)
    assert value is getattr(importlib.import_module(new), name)
