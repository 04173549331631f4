"""examples/hf_lora_noisy_labels.py end to end (its --quick mode) and what it writes."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from lightning_influence import read_event

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hf_lora_noisy_labels.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hf_lora_noisy_labels", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def run(example, tmp_path_factory) -> dict[str, Any]:
    torch.set_num_threads(1)
    logdir = tmp_path_factory.mktemp("hf") / "logs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = example.main(["--quick", "--logdir", str(logdir)])
    return {**report, "printed": printed.getvalue(), "logdir": logdir}


@pytest.mark.slow
def test_the_adapters_are_analysed_and_every_signal_is_scored(run, example):
    model = example.lora_gpt2(4, 0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert run["trainable_parameters"] == trainable < sum(p.numel() for p in model.parameters())
    assert run["projection_mode"] == "hooks"
    assert run["cost_epochs"] > 0
    names = {name.split(" ")[0] for name in run["detection"]}
    assert {"loss", "aum", "self_influence", "validation_influence", "default"} <= names
    for name, (ap, auc) in run["detection"].items():
        assert 0.0 <= ap <= 1.0 and 0.0 <= auc <= 1.0, name
        assert f"{name:42s} {ap:6.3f} {auc:6.3f}" in run["printed"]


@pytest.mark.slow
def test_the_pruned_run_drops_the_fraction_and_writes_tensorboard(run):
    flipped = set(run["flipped"])
    assert len(flipped) == round(0.2 * 160)
    assert len(run["dropped"]) == round(0.2 * 160)
    event = read_event(run["event_dir"])
    assert Path(run["logdir"]) in Path(run["event_dir"]).parents
    assert torch.isfinite(event.signals["validation_influence"]).all()
    assert list(Path(run["logdir"]).glob("**/events.out.tfevents.*"))
    assert 0.0 <= run["pruned_accuracy"] <= 1.0 and 0.0 <= run["noisy_accuracy"] <= 1.0
