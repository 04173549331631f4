"""Two processes as two "nodes" on loopback (Lightning's num_nodes=2, one device each, gloo):
the same code as one machine's DDP, launched the way a cluster launcher starts nodes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from lightning_influence import ArnoldiInfluence, read_event
from lightning_influence.lightning.analysis import hvp_indices
from lightning_influence.losses import cross_entropy_loss
from tests.cli.models import TinyClassifier, TinyImages

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_nodes_on_loopback_analyse_and_prune_as_one(tmp_path):
    port = free_port()
    nodes = []
    for node in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "NODE_RANK": str(node),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "PYTHONPATH": str(ROOT),
        }
        nodes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "tests" / "lightning" / "multinode_worker.py"),
                    str(tmp_path),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    for process in nodes:
        try:
            outputs.append(process.communicate(timeout=240)[0])
        finally:
            if process.poll() is None:
                process.kill()
    for process, output in zip(nodes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for a, b in zip(ranks[0]["events"], ranks[1]["events"], strict=True):
        assert torch.equal(a["signals"]["self_influence"], b["signals"]["self_influence"])
        assert a["uid"] == b["uid"]  # one event, named once
    assert torch.equal(ranks[0]["keep"], ranks[1]["keep"]) and int((~ranks[0]["keep"]).sum()) == 8

    final = ranks[0]["events"][-1]
    folder = Path(final["directory"])
    on_disk = read_event(folder)
    assert torch.equal(on_disk.self_influence, final["signals"]["self_influence"])
    # each node streamed its own block of indices into its own shards
    assert sorted(p.name for p in (folder / "scores").iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
    assert (folder / "eigenpairs.safetensors").is_file()

    # one process on the final weights gives the same scores
    model = TinyClassifier(hidden=8)
    model.load_state_dict(ranks[0]["weights"])
    data = TinyImages(41, 0, image=True)
    engine = ArnoldiInfluence(model, cross_entropy_loss, n_iters=10, top_k=4, progress=False)
    engine.fit(DataLoader(Subset(data, hvp_indices(41, 20, 0).tolist()), batch_size=8))
    torch.testing.assert_close(engine.eigenvalues, on_disk.eigenvalues, rtol=1e-5, atol=0)
    scores = engine.self_influence(DataLoader(data, batch_size=8)).double()
    torch.testing.assert_close(scores, on_disk.self_influence, rtol=1e-4, atol=1e-7)
