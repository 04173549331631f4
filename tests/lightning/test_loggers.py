"""Scoring events in Lightning's loggers, read back: TensorBoard through a real server; CSV files,
an MLflow file store and a wandb offline run through their files and clients."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zlib
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
        signals=torch.linspace(0, 1, n, dtype=torch.float64),
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
    assert table.splitlines()[2].startswith("| 0 | 9 | 1 | 0 | - | tensor(2,) [9, 9]")


def test_with_a_pruning_plan_dropped_examples_are_marked_and_the_grid_shows_the_kept():
    data = [(torch.full((2,), float(i)), i % 3) for i in range(10)]
    keep = torch.ones(10, dtype=torch.bool)
    keep[[9, 7]] = False  # the two most suspect of the top three were dropped
    scores = make_event().self_influence
    rows = top_examples(data, scores, 3, keep=keep)
    assert [(r["index"], r["status"]) for r in rows] == [
        (9, "dropped"),
        (8, "kept"),
        (7, "dropped"),
    ]
    kept = top_examples(data, scores, 3, keep=keep, only_kept=True)
    assert [r["index"] for r in kept] == [8, 6, 5]  # the flips still kept show
    assert "| dropped |" in markdown_table(rows, "loss + validation_influence")


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


# -- images and tables for every logger -------------------------------------------------------
NAMESPACES = pytest.mark.parametrize("namespace", ["pytorch_lightning", "lightning.pytorch"])
HAS_PIL = (
    importlib.util.find_spec("PIL") is not None
)  # the plot and the captions are drawn with Pillow


def loggers_of(namespace: str):
    if namespace == "lightning.pytorch":
        pytest.importorskip("lightning", reason="the unified `lightning` package is not installed")
    return importlib.import_module(f"{namespace}.loggers")


def image_data(n: int = 10) -> list:
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(1, 8, 8, generator=g), i % 2) for i in range(n)]


def decode_png(data: bytes) -> tuple[int, int, int]:
    """(height, width, channels) of an 8-bit PNG, after inflating its pixels and checking their size."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    pos, pixels, header = 8, b"", None
    while pos < len(data):
        length, tag = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        assert (
            zlib.crc32(tag + body)
            == struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        )
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            pixels += body
        pos += 12 + length
    width, height, depth, color = header[:4]
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    assert depth == 8 and len(zlib.decompress(pixels)) == height * (1 + width * channels)
    return height, width, channels


