import json

import pandas as pd
import pytest
import torch

from lightning_influence.config import ConfigurationError
from lightning_influence.io.events import (
    EventRef,
    ScoringEvent,
    check_event_folder,
    latest_event_dir,
    read_event,
    write_event,
)


def _event(epoch=1, step=10, n=6):
    return ScoringEvent(
        epoch=epoch,
        global_step=step,
        signals={
            "self_influence": torch.rand(n, dtype=torch.float64),
            "validation_influence": torch.randn(n, dtype=torch.float64),
        },
        eigenvalues=torch.tensor([3.0, -1.0], dtype=torch.float64),
        residuals=torch.tensor([1e-9, 1e-3], dtype=torch.float64),
        manifest={"n_iters": 20},
    )


def test_round_trip_and_layout(tmp_path):
    event = _event()
    folder = write_event(event, tmp_path)
    assert folder.name == "epoch=1-step=10" and event.directory == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "eigenvalues.csv",
        "manifest.json",
        "signals.csv",
    ]
    back = read_event(folder)
    assert torch.equal(
        back.self_influence, event.self_influence
    )  # repr() of floats round-trips exactly
    assert torch.equal(back.eigenvalues, event.eigenvalues) and torch.equal(
        back.residuals, event.residuals
    )
    assert (
        back.manifest["n_iters"] == 20
        and json.loads((folder / "manifest.json").read_text())["epoch"] == 1
    )
    frame = pd.read_csv(folder / "signals.csv", index_col="index")
    assert frame["self_influence"].tolist() == event.self_influence.tolist()
    assert list(frame.columns) == ["self_influence", "validation_influence"]
    torch.testing.assert_close(back.signals, event.signals, rtol=0, atol=0)
    # the manifest names the signals and hashes the files
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["signals"] == ["self_influence", "validation_influence"]
    assert set(manifest["files"]) == {"signals.csv", "eigenvalues.csv"}


def test_a_folder_written_before_signals_existed_still_reads(tmp_path):
    folder = tmp_path / "epoch=2-step=20"
    folder.mkdir()
    (folder / "self_influence.csv").write_text("index,self_influence\n0,0.5\n1,2.0\n")
    (folder / "eigenvalues.csv").write_text("rank,eigenvalue,residual\n0,3.0,0.001\n")
    (folder / "manifest.json").write_text(json.dumps({"uid": "old", "epoch": 2, "global_step": 20}))
    event = read_event(folder)
    assert list(event.signals) == ["self_influence"]
    assert event.self_influence.tolist() == [0.5, 2.0] and event.uid == "old"


def test_a_reference_resolves_to_the_event_and_notices_changes(tmp_path):
    event = _event()
    write_event(event, tmp_path)
    ref = EventRef.from_state_dict(event.ref().state_dict())
    assert ref.resolve().uid == event.uid and ref.sha256
    with pytest.raises(KeyError, match="holds no signal 'aum'; it holds self_influence"):
        event.signal("aum")
    # the folder written over by another event: refused
    other = _event()
    write_event(other, tmp_path)
    with pytest.raises(ValueError, match=r"not the event .* the checkpoint refers to"):
        ref.resolve()
    # the signals edited by hand: refused
    same = EventRef(other.uid, other.directory, 1, 10, sha256="0" * 64)
    with pytest.raises(ValueError, match="changed since the checkpoint was saved"):
        same.resolve()
    # the folder gone: a message that says what the checkpoint needs
    gone = EventRef("x", str(tmp_path / "missing"), 1, 10)
    with pytest.raises(FileNotFoundError, match="keep the run's influence/ folder"):
        gone.resolve()


def test_an_event_of_other_weights_is_never_written_over(tmp_path):
    event = _event()
    event.manifest["weights_sha256"] = "a" * 64
    event.manifest["arguments"] = {}
    folder = write_event(event, tmp_path)
    check_event_folder(folder, {}, "a" * 64)  # the same weights: the same event, allowed
    with pytest.raises(ConfigurationError, match="holds an event of other weights"):
        check_event_folder(folder, {}, "b" * 64)


def test_latest_event_and_incomplete_folders(tmp_path):
    write_event(_event(1, 10), tmp_path)
    write_event(_event(3, 30), tmp_path)
    (tmp_path / "epoch=9-step=90").mkdir()  # no manifest: an interrupted write, ignored
    assert latest_event_dir(tmp_path).name == "epoch=3-step=30"
    with pytest.raises(FileNotFoundError, match=r"manifest\.json is missing"):
        read_event(tmp_path / "epoch=9-step=90")
    with pytest.raises(FileNotFoundError, match="no complete scoring event"):
        latest_event_dir(tmp_path / "nothing")


def test_failed_write_leaves_no_partial_file(tmp_path):
    event = _event()
    event.manifest = {"bad": object()}
    event.manifest["bad"] = float("nan")
    folder = write_event(event, tmp_path)  # NaN is written as NaN, not a crash
    assert not list(folder.glob(".*.tmp"))

    class Exploding:
        def __str__(self):
            raise RuntimeError("boom")

    broken = _event(2, 20)
    broken.manifest = {"x": Exploding()}
    with pytest.raises(RuntimeError, match="boom"):
        write_event(broken, tmp_path)
    folder = tmp_path / "epoch=2-step=20"
    assert not (folder / "manifest.json").exists()  # the event is not marked complete
    assert not list(folder.glob(".*.tmp"))  # and no temporary file is left behind


def test_state_dict_round_trip():
    event = _event()
    again = ScoringEvent.from_state_dict(event.state_dict())
    assert torch.equal(again.self_influence, event.self_influence) and again.name == event.name
