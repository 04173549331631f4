"""DDP scoring killed with SIGKILL and started again: two gloo ranks stream their shards, the
process group is killed after some shards are complete, and a rerun with the same arguments
resumes from them (the saved eigenpairs, the complete shards) and gives the uninterrupted run's
scores exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lightning_influence import read_event

ROOT = Path(__file__).resolve().parents[2]
N, PER_RANK_SHARDS = 24, 6  # 12 examples per rank, batches of 2, one batch per shard

# Launched as a script: Lightning's strategy="ddp" starts rank 1 by running it again.
WORKER = """
import sys, time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, {root!r})
from lightning_influence import InfluenceCallback
from lightning_influence.losses import cross_entropy_loss


class Data(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn({n}, 6, generator=g)
        self.y = (self.x @ torch.randn(6, 3, generator=g)).argmax(1)
        self.delay = 0.0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        time.sleep(self.delay)
        return self.x[i], self.y[i]


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SlowScoring(pl.Callback):
    # placed before InfluenceCallback: its on_train_end runs first, so only scoring is slowed
    def __init__(self, data, delay):
        self.data, self.delay = data, delay

    def on_train_end(self, trainer, pl_module):
        self.data.delay = self.delay


def main(out, delay):
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    data = Data()
    callback = InfluenceCallback(
        cross_entropy_loss,
        every_n_epochs=0,
        n_iters=10,
        top_k=4,
        hvp_samples=16,
        batch_size=2,
        shard_batches=1,
        projection="grad",
        dirpath=out,
        on_error="raise",
        progress=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        callbacks=[SlowScoring(data, delay), callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Model(), DataLoader(data, batch_size=4, shuffle=True))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
"""


def launch(script: Path, out: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(key, None)
    return subprocess.Popen(
        [sys.executable, str(script), str(out), str(delay)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: rank 0 and the rank 1 it starts
    )


def finish(process: subprocess.Popen) -> None:
    try:
        output = process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, output[-3000:]


def the_event(out: Path) -> Path:
    (analysis,) = out.iterdir()
    (event,) = analysis.iterdir()
    return event


def written(out: Path) -> dict[str, int]:
    """Complete shards per rank so far (none while the run's setup probes, creates and removes
    its output folder: a glob then races with the removal)."""
    counts = {"rank-0-of-2": 0, "rank-1-of-2": 0}
    try:
        for path in out.glob("*/*/scores/rank-*-of-2/shard-*.csv"):
            counts[path.parent.name] += 1
    except FileNotFoundError:
        return {"rank-0-of-2": 0, "rank-1-of-2": 0}
    return counts


def shards(event: Path) -> dict[str, list[Path]]:
    return {
        rank: sorted((event / "scores" / rank).glob("shard-*.csv"))
        for rank in ("rank-0-of-2", "rank-1-of-2")
    }


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ddp_scoring_killed_with_sigkill_resumes_to_the_uninterrupted_scores(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER.format(root=str(ROOT), n=N)))

    uninterrupted = tmp_path / "uninterrupted"
    finish(launch(script, uninterrupted, 0.0))
    expected = read_event(the_event(uninterrupted)).self_influence
    assert expected.shape == (N,)

    out = tmp_path / "interrupted"
    killed = launch(script, out, 0.3)
    try:
        deadline = time.monotonic() + 200
        while not all(n >= 2 for n in written(out).values()):
            assert killed.poll() is None, "the DDP run ended before it was killed"
            assert time.monotonic() < deadline, f"too few shards: {written(out)}"
            time.sleep(0.05)
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
    assert killed.returncode == -signal.SIGKILL
    event = the_event(out)
    assert not (event / "manifest.json").exists()  # the event was never written
    kept = {path: path.stat() for paths in shards(event).values() for path in paths}
    assert 4 <= len(kept) < 2 * PER_RANK_SHARDS  # killed mid-way, both ranks some shards
    eigenpairs = (event / "eigenpairs.safetensors").stat()

    finish(launch(script, out, 0.0))  # the same arguments, at full speed
    resumed = read_event(event)
    assert torch.equal(resumed.self_influence, expected)
    assert [len(s) for s in shards(event).values()] == [PER_RANK_SHARDS, PER_RANK_SHARDS]
    # resumed, not redone: the complete shards and the saved eigenpairs were not written again
    for path, before in kept.items():
        after = path.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path
    after = (event / "eigenpairs.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (eigenpairs.st_ino, eigenpairs.st_mtime_ns)