@NAMESPACES
def test_tensorboard_of_either_namespace_gets_histograms_and_images(namespace, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = loggers_of(namespace).TensorBoardLogger(tmp_path, name="tb", version=0)
    log_event([logger], make_event(), image_data(), top_n=4)
    accumulator = EventAccumulator(logger.log_dir)
    accumulator.Reload()
    tags = accumulator.Tags()
    assert {"influence/spectrum", "influence/self_influence"} <= set(tags["histograms"])
    assert "influence/top_examples" in tags["images"]


@NAMESPACES
def test_csv_logger_gets_png_images_and_a_csv_table(namespace, tmp_path):
    logger = loggers_of(namespace).CSVLogger(tmp_path, name="csv", version=0)
    log_event([logger], make_event(), image_data(), top_n=4)
    folder = Path(logger.log_dir) / "media" / "influence" / "epoch=1-step=7"
    height, width, channels = decode_png((folder / "top_examples.png").read_bytes())
    assert channels == 3 and height > 8 and width > 8
    assert (folder / "spectrum_plot.png").is_file() == HAS_PIL
    if HAS_PIL:
        decode_png((folder / "spectrum_plot.png").read_bytes())
    with open(folder / "top_examples.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == [9, 8, 7, 6]  # top_n=4, highest first
    assert float(rows[0]["score"]) == 1.0 and rows[0]["label"] == "1"
    assert not list(folder.glob(".*")), "temporary files left behind"


def test_csv_logger_without_image_inputs_gets_the_table_alone(tmp_path):
    logger = CSVLogger(tmp_path, name="csv", version=0)
    data = [(torch.full((2,), float(i)), i % 3) for i in range(10)]
    log_event([logger], make_event(), data, top_n=3)
    folder = Path(logger.log_dir) / "media" / "influence" / "epoch=1-step=7"
    assert not (folder / "top_examples.png").exists()
    with open(folder / "top_examples.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3


@NAMESPACES
def test_mlflow_file_store_holds_the_images_the_table_and_the_scalars(
    namespace, tmp_path, monkeypatch
):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("PIL", reason="mlflow's log_image needs Pillow")
    # mlflow >= 3.7 refuses the file store unless asked (mlflow-skinny has no database backend)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = loggers_of(namespace).MLFlowLogger(experiment_name="influence", tracking_uri=uri)
    log_event([logger], make_event(), image_data(), top_n=4)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = logger.run_id

    history = client.get_metric_history(run_id, "influence/eigenvalue_0")
    assert [(m.step, m.value) for m in history] == [(7, 4.0)]
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    expected = {"top_examples"} | ({"spectrum_plot"} if HAS_PIL else set())
    for name in expected:
        pngs = [p for p in images if name in p and "step+7" in p and p.endswith(".png")]
        assert len(pngs) == 1, images
        local = client.download_artifacts(run_id, pngs[0], str(tmp_path / "got"))
        assert decode_png(Path(local).read_bytes())[2] == 3
    tables = [a.path for a in client.list_artifacts(run_id, "influence/top_examples")]
    assert tables == ["influence/top_examples/epoch=1-step=7.json"]
    local = client.download_artifacts(run_id, tables[0], str(tmp_path / "got"))
    table = json.loads(Path(local).read_text())
    assert table["columns"] == ["rank", "index", "score", "label", "status", "input"]
    assert [row[1] for row in table["data"]] == [9, 8, 7, 6]


@NAMESPACES
@pytest.mark.timeout(120)
def test_wandb_offline_run_holds_the_media_and_the_table(namespace, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    pytest.importorskip("PIL", reason="wandb.Image needs Pillow")
    for name, value in {
        "WANDB_MODE": "offline",  # no network: the run lives in WANDB_DIR only
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_ANONYMOUS": "never",
    }.items():
        monkeypatch.setenv(name, value)
    logger = loggers_of(namespace).WandbLogger(project="influence", save_dir=tmp_path, offline=True)
    try:
        log_event([logger], make_event(), image_data(), top_n=4)
        run = logger.experiment
        assert run.summary["influence/eigenvalue_0"] == 4.0
        files = Path(run.dir)
    finally:
        wandb.finish()
    media = files / "media"
    expected = {"top_examples"} | ({"spectrum_plot"} if HAS_PIL else set())
    for name in expected:
        pngs = list((media / "images" / "influence").glob(f"{name}_*.png"))
        assert len(pngs) == 1, list(media.rglob("*"))
        assert decode_png(pngs[0].read_bytes())[2] == 3
    (table_file,) = (media / "table" / "influence").glob("top_examples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["rank", "index", "score", "label", "status", "input"]
    assert [row[1] for row in table["data"]] == [9, 8, 7, 6]


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
        # the spectrum plot needs Pillow (the plot extra); the example grid does not
        expected = {"influence/top_examples"}
        if HAS_PIL:
            expected.add("influence/spectrum_plot")
        assert expected <= set(images)
        # the custom-scalars page tells the story without searching tags
        layout = _get_json(f"{base}/custom_scalars/layout")
        titles = [c["title"] for c in layout["category"]]
        # only what the run has: no InfluenceDataModule, no validation set, no pruning charts
        assert titles == ["influence: the spectrum and the signals"]
        charts = {ch["title"] for c in layout["category"] for ch in c["chart"]}
        assert {"top eigenvalues over training", "cost of an analysis (training epochs)"} <= charts
        assert not {"dropped vs known noise", "validation influence (mean, min)"} & charts
        text = _get_json(f"{base}/text/tags")[run]
        assert "influence/top_examples/text_summary" in text  # SummaryWriter.add_text's suffix
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
