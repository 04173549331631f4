"""The ``lightning-influence`` command line: influence analysis of a saved Lightning checkpoint.

Three subcommands share one way of naming the model and the data, the way ``LightningCLI`` does:

* ``score``: eigenpairs of the Hessian of the training loss and the self-influence
  ``I(x, x) = sum_i w_i <e_i, g_x>^2`` of every training example, written as the same event folder
  ``InfluenceCallback`` writes during training (through ``InfluenceCallback.analyze_checkpoint``);
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
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lightning_influence.cli.loading import (
    SPLITS,
    CLIError,
    Loaded,
    dataloader,
    load,
    split_init_args,
)

__all__ = ["main"]

PROG = "lightning-influence"
_LOSSES = ("auto", "cross_entropy", "mse")


# -- the parser ------------------------------------------------------------------------------------
_MAIN_EPILOG = """\
examples:
  # self-influence of every training example (same files as InfluenceCallback writes)
  lightning-influence score --ckpt lightning_logs/version_0/checkpoints/last.ckpt \\
      --model my_project.models.Classifier --model.init_args.hidden 64 \\
      --data my_project.data.DigitsData --data.init_args.batch_size 128 --loss cross_entropy

  # the same from the config LightningCLI saved beside the run
  lightning-influence score --config lightning_logs/version_0/config.yaml --ckpt CKPT

  # why was test example 7 predicted as it was? top-5 proponents and opponents, as a picture
  lightning-influence explain --config config.yaml --ckpt CKPT --examples 7 -k 5 --image why.png

  # the Hessian spectrum, and how well it converged
  lightning-influence spectrum --config config.yaml --ckpt CKPT --plot spectrum.png

Run 'lightning-influence COMMAND --help' for each command's options.
"""

_MODEL_HELP = """\
model and data:
  --model CLASS_PATH          the LightningModule class, e.g. my_project.models.Classifier
  --model.init_args.NAME V    an init argument of the module (shorthand: --model.NAME V);
                              values are read as YAML: 32, 0.1, true, [64, 64], null, text
  --data CLASS_PATH           the LightningDataModule class; its train_dataloader() is scored
  --data.init_args.NAME V     an init argument of the DataModule (shorthand: --data.NAME V)
  --config FILE               a LightningCLI YAML config: model: {class_path, init_args},
                              data: {class_path, init_args} (a 'fit:' section is also read);
                              the command line overrides the file
  Init arguments saved in the checkpoint (save_hyperparameters) are used automatically.
  Class paths are imported with the current directory on sys.path.
