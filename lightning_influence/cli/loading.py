"""How the command line builds what it names: init arguments in ``LightningCLI``'s spelling,
YAML configs, class paths, the checkpoint, the LightningModule, the DataModule and its loaders.

Every problem a user can fix raises ``CLIError`` with one line naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_influence.io.checkpoint import CheckpointError, read_checkpoint, saved_init_args

__all__ = ["SPLITS", "CLIError", "Loaded", "dataloader", "import_class", "load", "split_init_args"]

SPLITS = ("test", "val", "train")


class CLIError(Exception):
    """A problem the user can fix: printed as one line, exit code 2."""


# -- init arguments in LightningCLI's spelling --------------------------------------------------
def _yaml_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_init_args(
    argv: Sequence[str],
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Take ``--model.init_args.NAME V`` / ``--model.NAME=V`` (and ``--data.*``) out of ``argv``.

    Returns:
        The remaining arguments and ``{"model": {NAME: value}, "data": {...}}``, values read as
        YAML (``32`` -> int, ``[1, 2]`` -> list, ``null`` -> None).
    """
    rest: list[str] = []
    found: dict[str, dict[str, Any]] = {"model": {}, "data": {}}
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        section = next((s for s in found if token.startswith(f"--{s}.")), None)
        if section is None:
            rest.append(token)
            i += 1
            continue
        key, has_value, value = token[len(section) + 3 :].partition("=")
        if not has_value:
            if i + 1 >= len(tokens):
                raise CLIError(f"{token} needs a value: write {token} VALUE or {token}=VALUE")
            value = tokens[i + 1]
            i += 1
        i += 1
        key = key.removeprefix("init_args.")
        if not key or "." in key:
            raise CLIError(
                f"{token}: name one init argument, as --{section}.init_args.NAME VALUE "
                f"(nested values are YAML: --{section}.init_args.NAME '{{a: 1}}')"
            )
        found[section][key] = _yaml_value(value)
    return rest, found


# -- loading: config, classes, checkpoint ---------------------------------------------------------
@dataclasses.dataclass
class _Spec:
    """What to build: a class path and its init arguments."""

    class_path: str | None = None
    init_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    from_config: bool = False  # the section came from a --config file (an explicit choice)


def _read_config(path: str) -> dict[str, Any]:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise CLIError(f"--config {path}: no such file; pass the YAML config LightningCLI saved")
    try:
        config = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise CLIError(f"--config {path} is not valid YAML ({first}): fix the file") from None
    if not isinstance(config, dict):
        raise CLIError(f"--config {path} must be a YAML mapping with 'model:' and 'data:' keys")
    if "model" not in config and isinstance(config.get("fit"), dict):
        config = config["fit"]  # a config for all subcommands: `fit: {model: ..., data: ...}`
    return config


def _spec_from_config(config: dict[str, Any], section: str, path: str) -> _Spec:
    entry = config.get(section)
    if entry is None:
        return _Spec()
    if isinstance(entry, str):
        return _Spec(entry, from_config=True)
    if not isinstance(entry, dict):
        raise CLIError(
            f"--config {path}: '{section}:' must be a mapping ({{class_path, init_args}}), "
            f"got {type(entry).__name__}"
        )
    if "class_path" in entry:
        init_args = entry.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise CLIError(f"--config {path}: '{section}.init_args' must be a mapping")
        return _Spec(str(entry["class_path"]), dict(init_args), from_config=True)
    # LightningCLI(MyModel) saves the init arguments directly under 'model:'.
    return _Spec(None, dict(entry), from_config=True)


def import_class(class_path: str, flag: str, base: type | tuple[type, ...]) -> type:
    """Import ``pkg.module.Class`` and check it subclasses ``base`` (a class, or a tuple of the
    same class from each Lightning namespace); a ``CLIError`` otherwise."""
    module_name, _, name = class_path.rpartition(".")
    if not module_name or not name:
        raise CLIError(
            f"{flag} {class_path!r} is not a class path: write it as package.module.ClassName"
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, so project modules import
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CLIError(
            f"{flag} {class_path!r}: cannot import module {module_name!r} ({err}): check the "
            "spelling, run from your project's root or add it to PYTHONPATH"
        ) from None
    except Exception as err:
        raise CLIError(
            f"{flag} {class_path!r}: importing {module_name!r} failed with "
            f"{type(err).__name__}: {err}"
        ) from None
    cls = getattr(module, name, None)
    if cls is None:
        public = sorted(
            n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_")
        )
        raise CLIError(
            f"{flag} {class_path!r}: module {module_name!r} has no {name!r}; its classes are "
            f"{', '.join(public) or 'none'}"
        )
    if not (isinstance(cls, type) and issubclass(cls, base)):
        base_name = (base if isinstance(base, type) else base[0]).__name__
        raise CLIError(f"{flag} {class_path!r} is not a {base_name} subclass")
    return cls


def _instantiate(cls: type, init_args: dict[str, Any], flag: str) -> Any:
    try:
        return cls(**init_args)
    except TypeError as err:
        params = [
            p
            for p in inspect.signature(cls.__init__).parameters
            if p not in ("self", "args", "kwargs")
        ]
        raise CLIError(
            f"{cls.__name__}({_format_args(init_args)}) failed: {err}; its init arguments are "
            f"{', '.join(params) or 'none'} (set them with {flag}.init_args.NAME VALUE)"
        ) from None


def _format_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _load_checkpoint(path: str | None) -> dict[str, Any]:
    if path is None:
        raise CLIError("no checkpoint: pass --ckpt PATH (a .ckpt written by Lightning)")
    try:
        return read_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as err:
        raise CLIError(f"--ckpt {err}") from None


def _check_fits(model: torch.nn.Module, checkpoint: dict[str, Any], path: str, flag: str) -> None:
    """A one-line ``CLIError`` when the checkpoint's tensors do not match the module's."""
    saved: dict[str, Any] = checkpoint["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [
        f"{k} {tuple(saved[k].shape)} in the checkpoint vs {tuple(own[k].shape)} in the module"
        for k in own
        if k in saved and isinstance(saved[k], Tensor) and saved[k].shape != own[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:3]))
    if missing:
        problems.append(f"missing keys {missing[:4]}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:4]}")
    raise CLIError(
        f"--ckpt {path} does not fit {type(model).__name__}: {'; '.join(problems)}; pass the "
        f"init arguments it was trained with ({flag}.init_args.NAME VALUE) or the right {flag} class"
    )


