"""The demo's data: scikit-learn's bundled digits (1,797 8x8 images, no download) with a share of
the training labels flipped, and a LightningDataModule over them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError as err:  # pragma: no cover - the demo extra installs it
    raise ImportError(
        "the demo needs scikit-learn (its bundled digits): pip install 'lightning-influence[demo]'"
    ) from err

__all__ = ["Digits", "DigitsData", "load"]


@dataclass
class Digits:
    """Digits split once per seed: train inputs with noisy and true labels, a small clean
    validation set (what every Lightning user holds out) and a clean test set."""

    x_train: Tensor
    y_noisy: Tensor
    y_true: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    @property
    def flipped(self) -> Tensor:
        return self.y_noisy != self.y_true


def load(noise: float, seed: int, test_size: float = 0.3, val_size: int = 180) -> Digits:
    """scikit-learn's 1797 8x8 digits: a stratified test split, ``val_size`` clean validation
    digits taken from the rest (0: none), ``noise`` of the remaining train labels flipped."""
    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None] / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=test_size, random_state=seed, stratify=digits.target
    )
    x_va = y_va = None
    if val_size:
        x_tr, x_va, y_tr, y_va = train_test_split(
            x_tr, y_tr, test_size=val_size, random_state=seed, stratify=y_tr
        )
    rng = np.random.default_rng(seed)
    n_flip = round(noise * len(y_tr))
    flip = rng.choice(len(y_tr), n_flip, replace=False)
    noisy = y_tr.copy()
    noisy[flip] = (y_tr[flip] + rng.integers(1, 10, n_flip)) % 10  # always a different class
    return Digits(
        torch.from_numpy(x_tr),
        torch.from_numpy(noisy).long(),
        torch.from_numpy(y_tr).long(),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te).long(),
        None if x_va is None else torch.from_numpy(x_va),
        None if y_va is None else torch.from_numpy(y_va).long(),
    )


class DigitsData(pl.LightningDataModule):
    def __init__(self, data: Digits, clean: bool = False, batch_size: int = 32) -> None:
        super().__init__()
        self.data = data
        labels = data.y_true if clean else data.y_noisy
        self.train_set = TensorDataset(data.x_train, labels)
        self.test_set = TensorDataset(data.x_test, data.y_test)
        self.val_set = (
            None if data.x_val is None else TensorDataset(data.x_val, data.y_val)  # type: ignore[arg-type]
        )
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)

    def val_dataloader(self) -> DataLoader:
        """The clean validation digits: InfluenceCallback computes validation influence on them."""
        if self.val_set is None:
            return []  # type: ignore[return-value]
        return DataLoader(self.val_set, batch_size=256)
