"""Self-influence written in shards: equal to the in-memory scores, resumed after a failure or a
SIGKILL with identical results, and refused where resuming would mix other scores."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence import ArnoldiInfluence, ConfigurationError
from lightning_influence.io.shards import read_scores
from tests.conftest import cross_entropy, make_data, make_mlp

ROOT = Path(__file__).resolve().parents[2]


def fitted(top_k: int = 5) -> tuple[ArnoldiInfluence, TensorDataset]:
    model = make_mlp()
    x, y, batches = make_data(n=30)
    engine = ArnoldiInfluence(model, cross_entropy, n_iters=12, top_k=top_k, progress=False)
    engine.fit(batches)
    return engine, TensorDataset(x, y)


@pytest.mark.parametrize("shard_batches", [1, 2, 3])
def test_shards_equal_the_in_memory_scores(tmp_path, shard_batches):
    engine, data = fitted()
    loader = DataLoader(data, batch_size=4)
    expected = engine.self_influence(loader)
    out = engine.self_influence_shards(loader, tmp_path / "s", shard_batches=shard_batches)
    assert torch.equal(read_scores(out), expected.double())
    shards = sorted(p.name for p in out.glob("shard-*.csv"))
    assert len(shards) == -(-8 // shard_batches)  # 30 examples, batches of 4: 8 batches
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] and index["scored"] == 30 and index["num_examples"] == 30


def test_a_failed_write_keeps_the_complete_shards_and_a_rerun_resumes(tmp_path, monkeypatch):
    engine, data = fitted()
    loader = DataLoader(data, batch_size=4)
    expected = engine.self_influence(loader).double()
    calls = {"fsync": 0}
    real_fsync = os.fsync

    def disk_full_at_the_fourth_file(fd):
        calls["fsync"] += 1
        if calls["fsync"] == 4:  # the index, then shards 0 and 1; shard 2 fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_at_the_fourth_file)
    with pytest.raises(
        OSError, match=r"could not write shard 2 .*No space left on device.*resumes"
    ):
        engine.self_influence_shards(loader, tmp_path / "s", shard_batches=2)
    monkeypatch.setattr(os, "fsync", real_fsync)
    out = tmp_path / "s"
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.csv", "shard-000001.csv"]
    assert not list(out.glob(".*.tmp"))  # no partial shard left behind
    with pytest.raises(FileNotFoundError, match="not complete"):
        read_scores(out)

    computed = []
    original = engine.loss_fn

    def counting(model, batch):
        computed.append(len(batch[1]))
        return original(model, batch)

    engine.loss_fn = counting
    engine.self_influence_shards(loader, out, shard_batches=2)
    assert torch.equal(read_scores(out), expected)
    # shards 0 and 1 (16 examples) were not scored again: only 14 examples went through the loss
    assert sum(computed) < 30


def test_other_arguments_another_dataset_and_shuffling_are_refused(tmp_path):
    engine, data = fitted()
    out = engine.self_influence_shards(DataLoader(data, batch_size=4), tmp_path / "s")
    other, _ = fitted(top_k=4)
    with pytest.raises(ConfigurationError, match="other arguments"):
        other.self_influence_shards(DataLoader(data, batch_size=4), out)
    shorter = TensorDataset(*data[:20])
    with pytest.raises(ConfigurationError, match="dataset of 30 examples, this one has 20"):
        engine.self_influence_shards(DataLoader(shorter, batch_size=4), out)
    with pytest.raises(ConfigurationError, match="shuffle=False"):
        engine.self_influence_shards(DataLoader(data, batch_size=4, shuffle=True), tmp_path / "t")


SCRIPT = """
import sys, time, torch
from torch.utils.data import DataLoader, Dataset
sys.path.insert(0, {root!r})
from lightning_influence import ArnoldiInfluence
from tests.conftest import cross_entropy, make_data, make_mlp

class Slow(Dataset):
    def __init__(self):
        self.x, self.y, _ = make_data(n=30)
    def __len__(self):
        return 30
    def __getitem__(self, i):
        time.sleep({delay})
        return self.x[i], self.y[i]

engine = ArnoldiInfluence(make_mlp(), cross_entropy, n_iters=12, top_k=5, progress=False)
engine.load_state_dict(torch.load({state!r}, weights_only=False))
engine.self_influence_shards(DataLoader(Slow(), batch_size=2), {out!r}, shard_batches=1)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_with_sigkill_and_started_again_gives_identical_scores(tmp_path):
    engine, data = fitted()
    state = tmp_path / "engine.pt"
    torch.save(engine.state_dict(), state)
    expected = engine.self_influence(DataLoader(data, batch_size=2)).double()
    out = tmp_path / "scores"

    def script(delay: float) -> Path:
        path = tmp_path / f"score_{delay}.py"
        path.write_text(
            textwrap.dedent(
                SCRIPT.format(root=str(ROOT), delay=delay, state=str(state), out=str(out))
            )
        )
        return path

    slow = subprocess.Popen([sys.executable, str(script(0.2))], cwd=ROOT)
    try:
        deadline = time.monotonic() + 200
        while len(list(out.glob("shard-*.csv"))) < 3:
            assert slow.poll() is None, "the scoring process ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(slow.pid, signal.SIGKILL)
        slow.wait(timeout=30)
    finally:
        if slow.poll() is None:
            slow.kill()
    assert slow.returncode == -signal.SIGKILL
    written = len(list(out.glob("shard-*.csv")))
    assert 3 <= written < 15  # killed mid-way: 15 shards of 2 examples in all
    with pytest.raises(FileNotFoundError, match="not complete"):
        read_scores(out)

    again = subprocess.run(
        [sys.executable, str(script(0.0))], cwd=ROOT, capture_output=True, text=True, timeout=200
    )
    assert again.returncode == 0, again.stderr
    assert torch.equal(read_scores(out), expected)
