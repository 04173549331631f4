"""Down-weight suspect labels while training, then start a fresh run pruned from the first epoch.

Two ways of using ``InfluenceDataModule`` that ``python -m lightning_influence.demo`` does not show,
on scikit-learn's digits with 20% of the training labels flipped:

1. ``mode="reweight"``: after each ``InfluenceCallback`` analysis the following epochs draw every
   training example with probability proportional to

       w_i = floor + (1 - floor) * sigmoid((1 - fraction - u_i) / temperature)

   (``u_i``: the quantile of example i's self-influence), so suspects are seen rarely, not never.
2. ``scores=<the first run's log dir>``: a new run reads the newest scoring event written there and
   trains on the kept set from epoch 0 (``mode="drop"``), without scoring anything itself.

    python examples/noisy_labels.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_influence import InfluenceCallback, InfluenceDataModule
from lightning_influence.demo import DigitsCNN, DigitsData, load
from lightning_influence.losses import cross_entropy_loss


def fit(dm: InfluenceDataModule, args, name: str, callbacks=()) -> tuple[pl.Trainer, float]:
    pl.seed_everything(args.seed, verbose=False)
    model = DigitsCNN()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=list(callbacks),
        logger=TensorBoardLogger(args.logdir, name=name),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, datamodule=dm)
    accuracy = trainer.test(model, datamodule=dm, verbose=False)[0]["test/accuracy"]
    return trainer, accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every-n-epochs", type=int, default=8)
    parser.add_argument("--n-iters", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logdir", default="influence_logs/noisy_labels")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load(noise=0.2, seed=args.seed)
    flipped = data.flipped

    # 1. reweight while training
    reweighted = InfluenceDataModule(
        DigitsData(data), mode="reweight", fraction=0.2, temperature=0.05, floor=0.02, seed=0
    )
    callback = InfluenceCallback(
        cross_entropy_loss,
        every_n_epochs=args.every_n_epochs,
        n_iters=args.n_iters,
        top_k=args.top_k,
        hvp_samples=512,
    )
    trainer, accuracy = fit(reweighted, args, "reweight", [callback])
    w = reweighted.sampling_weights
    assert w is not None
    print(f"{int(flipped.sum())} of {len(flipped)} training labels flipped")
    print(
        f"reweight: mean weight {w[flipped].mean():.3f} on flipped labels, "
        f"{w[~flipped].mean():.3f} on the others; effective size "
        f"{float(w.sum() ** 2 / (w**2).sum()):.0f}; test accuracy {accuracy:.4f}"
    )
    written = [Path(e.directory, "weights.csv") for e in callback.events]
    print(f"the weights of the last epoch: {[p for p in written if p.exists()][-1]}")

    # 2. a fresh run seeded from the first run's score files, pruned from its first epoch
    seeded = InfluenceDataModule(
        DigitsData(data), mode="drop", fraction=0.2, scores=trainer.log_dir
    )
    _, accuracy = fit(seeded, args, "seeded")
    dropped = ~seeded.keep_mask
    hits = int((dropped & flipped).sum())
    print(
        f"seeded from {seeded.seed_events[0].directory}: dropped {int(dropped.sum())} from epoch 0, "
        f"{hits} of them flipped (precision {hits / int(dropped.sum()):.2f}, recall "
        f"{hits / int(flipped.sum()):.2f}); test accuracy {accuracy:.4f}"
    )


if __name__ == "__main__":
    main()
