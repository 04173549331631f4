"""Scoring events in Lightning's loggers; read back through a real TensorBoard server."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_influence import InfluenceCallback
from lightning_influence.io.events import ScoringEvent
from lightning_influence.lightning.loggers import log_event, markdown_table, top_examples
from lightning_influence.losses import cross_entropy_loss


def make_event(n: int = 10, step: int = 7) -> ScoringEvent:
    return ScoringEvent(
        epoch=1,
        global_step=step,
        self_influence=torch.linspace(0, 1, n, dtype=torch.float64),
        eigenvalues=torch.tensor([4.0, -2.0, 1.0], dtype=torch.float64),
        manifest={"timings": {"fit_seconds": 0.5, "scoring_seconds": 0.25}},
    )


# -- pieces ------------------------------------------------------------------------------------
def test_top_examples_table_lists_the_highest_scores_with_labels():
    data = [(torch.full((2,), float(i)), i % 3) for i in range(10)]
    rows = top_examples(data, make_event().self_influence, 3)
    assert [r["index"] for r in rows] == [9, 8, 7]
    assert [r["label"] for r in rows] == ["0", "2", "1"]
    table = markdown_table(rows)
    assert table.splitlines()[2].startswith("| 0 | 9 | 1 | 0 | tensor(2,) [9, 9]")


def test_every_logger_gets_the_scalars(tmp_path):
    logger = CSVLogger(tmp_path, name="csv", version=0)
    log_event([logger], make_event(), dataset=None)
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["influence/eigenvalue_0"]) == 4.0
    assert float(row["influence/eigenvalue_1"]) == -2.0
    assert float(row["influence/fit_seconds"]) == 0.5
    assert float(row["influence/self_influence_max"]) == 1.0
    assert int(row["step"]) == 7


# -- through TensorBoard -----------------------------------------------------------------------
class Images(Dataset):
    """1x8x8 "images" of two classes (bright left half or bright right half)."""

    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 2
        self.x = torch.rand(n, 1, 8, 8, generator=g)
        for i in range(n):
            self.x[i, :, :, :4] += 0.2 * (1 - self.y[i])
            self.x[i, :, :, 4:] += 0.2 * self.y[i]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class ImageModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tensorboard_serves_spectra_and_self_influence(tmp_path):
    callback = InfluenceCallback(
        cross_entropy_loss, n_iters=10, top_k=4, hvp_samples=16, progress=False
    )
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        callbacks=[callback],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(ImageModule(), train_dataloaders=DataLoader(Images(), batch_size=8))
    logger.experiment.flush()
    assert len(callback.events) == 2

    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline, scalars = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            assert server.poll() is None, "tensorboard exited early"
            try:
                scalars = _get_json(f"{base}/scalars/tags")
                if any("influence/eigenvalue_0" in tags for tags in scalars.values()):
                    break
            except OSError:
                pass
            time.sleep(1)
        run = next(run for run, tags in scalars.items() if "influence/eigenvalue_0" in tags)
        assert {
            "influence/eigenvalue_3",
            "influence/fit_seconds",
            "influence/scoring_seconds",
        } <= set(scalars[run])
        query = urllib.parse.urlencode({"run": run, "tag": "influence/eigenvalue_0"})
        points = _get_json(f"{base}/scalars/scalars?{query}")
        assert [p[1] for p in points] == [e.global_step for e in callback.events]
        torch.testing.assert_close(
            torch.tensor([p[2] for p in points], dtype=torch.float64),
            torch.stack([e.eigenvalues[0] for e in callback.events]),
            rtol=1e-6,
            atol=0,
        )

        histograms = _get_json(f"{base}/histograms/tags")[run]
        assert {"influence/spectrum", "influence/self_influence"} <= set(histograms)
        query = urllib.parse.urlencode({"run": run, "tag": "influence/spectrum"})
        spectrum = _get_json(f"{base}/histograms/histograms?{query}")
        assert [entry[1] for entry in spectrum] == [e.global_step for e in callback.events]

        images = _get_json(f"{base}/images/tags")[run]
        # the spectrum plot needs matplotlib (the plot extra); the example grid does not
        expected = {"influence/top_examples"}
        if importlib.util.find_spec("matplotlib") is not None:
            expected.add("influence/spectrum_plot")
        assert expected <= set(images)
        # the custom-scalars page tells the story without searching tags
        layout = _get_json(f"{base}/custom_scalars/layout")
        titles = [c["title"] for c in layout["category"]]
        assert titles == ["influence: the spectrum and the scores", "influence: pruning"]
        charts = {ch["title"] for c in layout["category"] for ch in c["chart"]}
        assert {"top eigenvalues over training", "dropped vs known noise"} <= charts
        text = _get_json(f"{base}/text/tags")[run]
        assert "influence/top_examples/text_summary" in text  # SummaryWriter.add_text's suffix
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
