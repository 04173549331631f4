"""The argument parser of ``lightning-influence``; the analysis options are generated from
``AnalysisConfig``'s fields (names, types, choices, defaults and help), so the command line and
the callback can never disagree on a default."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
import typing
from collections.abc import Sequence
from typing import Any

from lightning_influence.cli.loading import SPLITS
from lightning_influence.config import AnalysisConfig, field_choices, field_names

__all__ = ["CLI_FIELDS", "PROG", "add_config_options", "build_parser", "config_from_args", "flag"]

PROG = "lightning-influence"
LOSSES = ("auto", "cross_entropy", "mse")

# The AnalysisConfig fields with a meaning for one checkpoint: what is computed and how. The
# "schedule" fields (when a training run analyses) have none, and progress is --no-progress.
# score_candidates needs a training run's pruning plan (InfluenceDataModule): a checkpoint has none.
CLI_FIELDS = tuple(
    n for n in field_names(AnalysisConfig, "result", "execution") if n != "score_candidates"
)

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


def flag(field: str) -> str:
    """``top_k`` -> ``--top-k``."""
    return "--" + field.replace("_", "-")


def _para(text: str) -> str:
    """Wrap a description (the raw formatter keeps the epilog's examples as written)."""
    return textwrap.fill(text, width=96)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def _number(kind: type, optional: bool, minimum: int | None) -> Any:
    def parse(text: str) -> Any:
        if optional and text.lower() in ("all", "none", "null"):
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse


def add_config_options(
    group: argparse._ActionsContainer,
    cls: type,
    names: Sequence[str],
    defaults: Any = None,
) -> None:
    """One option per field of config class ``cls`` in ``names``, generated from the field: its
    flag (``top_k`` -> ``--top-k``), type, choices (``field_choices``), default and help. The
    command line and the demo use it, so both spell every field the same way.

    ``None`` in an optional integer or float field is written ``all``, ``none`` or ``null``.
    """
    hints = typing.get_type_hints(cls)
    defaults = defaults if defaults is not None else cls()
    for field in dataclasses.fields(cls):
        if field.name not in names:
            continue
        hint, default = hints[field.name], getattr(defaults, field.name)
        args = typing.get_args(hint)
        optional = type(None) in args
        kwargs: dict[str, Any] = {"default": default, "dest": field.name}
        help_text = field.metadata.get("help", "")
        choices = field_choices(cls, field.name)
        if field.name == "params":
            kwargs.update(nargs="+", metavar="PATTERN")
        elif choices is not None:
            kwargs["choices"] = choices
        elif hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif int in (hint, *args) and not isinstance(default, float):
            minimum = None if field.name == "seed" else (0 if field.name == "num_workers" else 1)
            if field.name in ("start_epoch", "min_per_class"):
                minimum = 0
            kwargs.update(type=_number(int, optional, minimum))
            kwargs["metavar"] = "N|all" if optional and field.name == "hvp_samples" else "N"
        elif float in (hint, *args):
            kwargs.update(type=_number(float, optional, None), metavar="X")
        else:
            kwargs["metavar"] = field.name.split("_")[-1].upper()
        shown = "all" if default is None and field.name == "hvp_samples" else default
        kwargs["help"] = f"{help_text} (default: {shown})"
        group.add_argument(flag(field.name), **kwargs)


def _common_parser() -> argparse.ArgumentParser:
    """Options every subcommand takes: the checkpoint, model, data, loss and analysis."""
    common = argparse.ArgumentParser(add_help=False)
    source = common.add_argument_group("checkpoint, model and data (see the section below)")
    source.add_argument(
        "--ckpt", metavar="PATH", help="the Lightning checkpoint (.ckpt) to analyse"
    )
    source.add_argument("--model", metavar="CLASS_PATH", help="the LightningModule class")
    source.add_argument("--data", metavar="CLASS_PATH", help="the LightningDataModule class")
    source.add_argument("--config", metavar="FILE", help="a LightningCLI YAML config")
    source.add_argument(
        "--data-defaults",
        action="store_true",
        help="build the DataModule from its default init arguments even though the checkpoint "
        "does not record them (it never called save_hyperparameters)",
    )
    source.add_argument(
        "--loss",
        default="auto",
        metavar="NAME",
        help="per-example loss: 'auto' (the module's influence_loss(batch) method), "
        "'cross_entropy' or 'mse' for (inputs, targets) batches, or the class path of a function "
        "loss_fn(model, batch) -> Tensor[B] (default: auto)",
    )
    engine = common.add_argument_group(
        "the analysis (InfluenceCallback's arguments; lightning_influence.AnalysisConfig)"
    )
    add_config_options(engine, AnalysisConfig, CLI_FIELDS)
    where = common.add_argument_group(
        "event folders (score writes one; explain and spectrum reuse its saved eigenpairs)"
    )
    where.add_argument(
        "--out",
        metavar="DIR",
        help="where the analysis' folder is (default: <log_dir>/influence for a checkpoint in "
        "<log_dir>/checkpoints/, else influence/ beside the checkpoint)",
    )
    where.add_argument(
        "--name",
        metavar="NAME",
        help="the analysis' folder name (default: arnoldi-<hash of the arguments>, as the callback's)",
    )
    run = common.add_argument_group("running")
    run.add_argument(
        "--device", metavar="DEVICE", help="where to compute (default: cuda if available, else cpu)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument(
        "--debug", action="store_true", help="show the full traceback when the analysis fails"
    )
    return common


def config_from_args(args: argparse.Namespace) -> AnalysisConfig:
    """The ``AnalysisConfig`` the options give (raises ``ValueError`` as the config does)."""
    values = {name: getattr(args, name) for name in CLI_FIELDS}
    return AnalysisConfig(progress=not args.no_progress, **values)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-influence`` (init arguments are parsed separately)."""
    import lightning_influence

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
            "<out>/<name>/epoch=E-step=S/{signals.csv, eigenvalues.csv, manifest.json}, the "
            "files InfluenceCallback writes during training."
        ),
        epilog=_MODEL_HELP
        + """
examples:
  lightning-influence score --ckpt logs/version_0/checkpoints/epoch=9-step=500.ckpt \\
      --model my_project.models.Classifier --model.init_args.hidden 64 \\
      --data my_project.data.DigitsData --loss cross_entropy --n-iters 100 --top-k 50
  # -> logs/version_0/influence/arnoldi-<hash>/epoch=9-step=500/signals.csv
  lightning-influence score --config logs/version_0/config.yaml --ckpt CKPT --tensorboard logs
""",
    )
    score.add_argument(
        "--tensorboard", metavar="DIR", help="also log the event to a TensorBoard run under DIR"
    )
    score.add_argument(
        "--resume",
        action="store_true",
        help="with --shard-batches: continue an interrupted score of this checkpoint from its saved "
        "eigenpairs and complete score shards (without it, the analysis starts over)",
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
        "-k", type=_number(int, False, 1), default=5, help="proponents and opponents per example"
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
            "(residual / |lambda|; small means converged). The default thick-restart fit stops "
            "when every pair reaches --restart-tol; a fixed-n Arnoldi fit (--solver arnoldi) is "
            "judged at 1e-2: if its tail is large, raise --n-iters. "
            "Negative eigenvalues are normal away from a minimum; see --eigenvalue-policy. "
            "--event reads an event folder written by score or InfluenceCallback instead."
        ),
        epilog=_MODEL_HELP
        + """
examples:
  lightning-influence spectrum --config config.yaml --ckpt CKPT --top-k 20 --plot spectrum.png
  lightning-influence spectrum --event logs/version_0/influence/arnoldi-<hash>/epoch=9-step=500
""",
    )
    spectrum.add_argument(
        "--event", metavar="DIR", help="read eigenvalues.csv of an event folder (no computation)"
    )
    spectrum.add_argument("--plot", metavar="PNG", help="save a plot (needs matplotlib)")
    spectrum.add_argument("--csv", metavar="FILE", help="save the table as CSV")
    return parser
