"""The ``lightning-influence`` command line on a checkpoint made here by a real Trainer run.

The CLI runs in-process through ``main(argv)`` (and once as ``python -m lightning_influence``);
the models are imported by class path from ``tests/cli/models.py``, as a user's project would be.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from lightning_influence import InfluenceCallback
from lightning_influence.cli import main
from lightning_influence.cli.commands import _convergence_summary
from lightning_influence.cli.loading import split_init_args
from lightning_influence.config import AnalysisConfig
from lightning_influence.io.events import read_event
from lightning_influence.losses import cross_entropy_loss
from tests.cli.models import TinyClassifier, TinyData

ROOT = Path(__file__).resolve().parents[1]
ENGINE = {"n_iters": 12, "top_k": 5, "hvp_samples": 24, "projection": "grad"}
FLAGS = ["--n-iters", "12", "--top-k", "5", "--hvp-samples", "24", "--projection", "grad"]
FLAGS += ["--no-progress", "--device", "cpu"]
MODEL = ["--model", "tests.cli.models.TinyClassifier", "--data", "tests.cli.models.TinyData"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train 2 epochs with the callback analysing at the end; keep the last checkpoint."""
    root = tmp_path_factory.mktemp("run")
    pl.seed_everything(0, verbose=False)
    callback = InfluenceCallback(
        cross_entropy_loss, every_n_epochs=0, progress=False, log_top_n=0, **ENGINE
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=CSVLogger(root, name="logs", version=0),
        callbacks=[callback, ModelCheckpoint(save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(TinyClassifier(hidden=8), datamodule=TinyData(image=True))
    ckpt = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    # The same weights without saved init arguments (a module without save_hyperparameters).
    checkpoint = torch.load(ckpt, weights_only=False)
    del checkpoint["hyper_parameters"], checkpoint["datamodule_hyper_parameters"]
    bare = ckpt.parent / "bare" / "epoch=1-step=10.ckpt"
    bare.parent.mkdir()
    torch.save(checkpoint, bare)
    return {
        "root": root,
        "ckpt": ckpt,
        "bare": bare,
        "event": callback.latest_event,
        "name": callback.name,
    }


def cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_score_gives_the_callbacks_scores(run, tmp_path, capsys):
    out = tmp_path / "influence"
    assert (
        cli("score", "--ckpt", run["ckpt"], *MODEL, "--loss", "cross_entropy", *FLAGS, "--out", out)
        == 0
    )

    expected = run["event"]
    # the callback's folder: same arguments, same name; named by the checkpoint's epoch and step
    folder = out / run["name"] / expected.name
    event = read_event(folder)
    torch.testing.assert_close(event.self_influence, expected.self_influence, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(event.eigenvalues, expected.eigenvalues, rtol=1e-6, atol=1e-9)
    assert event.manifest["trigger"] == "checkpoint"
    assert event.manifest["arguments"]["n_iters"] == 12
    printed = capsys.readouterr().out
    assert str(folder) in printed and "most self-influential" in printed


def test_score_default_folder_and_lightningcli_config(run, capsys):
    config = run["root"] / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "class_path": "tests.cli.models.TinyClassifier",
                    "init_args": {"hidden": 8},
                },
                "data": {"class_path": "tests.cli.models.TinyData", "init_args": {"image": True}},
            }
        )
    )
    code = cli(
        "score", "--config", config, "--ckpt", run["ckpt"], "--loss", "cross_entropy", *FLAGS
    )
    assert code == 0
    # Into the training run's own event: <log_dir>/influence/<name>/epoch=E-step=S.
    folder = run["ckpt"].parent.parent / "influence" / run["name"] / run["event"].name
    torch.testing.assert_close(
        read_event(folder).self_influence, run["event"].self_influence, rtol=1e-6, atol=1e-9
    )


def test_influence_loss_method_is_used_by_default(run, tmp_path):
    model = ["--model", "tests.cli.models.WithInfluenceLoss", "--data", "tests.cli.models.TinyData"]
    tensorboard = tmp_path / "tb"
    argv = ["--out", tmp_path, "--tensorboard", tensorboard]
    assert cli("score", "--ckpt", run["ckpt"], *model, *FLAGS, *argv) == 0
    assert list(tensorboard.glob("influence/version_0/events.out.tfevents.*"))
    (folder,) = tmp_path.glob(f"arnoldi-*/{run['event'].name}")
    event = read_event(folder)
    torch.testing.assert_close(
        event.self_influence, run["event"].self_influence, rtol=1e-6, atol=1e-9
    )
    assert event.manifest["arguments"]["loss_fn"] == "influence_loss"


