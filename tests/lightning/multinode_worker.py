"""One "node" of the two-node test (``test_multinode.py``): run as a separate process with
NODE_RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as a cluster launcher would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from lightning_influence import InfluenceCallback, InfluenceDataModule
from lightning_influence.losses import cross_entropy_loss
from tests.cli.models import TinyClassifier, TinyData


class Record(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        influence = next(c for c in trainer.callbacks if isinstance(c, InfluenceCallback))
        torch.save(
            {
                "events": [e.state_dict() for e in influence.events],
                "world_size": trainer.world_size,
                "rank": trainer.global_rank,
                "keep": trainer.datamodule.keep_mask,
                "weights": pl_module.state_dict(),
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )


def main(out: str) -> None:
    root = Path(out)
    pl.seed_everything(0, verbose=False)
    callback = InfluenceCallback(
        cross_entropy_loss,
        n_iters=10,
        top_k=4,
        restart_tol=None,  # the engine's Arnoldi, which the test compares with
        hvp_samples=20,
        shard_batches=2,
        progress=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        strategy="ddp",
        max_epochs=2,
        callbacks=[callback, Record(root)],
        logger=CSVLogger(root, name="logs", version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = InfluenceDataModule(TinyData(n=41, image=True), fraction=0.2)
    trainer.fit(TinyClassifier(hidden=8), datamodule=data)
    # Lightning leaves the process group up; left to interpreter shutdown, gloo's threads once
    # aborted a node ("terminate called without an active exception", SIGABRT) after it finished
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
