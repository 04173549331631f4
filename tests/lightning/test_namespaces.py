"""Both Lightning namespaces: a real fit under ``pytorch_lightning`` and ``lightning.pytorch``.

The callback and the DataModule wrapper are instances of both namespaces' classes; the
``lightning.pytorch`` cases are skipped where the unified ``lightning`` package is not installed
(the XLA environment, for one).
"""

from __future__ import annotations

import csv
import importlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence import InfluenceCallback, InfluenceDataModule
from lightning_influence.io.events import load_event
from lightning_influence.lightning.namespaces import NAMESPACES, classes, is_overridden
from lightning_influence.losses import cross_entropy_loss

N, BATCH = 32, 8
_G = torch.Generator().manual_seed(1)
X, Y = torch.randn(N, 4, generator=_G), torch.arange(N) % 3
INDEX_OF = {float(v): i for i, v in enumerate(X[:, 0])}  # the first feature names the example


def _lightning(namespace: str) -> SimpleNamespace:
    """The namespace's Trainer, bases, loggers and callbacks (skip when it is not installed)."""
    if namespace == "lightning.pytorch":
        pytest.importorskip("lightning", reason="the unified `lightning` package is not installed")
    pl = importlib.import_module(namespace)
    loggers = importlib.import_module(f"{namespace}.loggers")
    callbacks = importlib.import_module(f"{namespace}.callbacks")
    exceptions = importlib.import_module(f"{namespace}.utilities.exceptions")
    return SimpleNamespace(
        pl=pl,
        CSVLogger=loggers.CSVLogger,
        ModelCheckpoint=callbacks.ModelCheckpoint,
        MisconfigurationException=exceptions.MisconfigurationException,
    )


@pytest.fixture(params=["pytorch_lightning", "lightning.pytorch"])
def ns(request) -> SimpleNamespace:
    return _lightning(request.param)


