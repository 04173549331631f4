"""The noisy-label demo end to end, with tiny settings (its figures come from the full run)."""

import re

from lightning_influence import demo


def test_demo_runs_every_arm_and_reports(tmp_path, capsys):
    results = demo.run(
        [
            "--epochs", "2",
            "--score-every", "1",
            "--n-iters", "6",
            "--top-k", "3",
            "--hvp-samples", "64",
            "--seeds", "0",
            "--logdir", str(tmp_path),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert set(results[0]) == set(demo.ARMS)
    pruned = results[0]["pruned"]
    assert pruned.dropped is not None and int(pruned.dropped.sum()) == int(0.2 * 1077)
    assert results[0]["noisy"].dropped is None
    # the default (a validation set is there, and the wrapper's sampler records the AUM) beside
    # the loss, the AUM and self-influence, each with its average precision
    assert "default: aum + validation_influence_min" in out
    for name in ("loss", "aum", "self_influence"):
        assert re.search(rf"\n  {name} +AP 0\.\d{{3}}   precision of the top 215 \d\.\d\d", out)
    for text in ("top of the spectrum", "180 clean validation digits", "training epochs)",
                 "test accuracy", "pruning recovers", "tensorboard --logdir"):  # fmt: skip
        assert text in out
    pattern = "arnoldi-*/epoch=0-step=34/dropped.csv"
    assert list((tmp_path / "seed0" / "pruned" / "version_0" / "influence").glob(pattern))


def test_a_second_run_writes_a_new_version_beside_the_first(tmp_path, capsys):
    argv = ["--epochs", "1", "--score-every", "1", "--n-iters", "6", "--top-k", "3",
            "--hvp-samples", "64", "--arms", "pruned", "--logdir", str(tmp_path)]  # fmt: skip
    demo.run(argv)
    demo.run(argv)  # the events of the first run stay; no refusal to write over them
    runs = sorted(p.name for p in (tmp_path / "seed0" / "pruned").iterdir())
    assert runs == ["version_0", "version_1"]
    for run in runs:
        assert list((tmp_path / "seed0" / "pruned" / run / "influence").glob("arnoldi-*/epoch=0-*"))


def test_lightnings_banners_are_dropped_and_our_messages_kept():
    import logging

    def record(path: str, level: int = logging.INFO) -> logging.LogRecord:
        return logging.LogRecord("x", level, path, 1, "message", None, None)

    from lightning_influence.demo.run import _drop_trainer_banners as drop

    assert not drop(record("/env/site-packages/pytorch_lightning/trainer/setup.py"))
    assert not drop(record("/env/site-packages/lightning/pytorch/trainer/connectors/x.py"))
    assert drop(record("/env/site-packages/pytorch_lightning/trainer/setup.py", logging.WARNING))
    assert drop(record("/repo/lightning_influence/lightning/datamodule.py"))
