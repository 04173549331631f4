"""The noisy-label demo end to end, with tiny settings (its figures come from the full run)."""

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
    assert pruned.dropped is not None and int(pruned.dropped.sum()) == int(0.2 * 1257)
    assert results[0]["noisy"].dropped is None
    for text in ("top of the spectrum", "by self-influence: precision", "by loss (baseline)",
                 "test accuracy", "pruning recovers", "tensorboard --logdir"):  # fmt: skip
        assert text in out
    assert list(
        (tmp_path / "seed0" / "pruned" / "influence").glob("arnoldi-*/epoch=0-step=40/dropped.csv")
    )