def make_classes(pl):
    """A tiny classifier and its data, subclassing the given namespace's bases."""

    class Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
            self.seen: dict[int, list[int]] = defaultdict(list)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.seen[self.current_epoch] += [INDEX_OF[float(v)] for v in x[:, 0]]
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(pl.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.data = TensorDataset(X, Y)

        def train_dataloader(self):
            return DataLoader(self.data, batch_size=BATCH, shuffle=True)

    return Classifier, Data


def kept_by(scores: torch.Tensor) -> list[int]:
    dropped = set(torch.argsort(scores, descending=True)[: N // 4].tolist())
    return sorted(set(range(N)) - dropped)


def make_trainer(ns, tmp_path: Path, callbacks, max_epochs: int):
    return ns.pl.Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=ns.CSVLogger(tmp_path, name="csv", version=0),
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )


def make_callback() -> InfluenceCallback:
    # every example scored (score_candidates=None): the plan is checked against the whole
    # self-influence; scoring only the candidates has its own tests (test_datamodule.py)
    return InfluenceCallback(
        cross_entropy_loss,
        every_n_epochs=1,
        n_iters=8,
        top_k=4,
        seed=0,
        progress=False,
        score_candidates=None,
    )


def test_our_classes_belong_to_every_installed_namespace(ns):
    _, Data = make_classes(ns.pl)
    dm = InfluenceDataModule(Data(), fraction=0.25, signal="self_influence")
    assert isinstance(dm, ns.pl.LightningDataModule)
    assert isinstance(make_callback(), ns.pl.Callback)
    assert len(classes("LightningDataModule")) == len(NAMESPACES)
    # Lightning's own override check, as the namespace's Trainer runs it
    model_helpers = importlib.import_module(f"{ns.pl.__name__}.utilities.model_helpers")
    assert model_helpers.is_overridden("train_dataloader", dm)
    assert not model_helpers.is_overridden("val_dataloader", dm)  # the wrapped module has none
    assert model_helpers.is_overridden("state_dict", make_callback(), parent=ns.pl.Callback)
    assert is_overridden("train_dataloader", Data()) and not is_overridden("val_dataloader", Data())


def test_fit_scores_drops_logs_and_resumes(ns, tmp_path):
    torch.set_num_threads(1)
    Classifier, Data = make_classes(ns.pl)
    ns.pl.seed_everything(0, verbose=False)
    callback, dm, model = (
        make_callback(),
        InfluenceDataModule(Data(), fraction=0.25, signal="self_influence"),
        Classifier(),
    )
    checkpoints = ns.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer = make_trainer(ns, tmp_path, [callback, checkpoints], max_epochs=2)
    trainer.fit(model, datamodule=dm)

    # the callback scored every epoch and wrote its events
    assert [e.epoch for e in callback.events] == [0, 1]
    written = load_event(callback.events[-1].directory)
    assert written.uid == callback.events[-1].uid
    # the manifest names the namespace the run used, and that package's version
    assert written.manifest["lightning_namespace"] == ns.pl.__name__
    assert ns.pl.__name__.split(".")[0] in written.manifest["versions"]
    assert written.self_influence.shape == (N,) and torch.isfinite(written.self_influence).all()
    # the DataModule dropped the quarter of the examples that the first event scored highest
    assert sorted(model.seen[0]) == list(range(N))
    assert sorted(model.seen[1]) == kept_by(callback.events[0].self_influence)

    # the logger got the scalars of both and the DataModule's counts
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    eigen = [r for r in rows if r.get("influence/eigenvalue_0")]
    assert [int(r["step"]) for r in eigen] == [e.global_step for e in callback.events]
    assert float(eigen[0]["influence/eigenvalue_0"]) == pytest.approx(
        float(callback.events[0].eigenvalues[0]), rel=1e-6
    )
    assert any(r.get("influence_data/dropped") == str(float(N // 4)) for r in rows)
    # the event folders and the logger's media folders do not mix
    log_dir = Path(trainer.logger.log_dir)
    assert [p.name for p in (log_dir / "influence").iterdir()] == [callback.name]
    media = sorted(p.name for p in (log_dir / "media" / "influence").iterdir())
    assert media == sorted(e.name for e in callback.events)

    # resume from the last checkpoint in a fresh Trainer: the events and the kept set come back
    path = tmp_path / "ckpt" / f"epoch=1-step={trainer.global_step}.ckpt"
    assert path.is_file()
    callback2, dm2, model2 = (
        make_callback(),
        InfluenceDataModule(Data(), fraction=0.25, signal="self_influence"),
        Classifier(),
    )
    checkpoints2 = ns.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    trainer2 = make_trainer(ns, tmp_path / "resumed", [callback2, checkpoints2], max_epochs=3)
    trainer2.fit(model2, datamodule=dm2, ckpt_path=path)
    assert [e.uid for e in callback2.events[:2]] == [e.uid for e in callback.events]
    assert [e.epoch for e in callback2.events] == [0, 1, 2]
    # epoch 2 follows the checkpointed second event, as the uninterrupted run would have
    assert list(model2.seen) == [2]
    assert sorted(model2.seen[2]) == kept_by(callback.events[1].self_influence)


def test_configuration_errors_are_the_namespaces_misconfiguration(ns, tmp_path):
    Classifier, Data = make_classes(ns.pl)
    # no loss_fn and no influence_loss on the module: refused in setup, before any training
    callback = InfluenceCallback(None, progress=False)
    trainer = make_trainer(ns, tmp_path, [callback], max_epochs=1)
    with pytest.raises(ns.MisconfigurationException, match="influence_loss"):
        trainer.fit(Classifier(), datamodule=Data())


def test_mixing_namespaces_is_refused_with_the_fix(tmp_path):
    if len(NAMESPACES) < 2:
        pytest.skip("needs both pytorch_lightning and lightning.pytorch installed")
    theirs, ours = _lightning("pytorch_lightning"), _lightning("lightning.pytorch")
    Classifier, _ = make_classes(ours.pl)
    _, OtherData = make_classes(theirs.pl)
    trainer = make_trainer(ours, tmp_path, [], max_epochs=1)
    with pytest.raises(TypeError, match="from the same namespace"):
        trainer.fit(Classifier(), datamodule=InfluenceDataModule(OtherData()))


MODELS = """
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from {namespace} import LightningDataModule, LightningModule


class Tiny(LightningModule):
    def __init__(self, hidden: int = 6) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Data(LightningDataModule):
    def __init__(self, n: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 3)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8)
"""

CONFIG = """
trainer:
  accelerator: cpu
  max_epochs: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning_influence.InfluenceCallback
      init_args:
        loss_fn: lightning_influence.losses.cross_entropy_loss
        config:
          n_iters: 6
          top_k: 3
        dirpath: {root}
model:
  class_path: {module}.Tiny
data:
  class_path: lightning_influence.InfluenceDataModule
  init_args:
    datamodule:
      class_path: {module}.Data
    config:
      fraction: 0.25
"""


def test_lightningcli_of_either_namespace_takes_a_wrapped_datamodule(ns, tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse (the dev extra)")
    cli_module = importlib.import_module(f"{ns.pl.__name__}.cli")
    module = "influence_models_" + ns.pl.__name__.replace(".", "_")
    (tmp_path / f"{module}.py").write_text(MODELS.format(namespace=ns.pl.__name__))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=tmp_path / "influence", module=module))
    cli = cli_module.LightningCLI(
        ns.pl.LightningModule,
        ns.pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(config)],
        save_config_callback=None,
    )
    assert isinstance(cli.datamodule, InfluenceDataModule)
    assert type(cli.datamodule.datamodule).__module__ == module
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert int((~cli.datamodule.keep_mask).sum()) == N // 4


@pytest.mark.parametrize(
    ("user_imports", "owner"),
    [
        ("import pytorch_lightning", "pytorch_lightning"),
        ("", "pytorch_lightning"),  # none yet: the primary namespace
        ("import lightning.pytorch", "lightning.pytorch"),
    ],
)
def test_importing_us_keeps_the_rank_zero_logger_of_the_users_namespace(user_imports, owner):
    # Each namespace points lightning_utilities' shared rank-zero logger at its own when first
    # imported; we import both, which must not move the logger whose level the user set.
    if "lightning.pytorch" in user_imports:
        pytest.importorskip("lightning", reason="the unified `lightning` package is not installed")
    code = (
        f"{user_imports}\n"
        "import logging\n"
        f"logging.getLogger('{owner}.utilities.rank_zero').setLevel(logging.WARNING)\n"
        "import lightning_influence\n"
        "from lightning_influence import InfluenceCallback\n"
        "import lightning_utilities.core.rank_zero as shared\n"
        "from lightning_utilities.core.rank_zero import rank_zero_info\n"
        "print(shared.log.name)\n"
        "rank_zero_info('a banner the user silenced')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == f"{owner}.utilities.rank_zero"
    assert "a banner the user silenced" not in done.stderr + done.stdout
