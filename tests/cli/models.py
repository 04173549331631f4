"""A tiny LightningModule and DataModule importable by class path (``tests.cli.models.*``),
for the command-line tests: the CLI imports them the way a user's project would be imported."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

SIDE, C = 4, 3  # inputs are SIDE x SIDE "images" (or flat vectors), C classes


class TinyImages(Dataset):
    """Fixed random inputs; labels from a linear rule with the first three flipped."""

    def __init__(self, n: int, seed: int, image: bool) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, SIDE * SIDE, generator=g)
        self.y = (
            self.x @ torch.randn(SIDE * SIDE, C, generator=torch.Generator().manual_seed(99))
        ).argmax(1)
        self.y[:3] = (self.y[:3] + 1) % C
        if image:
            self.x = self.x.reshape(n, 1, SIDE, SIDE)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class TinyData(pl.LightningDataModule):
    def __init__(self, n: int = 40, batch_size: int = 8, image: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.n, self.batch_size, self.image = n, batch_size, image

    def setup(self, stage: str) -> None:
        self.train = TinyImages(self.n, 0, self.image)
        self.test = TinyImages(10, 1, self.image)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, batch_size=self.batch_size)


class TinyClassifier(pl.LightningModule):
    def __init__(self, hidden: int = 8, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(SIDE * SIDE, hidden), nn.Tanh(), nn.Linear(hidden, C)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class WithInfluenceLoss(TinyClassifier):
    """Defines ``influence_loss``, so ``--loss auto`` (the default) needs nothing more."""

    def influence_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y, reduction="none")


class NoHparams(pl.LightningModule):
    """Does not save its init arguments: the CLI must be given them."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(SIDE * SIDE, hidden), nn.Tanh(), nn.Linear(hidden, C)
        )

    def forward(self, x):
        return self.net(x)