@dataclasses.dataclass
class Loaded:
    """The LightningModule with the checkpoint's weights, the DataModule, the checkpoint."""

    model: Any
    datamodule: Any
    checkpoint: dict[str, Any]
    ckpt_path: str


def load(args: argparse.Namespace, init: dict[str, dict[str, Any]]) -> Loaded:
    """Build the LightningModule (checkpoint weights loaded) and the DataModule from the options."""
    from lightning_influence.lightning.namespaces import classes

    model_spec, data_spec, ckpt = _Spec(), _Spec(), args.ckpt
    if args.config is not None:
        config = _read_config(args.config)
        model_spec = _spec_from_config(config, "model", args.config)
        data_spec = _spec_from_config(config, "data", args.config)
        ckpt = ckpt or config.get("ckpt_path")
    model_spec.class_path = args.model or model_spec.class_path
    data_spec.class_path = args.data or data_spec.class_path
    model_spec.init_args.update(init["model"])
    data_spec.init_args.update(init["data"])
    if model_spec.class_path is None:
        raise CLIError(
            "no LightningModule: pass --model package.module.Class (or --config with "
            "model.class_path)"
        )
    if data_spec.class_path is None:
        raise CLIError(
            "no LightningDataModule: pass --data package.module.Class (or --config with "
            "data.class_path); its train_dataloader() gives the training examples"
        )
    if not args.no_progress:
        print(f"loading {ckpt}", file=sys.stderr, flush=True)
    checkpoint = _load_checkpoint(ckpt)
    model_cls = import_class(model_spec.class_path, "--model", classes("LightningModule"))
    data_cls = import_class(data_spec.class_path, "--data", classes("LightningDataModule"))

    # Init arguments the run saved (save_hyperparameters) first, the command line on top.
    model_args = {
        **saved_init_args(model_cls, checkpoint, "hyper_parameters"),
        **model_spec.init_args,
    }
    model = _instantiate(model_cls, model_args, "--model")
    _check_fits(model, checkpoint, ckpt, "--model")
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])
    saved_data = saved_init_args(data_cls, checkpoint, "datamodule_hyper_parameters")
    data_args = {**saved_data, **data_spec.init_args}
    told = (
        bool(data_spec.init_args) or data_spec.from_config or getattr(args, "data_defaults", False)
    )
    settable = [
        p.name
        for p in inspect.signature(data_cls.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if settable and not checkpoint.get("datamodule_hyper_parameters") and not told:
        # Built from its defaults, a DataModule trained with other arguments would score other
        # data, silently: the checkpoint does not say, so the user must.
        raise CLIError(
            f"the checkpoint does not record the init arguments of {data_cls.__name__} "
            f"({', '.join(settable)}): it never called self.save_hyperparameters(), so its "
            "defaults may not be the data the model trained on. Pass them with "
            "--data.init_args.NAME VALUE (or --config), or --data-defaults to use the defaults"
        )
    datamodule = _instantiate(data_cls, data_args, "--data")
    return Loaded(model, datamodule, checkpoint, ckpt)


def dataloader(datamodule: Any, split: str) -> Any:
    stage = {"train": "fit", "val": "validate", "test": "test"}[split]
    name = f"{split}_dataloader"
    try:
        datamodule.prepare_data()
        datamodule.setup(stage)
        loader = getattr(datamodule, name)()
    except NotImplementedError:
        loader = None
    except Exception as err:
        if "not implemented" not in str(err) and "`" + name not in str(err):
            raise
        loader = None
    if loader is None:
        others = [s for s in SPLITS if s != split]
        raise CLIError(
            f"{type(datamodule).__name__} has no {name}(): define it, or choose another split "
            f"(--split {' or --split '.join(others)})"
        )
    if isinstance(loader, (list, tuple)):
        loader = loader[0]
    return loader
