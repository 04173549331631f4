import json

import pandas as pd
import pytest
import torch

from lightning_influence.io.events import ScoringEvent, latest_event_dir, read_event, write_event


def _event(epoch=1, step=10, n=6):
    return ScoringEvent(
        epoch=epoch,
        global_step=step,
        self_influence=torch.rand(n, dtype=torch.float64),
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
        "self_influence.csv",
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
    frame = pd.read_csv(folder / "self_influence.csv", index_col="index")
    assert frame["self_influence"].tolist() == event.self_influence.tolist()


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
