"""Smoke test: examples/benchmarks/analysis_cost.py --quick runs and reports every configuration.

It checks the output's structure, never a timing (the cost goals live in the script's own output):
every configuration of every model has a positive cost in epochs, phases that add up to it, a
number of Hessian-vector products and a projection route, and analysed the same weights.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.test_benchmarks import _load


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_analysis_cost_quick(tmp_path):
    module = _load("analysis_cost")
    module.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "analysis_cost_quick.md").read_text().startswith("# ")
    payload = json.loads((tmp_path / "analysis_cost_quick.json").read_text())
    assert payload["command"].startswith("PYTHONPATH=. python examples/benchmarks/analysis_cost.py")
    assert payload["quick"] is True

    configs = set(module.QUICK_CONFIGS)
    models = {m["name"] for m in payload["models"]}
    assert {"digits", "transformer"} <= models
    rows = {(r["model"], r["config"]): r for r in payload["rows"]}
    assert set(rows) == {(m, c) for m in models for c in configs}

    for (model, config), row in rows.items():
        where = f"{model}/{config}"
        assert row["epoch_seconds"] > 0, where
        assert row["total_epochs"] > 0, where
        assert row["total_epochs"] == pytest.approx(
            row["total_seconds"] / row["epoch_seconds"], rel=1e-6
        ), where
        phases = row["phase_epochs"]
        assert set(phases) == {"fit", "validation", "scoring", "writing", "rest"}, where
        assert all(phases[p] >= 0 for p in ("fit", "validation", "scoring", "writing")), where
        assert phases["fit"] > 0 and phases["scoring"] > 0, where
        # the four phases are (nearly) the whole analysis; `rest` is the event's assembly
        assert sum(phases.values()) == pytest.approx(row["total_epochs"], rel=1e-6), where
        assert abs(phases["rest"]) <= 0.25 * row["total_epochs"], where
        assert row["callback_epochs"] >= row["total_epochs"] * 0.99, where
        assert isinstance(row["products"], int) and row["products"] > 0, where
        assert row["route"] in {"hooks", "grad", "jvp", "loop"}, where
        assert row["same_weights_as_A"], where  # every configuration analysed the same weights
        assert len(row["eigenvalues"]) >= 1, where
        assert math.isfinite(row["top10_max_rel_diff_vs_A"]), where
        assert math.isfinite(row["peak_added_MiB"]), where
        if module.QUICK_CONFIGS[config].get("hvp_cache"):
            assert row["cache_graph_MiB"] > 0, where
        else:
            assert "cache_graph_MiB" not in row, where
    for model in models:
        assert rows[model, "A"]["top10_max_rel_diff_vs_A"] == 0
        assert rows[model, "A"]["solver"] == "arnoldi"
        assert rows[model, "B"]["solver"] == "lanczos"
        # B and D differ in the cache only: the same fit, the same eigenvalues up to rounding
        b, d = rows[model, "B"], rows[model, "D"]
        for x, y in zip(b["eigenvalues"][:10], d["eigenvalues"][:10], strict=False):
            assert x == pytest.approx(y, rel=1e-3, abs=1e-6)
