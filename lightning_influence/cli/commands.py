"""The ``lightning-influence`` command line: influence analysis of a saved Lightning checkpoint.

Three subcommands share one way of naming the model and the data, the way ``LightningCLI`` does:

* ``score``: eigenpairs of the Hessian of the training loss and the self-influence
  ``I(x, x) = sum_i w_i <e_i, g_x>^2`` of every training example, written as the same event folder
  ``InfluenceCallback`` writes during training (through ``run_analysis``, as the callback);
* ``explain``: for chosen test examples z, the training examples x with the largest positive
  (proponents) and negative (opponents) influence ``I(x, z) = sum_i w_i <e_i, g_z><e_i, g_x>``,
  as a table and, for image inputs, a picture;
* ``spectrum``: the top eigenvalues ``lambda_i`` and their residuals, as a table and a plot.

The LightningModule and LightningDataModule are given as class paths with init arguments
(``--model pkg.mod.Class --model.init_args.hidden 32``, or the shorthand ``--model.hidden 32``),
or as a ``LightningCLI`` YAML config (``--config config.yaml`` with ``model: {class_path,
init_args}`` and ``data: {class_path, init_args}``); the command line overrides the file. Init
arguments a checkpoint saved with ``save_hyperparameters`` are used automatically.

User errors (a missing checkpoint, a class path that does not import, a checkpoint that does not
fit the module, ...) end with a one-line message naming the problem and the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lightning_influence.cli.loading import CLIError, Loaded, dataloader, load, split_init_args
from lightning_influence.cli.output import require_matplotlib, table, write_csv
from lightning_influence.cli.parser import (
    CLI_FIELDS,
    LOSSES,
    PROG,
    build_parser,
    config_from_args,
    flag,
)
from lightning_influence.config import AnalysisConfig, ConfigurationError

__all__ = ["main"]


def _loss(name: str, model: Any) -> Callable | None:
    """The ``loss_fn`` that ``--loss`` names (None: the module's ``influence_loss``)."""
    from lightning_influence import losses

    if name == "auto":
        if callable(getattr(model, "influence_loss", None)):
            return None
        raise CLIError(
            f"{type(model).__name__} has no influence_loss(self, batch) method: pass --loss "
            "cross_entropy or --loss mse for (inputs, targets) batches, or --loss "
            "package.module.function for loss_fn(model, batch) -> Tensor[B]"
        )
    if name in ("cross_entropy", "mse"):
        return getattr(losses, f"{name}_loss")
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        raise CLIError(
            f"--loss {name!r} is not one of {', '.join(LOSSES)} nor a class path "
            "package.module.function"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise CLIError(f"--loss {name!r} does not import ({err}): check the path") from None
    if not callable(fn):
        raise CLIError(f"--loss {name!r} is not callable: name a function loss_fn(model, batch)")
    return fn


def _config(args: argparse.Namespace) -> AnalysisConfig:
    try:
        return config_from_args(args)
    except (TypeError, ValueError) as err:
        flagged = str(err)
        for name in CLI_FIELDS:  # speak in flags: top_k=300 -> --top-k 300
            flagged = flagged.replace(f"{name}=", f"{flag(name)} ")
        raise CLIError(flagged) from None


def _device(args: argparse.Namespace) -> torch.device:
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(
            f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available here; pass --device cpu")
    return device


def _parts(loader: Any, batch_size: int | None) -> Any:
    from lightning_influence.lightning.loaders import loader_parts

    try:
        return loader_parts(loader, batch_size)
    except ConfigurationError as err:
        raise CLIError(str(err).replace("batch_size=...", "--batch-size")) from None


def _fit(args: argparse.Namespace, loaded: Loaded, config: AnalysisConfig) -> tuple[Any, Any]:
    """Fit the engine as ``score`` does (same HVP sample, config and device), or read the
    eigenpairs an earlier ``score`` (or the callback) saved for these weights and arguments; the
    engine and the training data's loader parts."""
    from lightning_influence.lightning.analysis import fit_engine, saved_engine
    from lightning_influence.lightning.runtime import Runtime

    loss_fn = _loss(args.loss, loaded.model)
    parts = _parts(dataloader(loaded.datamodule, "train"), config.batch_size)
    device = _device(args)
    runtime = Runtime.standalone(loaded.model.to(device), device, progress=config.progress)
    folder = _event_folder(args, loaded, config, loss_fn)
    with torch.inference_mode(False):
        engine = saved_engine(runtime, config, loss_fn, folder)
        if engine is not None:
            print(f"reusing the eigenpairs saved in {folder}", file=sys.stderr)
            return engine, parts
        engine, hvp_examples = fit_engine(runtime, config, loss_fn, parts)
    if config.progress:
        stats = engine.fit_stats
        print(
            f"{stats.get('solver', 'arnoldi')}: {stats.get('iterations', config.n_iters)} HVPs on "
            f"{hvp_examples} of {len(parts.dataset)} training examples",
            file=sys.stderr,
        )
    return engine, parts


def _event_folder(args: argparse.Namespace, loaded: Loaded, config: AnalysisConfig, loss_fn: Any):
    """Where ``score`` writes (or wrote) the event of this checkpoint and these arguments."""
    from pathlib import Path

    from lightning_influence.io.manifest import analysis_arguments, analysis_name
    from lightning_influence.lightning.offline import checkpoint_position, default_dirpath

    base = Path(args.out) if args.out is not None else default_dirpath(loaded.ckpt_path)
    name = args.name or analysis_name(analysis_arguments(config, loss_fn))
    epoch, step = checkpoint_position(loaded.checkpoint)
    return base / name / f"epoch={epoch}-step={step}"


# -- subcommands -----------------------------------------------------------------------------------
def _score(args: argparse.Namespace, loaded: Loaded, config: AnalysisConfig) -> int:
    from lightning_influence.lightning.offline import analyze_loaded

    loss_fn = _loss(args.loss, loaded.model)
    loader = dataloader(loaded.datamodule, "train")
    _parts(loader, config.batch_size)  # data problems as one-line errors, before any work
    loggers = []
    if args.tensorboard is not None:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(args.tensorboard, name="influence"))
    event = analyze_loaded(
        loaded.model,
        loaded.checkpoint,
        loaded.ckpt_path,
        loader,
        loss_fn=loss_fn,
        config=config,
        name=args.name,
        dirpath=args.out,
        loggers=loggers,
        device=_device(args),
        resume=args.resume,
    )
    scores = event.self_influence
    print(f"scored {scores.numel()} training examples -> {event.directory}")
    print("top eigenvalues: " + " ".join(f"{v:.4g}" for v in event.eigenvalues[:5].tolist()))
    if args.show > 0:
        finite = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf))
        top = finite.topk(min(args.show, scores.numel()))
        rows = [
            [str(r), str(i), f"{s:.6g}"]
            for r, (i, s) in enumerate(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        ]
        print("most self-influential (likely mislabeled or atypical):")
        print(table(["rank", "index", "self_influence"], rows))
    return 0


def _explain(args: argparse.Namespace, loaded: Loaded, config: AnalysisConfig) -> int:
    from lightning_influence.lightning.loaders import ordered_loader
    from lightning_influence.viz import explanation_figure, inputs_label

    if args.image is not None:
        require_matplotlib("--image")
    _loss(args.loss, loaded.model)  # before the (long) fit
    split = _parts(dataloader(loaded.datamodule, args.split), config.batch_size)
    size = len(split.dataset)
    bad = [i for i in args.examples if not 0 <= i < size]
    if bad:
        raise CLIError(
            f"--examples {' '.join(map(str, bad))}: out of range for the {args.split} split, "
            f"which has {size} examples (indices 0..{size - 1})"
        )
    if args.image is not None:
        from lightning_influence.viz import as_image

        inputs, _ = inputs_label(split.dataset[args.examples[0]])
        if as_image(inputs) is None:  # before the (long) fit, not after it
            raise CLIError(
                f"--image: the {args.split} split's inputs are not images (example "
                f"{args.examples[0]} is {type(inputs).__name__}); use the table or --csv"
            )
    engine, train = _fit(args, loaded, config)
    with torch.inference_mode(False):
        top = engine.top_influences(
            ordered_loader(train), ordered_loader(split, args.examples), k=args.k
        )
    rows = []
    for t, test_index in enumerate(args.examples):
        _, test_label = inputs_label(split.dataset[test_index])
        for kind, indices, values in (
            ("proponent", top.proponents[t], top.proponent_scores[t]),
            ("opponent", top.opponents[t], top.opponent_scores[t]),
        ):
            for rank, (i, v) in enumerate(zip(indices.tolist(), values.tolist(), strict=True)):
                _, label = inputs_label(train.dataset[i])
                rows.append(
                    [str(test_index), test_label, kind, str(rank), str(i), f"{v:.6g}", label]
                )
    header = [
        args.split,
        f"{args.split}_label",
        "kind",
        "rank",
        "train_index",
        "influence",
        "train_label",
    ]
    print(
        "influence I(x, z) of training example x on example z: proponents (> 0) made z's loss "
        "lower, opponents (< 0) higher"
    )
    print(table(header, rows))
    if args.csv is not None:
        write_csv(args.csv, header, rows)
        print(f"table -> {args.csv}")
    if args.image is not None:
        try:
            figure = explanation_figure(
                split.dataset, train.dataset, args.examples, top, split=args.split
            )
        except ValueError as err:
            raise CLIError(f"--image: {err}; use the table or --csv") from None
        figure.savefig(args.image)
        print(f"picture -> {args.image}")
    return 0


def _convergence_summary(lam: torch.Tensor, relative: torch.Tensor, solver: Any, tol: Any) -> str:
    """The line under the spectrum's table: how many pairs are negative and how many did not
    converge, judged by what the fit aimed at: thick restart's ``restart_tol`` (it stops there,
    so a loose pair means it ran out of products), else (a fixed number of Arnoldi products, or
    an event that does not say) a relative residual of 1e-2."""
    restarted = solver == "lanczos" and isinstance(tol, (int, float))
    target = float(tol) if restarted else 1e-2
    loose = int((~(relative < target)).sum())
    line = (
        f"{lam.numel()} eigenvalues, {int((lam < 0).sum())} negative; {loose} with relative "
        f"residual >= {target:g}"
    )
    if restarted:
        line += " (the restart_tol of this thick-restart fit)"
        if loose:
            line += (
                "; it stopped at its product limit (10 x n_iters) before they converged: "
                "raise --n-iters, or lower --top-k"
            )
    elif loose:
        line += " (raise --n-iters to converge them, or lower --top-k)"
    return line


def _spectrum(args: argparse.Namespace, init: dict[str, dict[str, Any]]) -> int:
    if args.plot is not None:
        require_matplotlib("--plot")
    if args.event is not None:
        from lightning_influence.io.events import load_event

        try:
            event = load_event(args.event)  # an event folder, or the newest under an analysis'
        except FileNotFoundError as err:
            raise CLIError(f"--event {args.event}: {err}") from None
        lam, residuals = event.eigenvalues, event.residuals
        solver = event.manifest.get("fit_stats", {}).get("solver")
        tol = event.manifest.get("arguments", {}).get("restart_tol")
    else:
        config = _config(args)
        engine, _ = _fit(args, load(args, init), config)
        lam, residuals = engine.eigenvalues, engine.ritz_residuals
        solver, tol = engine.fit_stats.get("solver"), engine.config.restart_tol
    lam, residuals = lam.double().cpu(), residuals.double().cpu()
    relative = residuals / lam.abs()
    header = ["rank", "eigenvalue", "residual", "relative_residual"]
    rows = [
        [str(i), f"{v:.6g}", f"{r:.3g}", f"{q:.3g}"]
        for i, (v, r, q) in enumerate(
            zip(lam.tolist(), residuals.tolist(), relative.tolist(), strict=True)
        )
    ]
    print(table(header, rows))
    print(_convergence_summary(lam, relative, solver, tol))
    if args.csv is not None:
        write_csv(args.csv, header, rows)
        print(f"table -> {args.csv}")
    if args.plot is not None:
        from lightning_influence.viz import spectrum_figure

        spectrum_figure(lam).savefig(args.plot)
        print(f"plot -> {args.plot}")
    return 0


# -- entry point -----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lightning-influence`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Example::

        from lightning_influence.cli import main

        main(["score", "--config", "config.yaml", "--ckpt", "last.ckpt", "--n-iters", "50"])
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        rest, init = split_init_args(argv)
    except CLIError as err:
        parser.error(str(err))  # exits with code 2
    args = parser.parse_args(rest)
    try:
        if args.command == "spectrum":
            return _spectrum(args, init)
        config = _config(args)  # the options are checked before the data is loaded
        loaded = load(args, init)
        command = _score if args.command == "score" else _explain
        return command(args, loaded, config)
    except (CLIError, ConfigurationError) as err:
        message = " ".join(str(err).split())
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as err:
        # A failure inside the analysis (a loss that does not fit the batches, NaN losses, ...):
        # one line by default, the traceback with --debug.
        if args.debug:
            raise
        message = " ".join(str(err).split())
        print(
            f"{PROG} {args.command}: error: the analysis failed with {type(err).__name__}: "
            f"{message} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
