"""The demo's model: a small CNN for 8x8 digits, shared by the demo, the examples, the benchmarks
and the GPU check."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DigitsCNN", "digits_cnn"]


def digits_cnn(hidden: int = 64, classes: int = 10) -> nn.Sequential:
    """Two 3x3 convolutions (16, 32 channels, each with a 2x2 max-pool), a ``hidden``-unit layer.

    ``hidden=64``: 13,706 parameters (the demo); ``hidden=32``: 9,258 (the digits benchmark).

    Example:
        >>> sum(p.numel() for p in digits_cnn(32).parameters())
        9258
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


class DigitsCNN(pl.LightningModule):
    def __init__(self, lr: float = 3e-3, hidden: int = 64) -> None:
        super().__init__()
        self.lr = lr
        self.net = digits_cnn(hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/accuracy", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)