"""


def _para(text: str) -> str:
    """Wrap a description (the raw formatter keeps the epilog's examples as written)."""
    return textwrap.fill(text, width=96)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _hvp_samples(text: str) -> int | None:
    return None if text.lower() in ("all", "none") else _positive_int(text)


def _common_parser() -> argparse.ArgumentParser:
    """Options every subcommand takes: the checkpoint, model, data, loss and engine."""
    common = argparse.ArgumentParser(add_help=False)
    source = common.add_argument_group("checkpoint, model and data (see the section below)")
    source.add_argument(
        "--ckpt", metavar="PATH", help="the Lightning checkpoint (.ckpt) to analyse"
    )
    source.add_argument("--model", metavar="CLASS_PATH", help="the LightningModule class")
    source.add_argument("--data", metavar="CLASS_PATH", help="the LightningDataModule class")
    source.add_argument("--config", metavar="FILE", help="a LightningCLI YAML config")
    source.add_argument(
        "--loss",
        default="auto",
        metavar="NAME",
        help="per-example loss: 'auto' (the module's influence_loss(batch) method), "
        "'cross_entropy' or 'mse' for (inputs, targets) batches, or the class path of a function "
        "loss_fn(model, batch) -> Tensor[B] (default: auto)",
    )
    engine = common.add_argument_group(
        "Arnoldi (the same meaning as InfluenceCallback's arguments)"
    )
    engine.add_argument(
        "--n-iters",
        type=_positive_int,
        default=200,
        metavar="N",
        help="Arnoldi iterations n (default: 200)",
    )
    engine.add_argument(
        "--top-k",
        type=_positive_int,
        default=100,
        metavar="P",
        help="eigenpairs p kept (default: 100)",
    )
    engine.add_argument(
        "--hvp-samples",
        type=_hvp_samples,
        default=512,
        metavar="N|all",
        help="training examples in the HVP sample, drawn with --seed (default: 512)",
    )
    engine.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the sample and start vector"
    )
    engine.add_argument(
        "--params",
        nargs="+",
        metavar="PATTERN",
        help="parameters to analyse: names, module prefixes or globs (default: all trainable)",
    )
    engine.add_argument(
        "--eigenvalue-policy",
        choices=("abs", "signed", "positive", "damped"),
        default="abs",
        help="how 1/lambda is formed (default: abs)",
    )
    engine.add_argument(
        "--damping", type=float, default=0.0, metavar="D", help="for --eigenvalue-policy damped"
    )
    engine.add_argument("--projection", choices=("auto", "jvp", "grad"), default="auto")
    engine.add_argument("--hvp-mode", choices=("auto", "fwd-rev", "rev-rev"), default="auto")
    engine.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="B",
        help="batch size (default: the train loader's)",
    )
    engine.add_argument(
        "--basis-device", metavar="DEVICE", help="'cpu' offloads the Krylov basis from a GPU"
    )
    engine.add_argument(
        "--basis-dtype",
        choices=("float64", "float32", "bfloat16", "float16"),
        help="storage dtype of the Krylov basis",
    )
    engine.add_argument(
        "--device", metavar="DEVICE", help="where to compute (default: cuda if available, else cpu)"
    )
    engine.add_argument("--no-progress", action="store_true", help="no progress bars")
    engine.add_argument(
        "--debug", action="store_true", help="show the full traceback when the analysis fails"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-influence`` (init arguments are parsed separately)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_para(
            "Arnoldi influence functions for a saved Lightning checkpoint: which training "
            "examples are mislabeled or atypical (score), which ones made a prediction (explain), and "
            "the Hessian spectrum behind both (spectrum)."
        ),
        epilog=_MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    import lightning_influence

    parser.add_argument("--version", action="version", version=lightning_influence.__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_parser()

    score = commands.add_parser(
        "score",
        parents=[common],
        formatter_class=_Formatter,
        help="self-influence of every training example, written as an event folder",
        description=_para(
            "Fit the top-p eigenpairs of the Hessian of the training loss at the "
            "checkpoint's weights and score every training example with its self-influence "
            "I(x, x) = sum_i w_i <e_i, g_x>^2 (high: likely mislabeled or atypical). Writes "
            "<out>/epoch=E-step=S/{self_influence.csv, eigenvalues.csv, manifest.json}, the files "
            "InfluenceCallback writes during training."
        ),
        epilog=_MODEL_HELP
        + """
examples:
  lightning-influence score --ckpt logs/version_0/checkpoints/epoch=9-step=500.ckpt \\
      --model my_project.models.Classifier --model.init_args.hidden 64 \\
      --data my_project.data.DigitsData --loss cross_entropy --n-iters 100 --top-k 50
  # -> logs/version_0/influence/epoch=9-step=500/self_influence.csv
  lightning-influence score --config logs/version_0/config.yaml --ckpt CKPT --tensorboard logs
""",
    )
    score.add_argument(
        "--out",
        metavar="DIR",
        help="where the event folder goes (default: <log_dir>/influence for a checkpoint in "
        "<log_dir>/checkpoints/, else influence/ beside the checkpoint)",
    )
    score.add_argument(
        "--tensorboard", metavar="DIR", help="also log the event to a TensorBoard run under DIR"
    )
    score.add_argument(
        "--show", type=int, default=10, metavar="N", help="print the N most self-influential"
    )

    explain = commands.add_parser(
        "explain",
        parents=[common],
        formatter_class=_Formatter,
        help="top-k proponents and opponents of chosen test examples",
        description=_para(
            "For each chosen example z of a split, the training examples x with the "
            "largest influence I(x, z) = sum_i w_i <e_i, g_z><e_i, g_x>: proponents (positive: "
            "removing x would raise the loss on z) and opponents (negative: removing x would lower "
            "it). Prints a table; --image draws a picture for image inputs (needs matplotlib)."
        ),
        epilog=_MODEL_HELP
        + """
examples:
  lightning-influence explain --config config.yaml --ckpt CKPT --examples 0 7 42 -k 5
  lightning-influence explain --config config.yaml --ckpt CKPT --split val --examples 3 \\
      --image why.png --csv why.csv
""",
    )
    explain.add_argument(
        "--examples",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3],
        metavar="I",
        help="indices into the split's dataset (default: 0 1 2 3)",
    )
    explain.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="the DataModule loader the examples come from (default: test)",
    )
    explain.add_argument(
        "-k", type=_positive_int, default=5, help="proponents and opponents per example"
    )
    explain.add_argument("--image", metavar="PNG", help="save a picture (image inputs)")
    explain.add_argument("--csv", metavar="FILE", help="save the table as CSV")

    spectrum = commands.add_parser(
        "spectrum",
        parents=[common],
        formatter_class=_Formatter,
        help="the top eigenvalues of the Hessian at a checkpoint",
        description=_para(
            "The top-p eigenvalues lambda_i of the Hessian of the training loss by "
            "|lambda|, with Ritz residuals ||H e_i - lambda_i e_i|| and relative residuals "
            "(residual / |lambda|; small means converged: if the tail is large, raise --n-iters). "
            "Negative eigenvalues are normal away from a minimum; see --eigenvalue-policy. "
            "--event reads an event folder written by score or InfluenceCallback instead."
        ),
        epilog=_MODEL_HELP
        + """
examples:
  lightning-influence spectrum --config config.yaml --ckpt CKPT --top-k 20 --plot spectrum.png
  lightning-influence spectrum --event logs/version_0/influence/epoch=9-step=500
""",
    )
    spectrum.add_argument(
        "--event", metavar="DIR", help="read eigenvalues.csv of an event folder (no computation)"
    )
    spectrum.add_argument("--plot", metavar="PNG", help="save a plot (needs matplotlib)")
    spectrum.add_argument("--csv", metavar="FILE", help="save the table as CSV")
    return parser