def test_spectrum_matches_score_and_reads_events(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")  # --plot / --image (the plot extra)
    table = tmp_path / "spectrum.csv"
    assert (
        cli(
            "spectrum",
            "--ckpt",
            run["ckpt"],
            *MODEL,
            "--loss",
            "cross_entropy",
            *FLAGS,
            "--csv",
            table,
            "--plot",
            tmp_path / "s.png",
        )
        == 0
    )
    with open(table) as handle:
        rows = list(csv.DictReader(handle))
    values = torch.tensor([float(r["eigenvalue"]) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(values, run["event"].eigenvalues, rtol=1e-5, atol=1e-9)
    assert (tmp_path / "s.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "relative_residual" in printed and "5 eigenvalues" in printed
    # judged at the tolerance the thick-restart fit aimed at (the default 5e-2), not at 1e-2
    tol = AnalysisConfig().restart_tol
    summary = f"with relative residual >= {tol:g} (the restart_tol of this thick-restart fit)"
    assert summary in printed

    event_dir = run["ckpt"].parent.parent / "influence" / run["name"] / run["event"].name
    assert cli("spectrum", "--event", event_dir) == 0
    printed = capsys.readouterr().out
    assert f"{run['event'].eigenvalues[0].item():.6g}" in printed
    assert summary in printed


def test_spectrum_summary_judges_by_the_fits_target():
    lam = torch.tensor([4.0, -2.0, 1.0], dtype=torch.float64)
    relative = torch.tensor([1e-9, 0.03, 0.2], dtype=torch.float64)
    restarted = _convergence_summary(lam, relative, "lanczos", 0.05)
    assert restarted.startswith("3 eigenvalues, 1 negative; 1 with relative residual >= 0.05 ")
    assert "product limit" in restarted and "raise --n-iters" in restarted
    converged = _convergence_summary(lam, relative, "lanczos", 0.5)
    assert "0 with relative residual >= 0.5" in converged and "raise" not in converged
    fixed = _convergence_summary(lam, relative, "arnoldi", None)
    assert "2 with relative residual >= 0.01 (raise --n-iters" in fixed
    # an event that does not name its solver (older manifests): the fixed 1e-2 yardstick
    assert _convergence_summary(lam, relative, None, 0.05) == fixed


def test_explain_table_csv_and_picture(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")  # --plot / --image (the plot extra)
    table, picture = tmp_path / "why.csv", tmp_path / "why.png"
    code = cli(
        "explain", "--ckpt", run["ckpt"], *MODEL, "--loss", "cross_entropy", *FLAGS,
        "--examples", "0", "4", "-k", "3", "--csv", table, "--image", picture,
    )  # fmt: skip
    assert code == 0
    with open(table) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 3  # 2 examples x (proponents, opponents) x k
    for example in ("0", "4"):
        pro = [
            float(r["influence"]) for r in rows if r["test"] == example and r["kind"] == "proponent"
        ]
        con = [
            float(r["influence"]) for r in rows if r["test"] == example and r["kind"] == "opponent"
        ]
        assert pro == sorted(pro, reverse=True) and con == sorted(con)
        assert pro[0] > 0 > con[0]
    assert picture.stat().st_size > 1000
    printed = capsys.readouterr()
    assert "proponent" in printed.out
    # the training run's event of this checkpoint saved its eigenpairs: no refit
    assert "reusing the eigenpairs saved in" in printed.err


# -- init arguments ------------------------------------------------------------------------------
def test_init_args_in_lightningcli_spelling():
    rest, found = split_init_args(
        ["score", "--model.init_args.hidden", "32", "--model.lr=0.5", "--data.init_args.image", "true",
         "--data.sizes", "[1, 2]", "--ckpt", "x"]
    )  # fmt: skip
    assert rest == ["score", "--ckpt", "x"]
    assert found == {"model": {"hidden": 32, "lr": 0.5}, "data": {"image": True, "sizes": [1, 2]}}


def test_init_args_for_a_module_without_saved_hyperparameters(run, tmp_path):
    model = ["--model", "tests.cli.models.NoHparams", "--data", "tests.cli.models.TinyData"]
    args = [
        "score",
        "--ckpt",
        run["bare"],
        *model,
        "--loss",
        "cross_entropy",
        *FLAGS,
        "--out",
        tmp_path,
    ]
    assert cli(*args, "--model.init_args.hidden", "8", "--data.image", "true") == 0
    assert (tmp_path / run["name"] / run["event"].name / "signals.csv").is_file()


# -- errors: exit code 2 and one line naming the problem and the fix -----------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--ckpt", "{dir}/nope.ckpt", *MODEL], ["--ckpt", "no such file", "last.ckpt"]),
        (["--ckpt", "{ckpt}", "--model", "tests.no_such_module.Model", "--data", "tests.cli.models.TinyData"],
         ["--model 'tests.no_such_module.Model'", "cannot import module", "PYTHONPATH"]),
        (["--ckpt", "{ckpt}", "--model", "tests.cli.models.Nope", "--data", "tests.cli.models.TinyData"],
         ["has no 'Nope'", "TinyClassifier"]),
        (["--ckpt", "{ckpt}", "--model", "tests.cli.models.TinyData", "--data", "tests.cli.models.TinyData"],
         ["is not a LightningModule subclass"]),
        (["--ckpt", "{ckpt}", *MODEL, "--model.init_args.hidden", "16"],
         ["does not fit TinyClassifier", "shape mismatch net.1.weight (8, 16) in the checkpoint vs (16, 16)",
          "--model.init_args.NAME"]),
        (["--ckpt", "{bare}", "--model", "tests.cli.models.NoHparams", "--data", "tests.cli.models.TinyData"],
         ["NoHparams() failed", "hidden", "--model.init_args.NAME VALUE"]),
        # the DataModule's arguments are not in the checkpoint: its defaults may be other data
        (["--ckpt", "{bare}", "--model", "tests.cli.models.NoHparams", "--model.hidden", "8",
          "--data", "tests.cli.models.TinyData"],
         ["does not record the init arguments of TinyData", "--data.init_args.NAME", "--data-defaults"]),
        (["--ckpt", "{ckpt}", *MODEL, "--model.init_args.width", "3"], ["unexpected keyword argument 'width'"]),
        (["--ckpt", "{ckpt}", *MODEL], ["TinyClassifier has no influence_loss", "--loss cross_entropy"]),
        (["--ckpt", "{ckpt}", *MODEL, "--loss", "cross_entropy", "--top-k", "50", "--n-iters", "10"],
         ["--top-k 50 exceeds --n-iters 10"]),
        (["--ckpt", "{root}/config.yaml", *MODEL], ["could not be read as a torch checkpoint"]),
        (["--ckpt", "{ckpt}", "--data", "tests.cli.models.TinyData"], ["no LightningModule: pass --model"]),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_the_fix(run, capsys, argv, expected):
    (run["root"] / "config.yaml").write_text("model: {}\n")
    argv = [
        a.format(dir=run["ckpt"].parent, ckpt=run["ckpt"], bare=run["bare"], root=run["root"])
        for a in argv
    ]
    assert cli("score", *argv, "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-influence score: error: ") and "\n" not in err
    for part in expected:
        assert part in err


def test_explain_errors(run, capsys, monkeypatch):
    base = ["explain", "--ckpt", run["ckpt"], *MODEL, "--loss", "cross_entropy", *FLAGS]
    assert cli(*base, "--examples", "10") == 2
    assert (
        "--examples 10: out of range for the test split, which has 10 examples"
        in capsys.readouterr().err
    )
    assert cli(*base, "--split", "val") == 2
    assert (
        "TinyData has no val_dataloader(): define it, or choose another split"
        in capsys.readouterr().err
    )
    if importlib.util.find_spec("matplotlib") is not None:
        flat = ["explain", "--ckpt", run["ckpt"], "--model", "tests.cli.models.TinyClassifier",
                "--data", "tests.cli.models.TinyData", "--data.image", "false", "--loss",
                "cross_entropy", *FLAGS, "--image", str(run["root"] / "x.png")]  # fmt: skip
        assert cli(*flat) == 2  # refused before the fit, not after it
        err = capsys.readouterr().err
        assert "--image: the test split's inputs are not images" in err and "Arnoldi" not in err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if matplotlib were not installed
    assert cli(*base, "--image", "x.png") == 2
    assert (
        "--image needs matplotlib: pip install 'lightning-influence[plot]'"
        in capsys.readouterr().err
    )


def test_analysis_failure_is_one_line_exit_1_and_debug_raises(run, capsys):
    # mse_loss on class-index targets: the loss does not fit the batches.
    argv = ["spectrum", "--ckpt", run["ckpt"], *MODEL, "--loss", "mse", *FLAGS]
    assert cli(*argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lightning-influence spectrum: error: the analysis failed with ")
    assert err.endswith("(--debug shows the traceback)") and "\n" not in err
    with pytest.raises(RuntimeError):
        cli(*argv, "--debug")


def test_config_with_a_fit_section_and_init_args_only(run, tmp_path, capsys):
    # LightningCLI(TinyClassifier) writes the module's init arguments directly under model:.
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "fit": {
                    "model": {"hidden": 8},
                    "data": {
                        "class_path": "tests.cli.models.TinyData",
                        "init_args": {"image": True},
                    },
                    "ckpt_path": str(run["ckpt"]),
                }
            }
        )
    )
    argv = ["spectrum", "--config", config, "--model", "tests.cli.models.TinyClassifier"]
    assert cli(*argv, "--loss", "cross_entropy", *FLAGS) == 0
    first = capsys.readouterr().out.splitlines()[1].split()
    assert float(first[1]) == pytest.approx(run["event"].eigenvalues[0].item(), rel=1e-5)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--n-iters", "zero"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--model.init_args.hidden"])
    assert exit_info.value.code == 2
    assert "--model.init_args.hidden needs a value" in capsys.readouterr().err


def test_help_as_a_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "lightning_influence", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for part in ("score", "explain", "spectrum", "examples:", "--model.init_args.hidden"):
        assert part in result.stdout


def test_subcommand_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "proponents" in text and "--model.init_args.NAME" in text and "examples:" in text
