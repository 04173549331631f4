"""examples/benchmarks/warm_start.py --quick: both runs analyse the same weights, the warm run's
later fits start warm, and the eigenvalues agree with the cold fits to the solver's tolerance."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "benchmarks" / "warm_start.py"


@pytest.mark.slow
def test_warm_start_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("warm_start_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    payload = module.main(["--quick", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "warm_start_quick.json",
        "warm_start_quick.md",
    ]  # the runs' event folders are removed
    rows = json.loads((tmp_path / "warm_start_quick.json").read_text())["rows"]
    assert rows == json.loads(json.dumps(payload["rows"]))
    assert len(rows) == 4
    assert [r["warm"]["warm_start"] for r in rows] == ["cold", "warm", "warm", "warm"]
    assert all(r["cold"]["warm_start"] == "cold" for r in rows)
    for r in rows:
        assert r["warm"]["weights_sha256"] == r["cold"]["weights_sha256"]
        assert r["warm"]["products"] > 0 and r["cold"]["products"] > 0
        assert r["warm"]["converged"] == r["cold"]["converged"] == 10
        # both converged to restart_tol=1e-2: eigenvalues agree to about its square
        assert r["eigenvalue_rel_diff"] < 1e-3
    assert rows[0]["warm"]["products"] == rows[0]["cold"]["products"]  # the first fit is cold
    md = (tmp_path / "warm_start_quick.md").read_text()
    assert "Analyses after the first:" in md and "| 3 |" in md


SUBSPACE = SCRIPT.with_name("warm_start_subspace.py")


@pytest.mark.slow
def test_warm_start_subspace_quick(tmp_path):
    """The Ritz test is checked on the cold fit's own vectors (all pass), and the previous
    analysis' vectors are tested from the second analysis on."""
    spec = importlib.util.spec_from_file_location("warm_start_subspace_benchmark", SUBSPACE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--epochs", "2", "--every", "1", "--top-k", "5", "--out", str(tmp_path)]
    payload = module.main(args)
    rows = json.loads((tmp_path / "warm_start_subspace_every1.json").read_text())["rows"]
    assert rows == json.loads(json.dumps(payload["rows"]))
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["own_pass_5e-2"] == 5 for r in rows)  # converged pairs pass their own test
    assert "pass_5e2" not in rows[0]
    assert 0 <= rows[1]["pass_5e2"] <= rows[1]["pass_1e1"] <= 5
    assert rows[1]["top10_max_residual"] >= 0
    md = (tmp_path / "warm_start_subspace_every1.md").read_text()
    assert "| 0 |" in md and "(first)" in md
