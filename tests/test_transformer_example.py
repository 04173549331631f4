"""examples/transformer_noisy_sequences.py end to end (its --quick mode) and what it writes."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_influence import read_event
from lightning_influence.io import latest_event_dir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "transformer_noisy_sequences.py"
SUBSETS = ("all", "last-block")
LAST_BLOCK = ("encoder.layers.1.", "norm.", "head.")  # --quick keeps the default 2 layers


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("transformer_noisy_sequences", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `python examples/...py` would see it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def run(example, tmp_path_factory) -> dict[str, Any]:
    """One quick run for every test of this module: its report and what it printed."""
    torch.set_num_threads(1)
    logdir = tmp_path_factory.mktemp("transformer") / "logs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = example.main(["--quick", "--logdir", str(logdir)])
    return {**report, "printed": printed.getvalue(), "logdir": logdir}


def _event(run: dict[str, Any], name: str):
    return read_event(latest_event_dir(Path(run["log_dir"], "influence", name)))


def test_both_subsets_write_their_own_event_folder(run):
    folders = {name: latest_event_dir(Path(run["log_dir"], "influence", name)) for name in SUBSETS}
    assert len(set(folders.values())) == 2
    for name, folder in folders.items():
        assert folder.parent.name == name
        assert Path(run["logdir"]) in folder.parents  # under --logdir
        assert {"signals.csv", "eigenvalues.csv", "manifest.json"} <= {
            p.name for p in folder.iterdir()
        }


def test_num_params_match_the_subsets(run):
    model = run["model"]
    total = sum(p.numel() for p in model.parameters())
    last = sum(p.numel() for n, p in model.named_parameters() if n.startswith(LAST_BLOCK))
    manifests = {name: _event(run, name).manifest for name in SUBSETS}
    assert manifests["all"]["num_params"] == total
    assert manifests["last-block"]["num_params"] == last
    assert 0 < last < total
    assert manifests["all"]["arguments"]["params"] is None
    assert manifests["last-block"]["arguments"]["params"] == ["encoder.layers.1", "norm", "head"]
    # The analysis used the module's influence_loss: padding masked, one loss per sequence.
    assert {m["arguments"]["loss_fn"] for m in manifests.values()} == {"influence_loss"}


def test_scores_are_finite_one_per_training_sequence(run):
    train = run["train"]
    for name in SUBSETS:
        event = _event(run, name)
        scores = event.self_influence
        assert scores.shape == (len(train),)
        assert bool(torch.isfinite(scores).all())
        assert bool((scores >= 0).all())  # the default 'abs' policy: sum_i <e_i, g>^2 / |lambda_i|
        assert float(scores.std()) > 0
        assert event.eigenvalues.numel() == event.manifest["arguments"]["top_k"]
        assert bool(torch.isfinite(event.residuals).all())


def test_padding_does_not_change_a_sequence_loss(run, example):
    model, train = run["model"], run["train"]
    lengths = [len(tokens) for tokens, _ in train]
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert lengths[short] < lengths[long]
    alone = example.pad_batch([train[short]])  # no padding
    padded = example.pad_batch([train[short], train[long]])  # padded to the longest
    assert alone[0].shape[1] == lengths[short] and padded[0].shape[1] == lengths[long]
    model.eval()
    for grad in (True, False):  # the analysis' path (grad on) and plain inference
        with torch.set_grad_enabled(grad):
            a = model.influence_loss(alone)[0].detach()
            b = model.influence_loss(padded)[0].detach()
        assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-6)
    # ... and it is the mean token cross-entropy over the real positions
    tokens, targets = alone
    expected = F.cross_entropy(model(tokens), targets).detach()
    assert float(model.influence_loss(padded)[0]) == pytest.approx(float(expected), rel=1e-5)


def test_data_targets_are_sorted_except_the_corrupted(run, example):
    train = run["train"]
    corrupted = train.corrupted
    assert 0 < corrupted.sum() < len(train)
    lengths = {len(tokens) for tokens, _ in train}
    assert min(lengths) == 4 and max(lengths) == 12  # variable lengths, hence padding
    unsorted = 0
    for i, (tokens, targets) in enumerate(train):
        assert bool((tokens != example.PAD).all()) and bool((targets != example.PAD).all())
        if corrupted[i]:
            unsorted += not torch.equal(targets, tokens.sort().values)
        else:
            assert torch.equal(targets, tokens.sort().values)
    assert unsorted == corrupted.sum()


def test_the_report_prints_auc_ap_beside_the_loss(run, example):
    printed = run["printed"]
    loss = np.asarray(run["losses"])
    corrupted = run["train"].corrupted
    for name in SUBSETS:
        block = printed.split(f"[{name}]", 1)[1]
        num_params = _event(run, name).manifest["num_params"]
        assert block.startswith(f" {num_params:,} parameters analysed")
        found = re.search(r"self-influence\s+AUC (\S+)\s+AP (\S+)", block)
        baseline = re.search(r"loss \(baseline\)\s+AUC (\S+)\s+AP (\S+)", block)
        assert found and baseline
        # The printed figures are those of the files the callback wrote.
        scores = _event(run, name).self_influence.numpy()
        assert float(found[1]) == pytest.approx(example.roc_auc(scores, corrupted), abs=6e-4)
        assert float(found[2]) == pytest.approx(
            example.average_precision(scores, corrupted), abs=6e-4
        )
        assert float(baseline[1]) == pytest.approx(example.roc_auc(loss, corrupted), abs=6e-4)
        assert "relative residuals" in block and "top eigenvalues" in block
        events = re.search(r"events: (\S+)", block)
        assert events and Path(events[1]) == latest_event_dir(
            Path(run["log_dir"], "influence", name)
        )


def test_auc_and_ap_agree_with_sklearn(example):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    positive = rng.random(300) < 0.2
    for scores in (rng.normal(size=300) + positive, np.round(rng.normal(size=300) + positive, 1)):
        assert example.roc_auc(scores, positive) == pytest.approx(
            metrics.roc_auc_score(positive, scores), abs=1e-12
        )
        assert example.average_precision(scores, positive) == pytest.approx(
            metrics.average_precision_score(positive, scores), abs=1e-12
        )
    assert example.roc_auc(positive.astype(float), positive) == 1.0
    # every negative ranked first (tied): AP is the share of positives
    worst = example.average_precision(-positive.astype(float), positive)
    assert worst == pytest.approx(positive.mean(), abs=1e-12)
