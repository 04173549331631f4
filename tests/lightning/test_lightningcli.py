"""InfluenceCallback and InfluenceDataModule configured from a LightningCLI YAML file (the
documented config in docs/lightningcli.md), through a real LightningCLI and a real fit."""

from __future__ import annotations

import pytest
import yaml

from lightning_influence import InfluenceCallback, InfluenceDataModule
from lightning_influence.losses import cross_entropy_loss

pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse (the dev extra)")


CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
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
          every_n_epochs: 1
          n_iters: 12
          top_k: 5
          hvp_samples: 24
          params: [net.3]
          eigenvalue_policy: positive
          hvp_cache: true
        dirpath: {root}/influence
model:
  class_path: tests.cli.models.TinyClassifier
  init_args:
    hidden: 8
data:
  class_path: lightning_influence.InfluenceDataModule
  init_args:
    datamodule:
      class_path: tests.cli.models.TinyData
      init_args:
        image: true
    config:
      mode: drop
      fraction: 0.2
      combine: normalized_sum
"""


def test_callback_and_datamodule_from_a_lightningcli_config(tmp_path):
    from pytorch_lightning import LightningDataModule, LightningModule
    from pytorch_lightning.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    assert yaml.safe_load(config.read_text())["data"]["init_args"]["config"]["fraction"] == 0.2
    cli = LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=["--config", str(config)],
        save_config_callback=None,
    )
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, InfluenceCallback)]
    assert isinstance(cli.datamodule, InfluenceDataModule)
    assert cli.datamodule.config.combine == "normalized_sum"
    assert callback.config.params == ["net.3"] and callback.config.eigenvalue_policy == "positive"
    assert callback.config.hvp_cache  # an execution field: reachable like every other
    # the same arguments in Python name the same analysis
    same = InfluenceCallback(
        cross_entropy_loss, n_iters=12, top_k=5, hvp_samples=24, params=["net.3"],
        eigenvalue_policy="positive", hvp_cache=True,
    )  # fmt: skip
    assert callback.name == same.name

    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert [e.name for e in callback.events] == [
        "epoch=0-step=5",
        "epoch=1-step=9",
    ]  # epoch 1: 32 kept, 4 batches
    assert (tmp_path / "influence" / callback.name / "epoch=1-step=9" / "manifest.json").is_file()
    assert int((~cli.datamodule.keep_mask).sum()) == 8  # 20% of 40, dropped after the first event


def test_every_config_field_is_an_option_of_the_callback_and_the_datamodule():
    import dataclasses

    from jsonargparse import ArgumentParser

    from lightning_influence import AnalysisConfig, PruningConfig

    changed = {"n_iters": 30, "top_k": 7, "hvp_cache": True, "every_n_epochs": 3, "fraction": 0.3}
    for cls, config_cls in (
        (InfluenceCallback, AnalysisConfig),
        (InfluenceDataModule, PruningConfig),
    ):
        fields = {f.name: getattr(config_cls(), f.name) for f in dataclasses.fields(config_cls)}
        fields.update({k: v for k, v in changed.items() if k in fields})
        parser = ArgumentParser()
        parser.add_class_arguments(cls, "x", skip={"datamodule"})
        parsed = parser.parse_object({"x": {"config": fields}})
        assert dict(vars(parsed.x.config.init_args)) == fields, cls.__name__  # every field