def _resolve_loss(name: str, model: Any) -> Callable | None:
    from lightning_influence import losses

    if name == "auto":
        if callable(getattr(model, "influence_loss", None)):
            return None  # InfluenceCallback calls the module's influence_loss
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
            f"--loss {name!r} is not one of {', '.join(_LOSSES)} nor a class path "
            "package.module.function"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise CLIError(f"--loss {name!r} does not import ({err}): check the path") from None
    if not callable(fn):
        raise CLIError(f"--loss {name!r} is not callable: name a function loss_fn(model, batch)")
    return fn


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``InfluenceCallback`` arguments the engine options give."""
    return {
        "n_iters": args.n_iters,
        "top_k": args.top_k,
        "hvp_samples": args.hvp_samples,
        "seed": args.seed,
        "params": args.params,
        "eigenvalue_policy": args.eigenvalue_policy,
        "damping": args.damping,
        "projection": args.projection,
        "hvp_mode": args.hvp_mode,
        "batch_size": args.batch_size,
        "basis_device": args.basis_device,
        "basis_dtype": args.basis_dtype,
        "progress": not args.no_progress,
    }


def _callback(args: argparse.Namespace, loss_fn: Callable | None) -> Any:
    """An ``InfluenceCallback`` holding the options: validation, HVP sample and config."""
    from lightning_influence.lightning.callback import InfluenceCallback

    options = _options(args)
    try:
        return InfluenceCallback(loss_fn, **options)
    except (TypeError, ValueError) as err:
        flagged = str(err)
        for name in options:  # speak in flags: top_k=300 -> --top-k 300
            flagged = flagged.replace(f"{name}=", f"--{name.replace('_', '-')} ")
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


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.no_progress:
        print(message, file=sys.stderr, flush=True)


# -- subcommands -----------------------------------------------------------------------------------
def _fit_engine(args: argparse.Namespace, loaded: Loaded) -> tuple[Any, Any, Any]:
    """Fit ``ArnoldiInfluence`` exactly as ``score`` does: same HVP sample, config and device.

    Returns:
        The engine, the training loader (unshuffled, dataset order) and the callback.
    """
    from torch.utils.data import DataLoader, Subset

    from lightning_influence.engines.arnoldi import ArnoldiInfluence
    from lightning_influence.lightning.runtime import standalone_transfer

    loss_fn = _resolve_loss(args.loss, loaded.model)
    callback = _callback(args, loss_fn)
    loader = dataloader(loaded.datamodule, "train")
    dataset, collate_fn, batch_size = _loader_parts(callback, loader)
    hvp = callback.hvp_indices(len(dataset)).tolist()

    def ordered(indices: list[int] | None = None) -> DataLoader:
        data = dataset if indices is None else Subset(dataset, indices)
        return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)

    device = _device(args)
    model = loaded.model.to(device)
    engine = ArnoldiInfluence(
        model,
        callback._resolve_loss(model),
        params=callback.params,
        config=callback.config,
        transfer_batch=standalone_transfer(model, device),
    )
    _say(args, f"Arnoldi: {args.n_iters} HVPs on {len(hvp)} of {len(dataset)} training examples")
    with torch.inference_mode(False):
        engine.fit(ordered(hvp))
    return engine, ordered(), callback


def _loader_parts(callback: Any, loader: Any) -> tuple[Any, Any, int]:
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    try:
        return callback._loader_parts(loader)
    except MisconfigurationException as err:
        raise CLIError(
            str(err).replace("InfluenceCallback(batch_size=...)", "--batch-size")
        ) from None


def _score(args: argparse.Namespace, loaded: Loaded) -> int:
    from lightning_influence.lightning.callback import InfluenceCallback

    loss_fn = _resolve_loss(args.loss, loaded.model)
    _callback(args, loss_fn)  # validate the options before the data is loaded
    loader = dataloader(loaded.datamodule, "train")
    loggers = []
    if args.tensorboard is not None:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(args.tensorboard, name="influence"))
    event = InfluenceCallback.analyze_checkpoint(
        loaded.ckpt_path,
        loaded.model,
        loader,
        dirpath=args.out,
        loggers=loggers,
        device=_device(args),
        loss_fn=loss_fn,
        **_options(args),
    )
    scores = event.self_influence
    print(f"scored {scores.numel()} training examples -> {event.directory}")
    lam = event.eigenvalues[:5].tolist()
    print("top eigenvalues: " + " ".join(f"{v:.4g}" for v in lam))
    if args.show > 0:
        finite = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, -math.inf))
        top = finite.topk(min(args.show, scores.numel()))
        rows = [
            [str(r), str(i), f"{s:.6g}"]
            for r, (i, s) in enumerate(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        ]
        print("most self-influential (likely mislabeled or atypical):")
        print(_table(["rank", "index", "self_influence"], rows))
    return 0


def _explain(args: argparse.Namespace, loaded: Loaded) -> int:
    from torch.utils.data import DataLoader, Subset

    from lightning_influence.lightning.loggers import _inputs_label

    if args.image is not None:
        _require_matplotlib("--image")
    # Check the chosen examples before the (long) fit.
    callback = _callback(args, _resolve_loss(args.loss, loaded.model))
    split_loader = dataloader(loaded.datamodule, args.split)
    split_data, collate_fn, batch_size = _loader_parts(callback, split_loader)
    size = len(split_data)
    bad = [i for i in args.examples if not 0 <= i < size]
    if bad:
        raise CLIError(
            f"--examples {' '.join(map(str, bad))}: out of range for the {args.split} split, "
            f"which has {size} examples (indices 0..{size - 1})"
        )
    engine, train_loader, _ = _fit_engine(args, loaded)
    test_loader = DataLoader(
        Subset(split_data, args.examples),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn,
    )
    with torch.inference_mode(False):
        top = engine.top_influences(train_loader, test_loader, k=args.k)

    train_data = train_loader.dataset
    rows = []
    for t, test_index in enumerate(args.examples):
        _, test_label = _inputs_label(split_data[test_index])
        for kind, indices, values in (
            ("proponent", top.proponents[t], top.proponent_scores[t]),
            ("opponent", top.opponents[t], top.opponent_scores[t]),
        ):
            for rank, (i, v) in enumerate(zip(indices.tolist(), values.tolist(), strict=True)):
                _, label = _inputs_label(train_data[i])
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
    print(_table(header, rows))
    if args.csv is not None:
        _write_csv(args.csv, header, rows)
        print(f"table -> {args.csv}")
    if args.image is not None:
        _explanation_figure(args, split_data, train_data, top).savefig(args.image)
        print(f"picture -> {args.image}")
    return 0


def _spectrum(args: argparse.Namespace, init: dict[str, dict[str, Any]]) -> int:
    if args.plot is not None:
        _require_matplotlib("--plot")
    if args.event is not None:
        from lightning_influence.io.events import read_event

        try:
            event = read_event(args.event)
        except FileNotFoundError as err:
            raise CLIError(f"--event {args.event}: {err}") from None
        lam, residuals = event.eigenvalues, event.residuals
    else:
        engine, _, _ = _fit_engine(args, load(args, init))
        lam, residuals = engine.eigenvalues, engine.ritz_residuals
    lam, residuals = lam.double().cpu(), residuals.double().cpu()
    relative = residuals / lam.abs()
    header = ["rank", "eigenvalue", "residual", "relative_residual"]
    rows = [
        [str(i), f"{v:.6g}", f"{r:.3g}", f"{q:.3g}"]
        for i, (v, r, q) in enumerate(
            zip(lam.tolist(), residuals.tolist(), relative.tolist(), strict=True)
        )
    ]
    print(_table(header, rows))
    negative = int((lam < 0).sum())
    loose = int((~(relative < 1e-2)).sum())
    print(
        f"{lam.numel()} eigenvalues, {negative} negative; {loose} with relative residual >= 1e-2"
        + (" (raise --n-iters to converge them, or lower --top-k)" if loose else "")
    )
    if args.csv is not None:
        _write_csv(args.csv, header, rows)
        print(f"table -> {args.csv}")
    if args.plot is not None:
        from lightning_influence.lightning.loggers import _spectrum_figure

        _spectrum_figure(lam).savefig(args.plot)
        print(f"plot -> {args.plot}")
    return 0


# -- output ----------------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(header)
    ]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _write_csv(path: str, header: list[str], rows: list[list[str]]) -> None:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _require_matplotlib(flag: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError(
            f"{flag} needs matplotlib: pip install 'lightning-influence[plot]', or leave out {flag}"
        ) from None


def _explanation_figure(
    args: argparse.Namespace, split_data: Any, train_data: Any, top: Any
) -> Any:
    """Rows: the chosen examples; columns: the example, its proponents, its opponents."""
    from matplotlib.figure import Figure

    from lightning_influence.lightning.loggers import _as_image, _inputs_label

    first_inputs, _ = _inputs_label(split_data[args.examples[0]])
    if _as_image(first_inputs) is None:
        raise CLIError(
            "--image draws image inputs ([H, W], [C, H, W] or [H, W, C] with C in 1, 3); these "
            "inputs are not images: use the table or --csv"
        )
    k = top.proponents.shape[1]
    cols = 1 + 2 * k
    figure = Figure(figsize=(1.3 * cols, 1.6 * len(args.examples)), dpi=100)
    for t, test_index in enumerate(args.examples):
        cells = [(split_data[test_index], f"{args.split} #{test_index}", "black")]
        cells += [
            (train_data[i], f"+ #{i}\n{v:.3g}", "tab:green")
            for i, v in zip(
                top.proponents[t].tolist(), top.proponent_scores[t].tolist(), strict=True
            )
        ]
        cells += [
            (train_data[i], f"- #{i}\n{v:.3g}", "tab:red")
            for i, v in zip(top.opponents[t].tolist(), top.opponent_scores[t].tolist(), strict=True)
        ]
        for c, (sample, title, color) in enumerate(cells):
            inputs, label = _inputs_label(sample)
            image = _as_image(inputs)
            ax = figure.add_subplot(len(args.examples), cols, t * cols + c + 1)
            if image is not None:
                ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(f"{title}\ny={label}" if label else title, fontsize=7, color=color)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle(
        "test example | proponents (+, green) | opponents (-, red)   [#index, influence, label]",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


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
        loaded = load(args, init)
        return _score(args, loaded) if args.command == "score" else _explain(args, loaded)
    except CLIError as err:
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
