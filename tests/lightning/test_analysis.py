"""The one pipeline: the callback, ``analyze_checkpoint`` and the CLI write the same bytes.

A real Trainer run with the callback saves its last checkpoint; the same checkpoint is analysed
again by ``analyze_checkpoint`` and by ``lightning-influence score``. All three go through
``run_analysis`` and must write byte-identical ``signals.csv`` and ``eigenvalues.csv``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from lightning_influence import AnalysisConfig, InfluenceCallback
from lightning_influence.cli import main
from lightning_influence.config import ConfigurationError
from lightning_influence.lightning.analysis import hvp_indices
from lightning_influence.lightning.offline import analyze_checkpoint
from lightning_influence.losses import cross_entropy_loss
from tests.cli.models import TinyClassifier, TinyData

ENGINE = {"n_iters": 12, "top_k": 5, "hvp_samples": 24, "projection": "grad"}
FLAGS = ["--n-iters", "12", "--top-k", "5", "--hvp-samples", "24", "--projection", "grad"]
MODEL = ["--model", "tests.cli.models.TinyClassifier", "--data", "tests.cli.models.TinyData"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    pl.seed_everything(0, verbose=False)
    callback = InfluenceCallback(cross_entropy_loss, every_n_epochs=0, progress=False, **ENGINE)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=CSVLogger(root, name="logs", version=0),
        callbacks=[callback, ModelCheckpoint(save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = TinyData(image=True)
    trainer.fit(TinyClassifier(hidden=8), datamodule=data)
    ckpt = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"
    return {"root": root, "ckpt": ckpt, "callback": callback, "data": data}


def test_callback_analyze_checkpoint_and_cli_write_identical_files(trained, tmp_path):
    callback = trained["callback"]
    event = callback.latest_event
    assert event.manifest["trigger"] == "train_end"
    ours = Path(event.directory)

    data = TinyData(image=True)
    data.setup("fit")
    offline = analyze_checkpoint(
        trained["ckpt"],
        TinyClassifier,
        data.train_dataloader(),
        loss_fn=cross_entropy_loss,
        dirpath=tmp_path / "offline",
        progress=False,
        **ENGINE,
    )
    argv = ["score", "--ckpt", trained["ckpt"], *MODEL, "--data.image", "true", "--loss",
            "cross_entropy", *FLAGS, "--no-progress", "--device", "cpu", "--out", tmp_path / "cli"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0

    # the same arguments give the same name, and the checkpoint names the same (epoch, step)
    offline_dir = tmp_path / "offline" / callback.name / event.name
    cli_dir = tmp_path / "cli" / callback.name / event.name
    assert Path(offline.directory) == offline_dir
    for file in ("signals.csv", "eigenvalues.csv"):
        expected = (ours / file).read_bytes()
        assert (offline_dir / file).read_bytes() == expected, file
        assert (cli_dir / file).read_bytes() == expected, file

    # the manifest on disk is complete: the checkpoint path (written before, not after, the file),
    # every argument, one spelling of the precision
    for folder in (offline_dir, cli_dir):
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["checkpoint"] == str(trained["ckpt"])
        assert manifest["precision"] == "32-true"
        assert manifest["uid"] and manifest["name"] == callback.name
    trained_manifest = json.loads((ours / "manifest.json").read_text())
    assert trained_manifest["precision"] == "32-true"
    arguments = trained_manifest["arguments"]
    for field in ("num_workers", "on_error", "max_events", "every_n_epochs", "hvp_samples"):
        assert field in arguments


def test_a_name_reused_with_other_arguments_is_refused(trained, tmp_path):
    callback = trained["callback"]
    data = TinyData(image=True)
    data.setup("fit")
    with pytest.raises(ConfigurationError, match=r"other arguments .*top_k=5 there vs 4 here"):
        analyze_checkpoint(
            trained["ckpt"],
            TinyClassifier,
            data.train_dataloader(),
            loss_fn=cross_entropy_loss,
            dirpath=Path(callback.latest_event.directory).parent.parent,
            name=callback.name,
            progress=False,
            **{**ENGINE, "top_k": 4},
        )
    # nothing was written over
    again = json.loads((Path(callback.latest_event.directory) / "manifest.json").read_text())
    assert again["uid"] == callback.latest_event.uid


def test_hvp_sample_is_seeded_and_sorted():
    a = hvp_indices(100, 10, seed=3)
    assert a.tolist() == sorted(a.tolist()) and len(set(a.tolist())) == 10
    assert a.tolist() == hvp_indices(100, 10, seed=3).tolist()
    assert hvp_indices(100, None, seed=3).tolist() == list(range(100))
    assert AnalysisConfig.fast().n_iters == 50 and AnalysisConfig.paper().hvp_samples is None


def test_cli_score_streams_shards_and_resumes_an_interrupted_run(trained, tmp_path):
    callback = trained["callback"]
    event = callback.latest_event
    base = ["score", "--ckpt", trained["ckpt"], *MODEL, "--data.image", "true", "--loss",
            "cross_entropy", *FLAGS, "--no-progress", "--device", "cpu", "--out", tmp_path,
            "--shard-batches", "1"]  # fmt: skip
    assert main([str(a) for a in base]) == 0
    folder = tmp_path / callback.name / event.name  # shard_batches is not in the name
    expected = (Path(event.directory) / "signals.csv").read_bytes()
    assert (folder / "signals.csv").read_bytes() == expected
    scores = folder / "scores"
    shards = sorted((scores / "rank-0-of-1").glob("shard-*.csv"))
    assert len(shards) == 5  # 40 examples, batches of 8
    saved = folder / "eigenpairs.safetensors"
    fitted_at = saved.stat().st_mtime_ns

    # an interrupted run: the eigenpairs and two shards were written, then the process died
    for shard in shards[2:]:
        shard.unlink()
    (folder / "signals.csv").unlink()
    (folder / "manifest.json").unlink()
    assert main([str(a) for a in [*base, "--resume"]]) == 0
    assert (folder / "signals.csv").read_bytes() == expected
    assert saved.stat().st_mtime_ns == fitted_at  # the saved eigenpairs were used, not refitted
    assert len(list((scores / "rank-0-of-1").glob("shard-*.csv"))) == 5

    # a complete event of these weights and arguments is reused, never written over
    uid = json.loads((folder / "manifest.json").read_text())["uid"]
    assert main([str(a) for a in base]) == 0
    assert json.loads((folder / "manifest.json").read_text())["uid"] == uid
    assert saved.stat().st_mtime_ns == fitted_at

    # an interrupted analysis without --resume starts over
    (folder / "manifest.json").unlink()
    assert main([str(a) for a in base]) == 0
    assert saved.stat().st_mtime_ns != fitted_at
    assert (folder / "signals.csv").read_bytes() == expected
