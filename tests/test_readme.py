"""The README's Python snippets run, in order, as written.

Each ```python block is executed in one shared namespace inside a temporary folder, after a
preamble that defines the objects the README leaves to the reader (``model``, ``dm``,
``MyDataModule``, ``MyModule``, the loaders) as tiny stand-ins. Two placeholders are filled in
(named below): the checkpoint the README's ``analyze_checkpoint`` snippet reads, saved from the
run of the snippet before it, and the analysis folder name ``arnoldi-1a2b3c4d``, which is a hash
of the reader's arguments.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

README = Path(__file__).resolve().parents[1] / "README.md"
CHECKPOINT = "lightning_logs/version_0/checkpoints/epoch=9-step=500.ckpt"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


class Digits(Dataset):
    """48 examples of 6 features, 3 classes; ``targets`` as torchvision datasets have."""

    def __init__(self, n: int = 48, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=g)
        self.targets = (self.x @ torch.randn(6, 3, generator=g)).argmax(1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], self.targets[i]


class MyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class MyDataModule(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train, self.val = Digits(48, 0), Digits(24, 1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=16, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=16)


@pytest.mark.slow
def test_the_readme_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    ordered = DataLoader(Digits(48, 0), batch_size=16)
    namespace = {
        "model": MyModule(),
        "dm": MyDataModule(),
        "MyDataModule": MyDataModule,
        "MyModule": MyModule,
        "hvp_loader": ordered,
        "train_loader": ordered,
        "ordered_loader": ordered,
        "test_loader": DataLoader(Digits(8, 2), batch_size=8),
    }
    found = blocks()
    assert len(found) >= 5, "the README's Python snippets were not found"
    ran = 0
    for code in found:
        if "analyze_checkpoint(" in code:
            trainer = namespace["trainer"]
            Path(CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(CHECKPOINT)
        if "arnoldi-1a2b3c4d" in code:
            (folder,) = Path("lightning_logs/version_0/influence").iterdir()
            code = code.replace("arnoldi-1a2b3c4d", folder.name)
            event = sorted(folder.iterdir())[-1].name
            code = code.replace("epoch=9-step=500", event)
        exec(compile(code, str(README), "exec"), namespace)  # the README's own code
        ran += 1
    assert ran == len(found)
    # what the snippets promise
    assert namespace["scores"] is not None
    assert Path("eigen.pt").is_file()
    assert list(Path("lightning_logs").glob("version_*/influence/*/epoch=*/signals.csv"))
