"""Influence for a model whose batches are dicts: tabular data and an ``influence_loss`` method.

scikit-learn's bundled breast-cancer data (569 patients, 30 features; no download), with some
training labels flipped. The Dataset yields ``{"features": x, "label": y}``, so batches are dicts
and the ready-made losses (which expect ``(inputs, targets)``) do not apply: the LightningModule
says how one example's loss is computed with

    def influence_loss(self, batch) -> Tensor[B]:   # one loss per example, reduction="none"

``InfluenceCallback`` finds that method by itself (no ``loss_fn`` argument), scores every training
example during training, and the flipped labels rise to the top of the self-influence ranking
``I(x, x) = sum_i w_i <e_i, g_x>^2``. The same method serves ``ArnoldiInfluence`` directly, here
to find the training patients that most support one test prediction.

    python examples/tabular_dict_batches.py
"""

from __future__ import annotations

import argparse

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_influence import ArnoldiInfluence, InfluenceCallback


class Patients(Dataset):
    """One patient per item, as a dict: ``{"features": [30] float, "label": 0 or 1}``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features = torch.tensor(features, dtype=torch.float32)
        self.labels = torch.tensor(labels, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"features": self.features[i], "label": self.labels[i]}


class TabularClassifier(pl.LightningModule):
    def __init__(self, num_features: int = 30, hidden: int = 16, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Flatten(0)
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)  # [B] logits

    def influence_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-example binary cross-entropy: the training loss before the mean."""
        return F.binary_cross_entropy_with_logits(
            self(batch["features"]), batch["label"], reduction="none"
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.influence_loss(batch).mean()  # one definition of the loss for both
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of labels flipped")
    parser.add_argument("--n-iters", type=int, default=60, help="Arnoldi iterations n")
    parser.add_argument("--top-k", type=int, default=20, help="eigenpairs p kept")
    parser.add_argument("--every-n-epochs", type=int, default=10)
    parser.add_argument("--logdir", default="lightning_logs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    features, labels = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.2, random_state=args.seed, stratify=labels
    )
    scaler = StandardScaler().fit(x_train)
    rng = np.random.default_rng(args.seed)
    flipped = rng.random(len(y_train)) < args.noise
    noisy = np.where(flipped, 1 - y_train, y_train)
    train = Patients(scaler.transform(x_train), noisy)
    test = Patients(scaler.transform(x_test), y_test)

    influence = InfluenceCallback(  # no loss_fn: the module's influence_loss is used
        every_n_epochs=args.every_n_epochs,
        n_iters=args.n_iters,
        top_k=args.top_k,
        hvp_samples=None,  # the whole (small) training set
        batch_size=512,  # analysis batches: one per HVP here (training keeps its 32)
    )
    model = TabularClassifier(num_features=features.shape[1])
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        default_root_dir=args.logdir,
        callbacks=[influence],
        enable_model_summary=False,
        log_every_n_steps=5,
    )
    trainer.fit(model, train_dataloaders=DataLoader(train, batch_size=32, shuffle=True))

    # Self-influence by dataset index: the flipped labels should rank high.
    scores = influence.latest_scores()
    n_flipped = int(flipped.sum())
    ranked = scores.argsort(descending=True)[:n_flipped].numpy()
    found = int(flipped[ranked].sum())
    print(f"{len(train)} training patients, {n_flipped} labels flipped")
    print(
        f"among the {n_flipped} most self-influential: {found} flipped "
        f"(a random ranking finds about {n_flipped * n_flipped / len(train):.1f})"
    )
    print(
        f"events written under {trainer.log_dir}/influence/: {[e.name for e in influence.events]}"
    )

    # The same influence_loss for ArnoldiInfluence: who supports the prediction on test patient 0?
    engine = ArnoldiInfluence(
        model, lambda m, batch: m.influence_loss(batch), n_iters=args.n_iters, top_k=args.top_k
    )
    engine.fit(DataLoader(train, batch_size=512))
    top = engine.top_influences(
        DataLoader(train, batch_size=512), DataLoader(torch.utils.data.Subset(test, [0])), k=5
    )
    print(f"test patient 0 (label {int(test[0]['label'])}):")
    for name, indices, values in (
        ("proponents", top.proponents[0], top.proponent_scores[0]),
        ("opponents", top.opponents[0], top.opponent_scores[0]),
    ):
        rows = [
            f"#{i} (label {int(train[i]['label'])}{', flipped' if flipped[i] else ''}) {v:+.3g}"
            for i, v in zip(indices.tolist(), values.tolist(), strict=True)
        ]
        print(f"  {name}: " + "; ".join(rows))


if __name__ == "__main__":
    main()
