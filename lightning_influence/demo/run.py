"""Demo: prune flipped labels while training, with InfluenceCallback and InfluenceDataModule.

Run with ``python -m lightning_influence.demo`` or ``lightning-influence-demo``; ``--seeds 0 1 2``
runs the 3-seed benchmark. A small CNN learns scikit-learn's digits (bundled, no download) with a
fraction of the training labels flipped (20% by default) and 180 clean digits held out for
validation. In the pruned run, ``InfluenceCallback`` analyses the model every ``--score-every``
epochs (10: after epochs 10, 20 and 30 of 30; the last analysis feeds no plan, it shows the final
model in TensorBoard), computing the influence of the ``--score-candidates`` x ``--fraction``
examples with the lowest AUM, and ``InfluenceDataModule`` drops the most suspect
``--fraction`` from the following epochs by the product's default signal (``signal="auto"``: the
rank mean of the AUM and the validation influence of the worst validation class, see
``examples/benchmarks/results/pruning.md``), by the newest analysis (``--combine latest``). The
same model (same seed, same epochs, same data order until pruning) is also trained on the noisy
labels without pruning, on the clean labels, and pruned by the per-example loss at the same epochs
(the simple baseline). The report gives the top of the spectrum, how well each signal of the first
analysis finds the flipped labels (the default beside the loss, the AUM and self-influence: average
precision, and precision of the top ``--fraction``), the test accuracies, the share of the accuracy
lost to noise that pruning wins back, the cost, and where the TensorBoard logs are.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_influence.config import COMBINE_MODES, AnalysisConfig
from lightning_influence.demo.data import Digits, DigitsData, load
from lightning_influence.demo.model import DigitsCNN
from lightning_influence.io.events import ScoringEvent
from lightning_influence.lightning.callback import InfluenceCallback
from lightning_influence.lightning.datamodule import InfluenceDataModule
from lightning_influence.losses import cross_entropy_loss

__all__ = ["ARMS", "main", "run"]

ARMS = ("clean", "noisy", "pruned", "loss-pruned")


class LossScores(pl.Callback):
    """The per-example loss at the end of an epoch, as a scoring event (the baseline score).

    With ``feed=True`` the event goes to the InfluenceDataModule, which then prunes by loss.
    """

    def __init__(self, every_n_epochs: int, feed: bool) -> None:
        self.every_n_epochs = every_n_epochs
        self.feed = feed
        self.events: list[ScoringEvent] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dataset = trainer.train_dataloader.dataset
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            losses = torch.cat(
                [cross_entropy_loss(pl_module, b) for b in DataLoader(dataset, batch_size=512)]
            )
        pl_module.train(was_training)
        event = ScoringEvent(
            trainer.current_epoch, trainer.global_step, {"loss": losses.double()}, torch.zeros(0)
        )
        self.events.append(event)
        if self.feed:
            trainer.datamodule.add_event(event)


@dataclass
class ArmResult:
    accuracy: float
    seconds: float
    dropped: Tensor | None = None
    eigenvalues: Tensor | None = None
    si_event: ScoringEvent | None = None
    loss_event: ScoringEvent | None = None
    log_dir: str | None = None


def run_arm(arm: str, data: Digits, seed: int, args: argparse.Namespace) -> ArmResult:
    """Train one arm (see ``ARMS``) for ``args.epochs`` epochs; every arm starts from ``seed``."""
    pl.seed_everything(seed, verbose=False)
    inner = DigitsData(data, clean=arm == "clean", batch_size=args.batch_size)
    pruning = arm in ("pruned", "loss-pruned")
    dm = InfluenceDataModule(
        inner,
        mode="drop",
        fraction=args.fraction if pruning else 0.0,
        combine=args.combine,
        labels=lambda ds: ds.tensors[1],
        known_noise=data.flipped,  # TensorBoard then shows the dropped set's precision
        seed=seed,
    )
    callbacks: list[pl.Callback] = []
    influence = None
    if arm == "pruned":
        influence = InfluenceCallback(
            cross_entropy_loss,
            every_n_epochs=args.score_every,
            at_train_end=False,
            n_iters=args.n_iters,
            top_k=args.top_k,
            hvp_samples=args.hvp_samples or None,
            batch_size=256,  # the analysis' loader: a small CNN is analysed faster in big batches
            seed=seed,
            max_events=args.max_events,
            score_candidates=args.score_candidates or None,
        )
        callbacks.append(influence)
    losses = LossScores(args.score_every, feed=arm == "loss-pruned") if pruning else None
    if losses is not None:
        callbacks.append(losses)
    # a new version folder per run: a rerun never meets (and never overwrites) the last one's events
    logger = TensorBoardLogger(args.logdir, name=f"seed{seed}/{arm}")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    model = DigitsCNN(lr=args.lr)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    seconds = time.perf_counter() - start
    accuracy = trainer.test(model, datamodule=dm, verbose=False)[0]["test/accuracy"]
    result = ArmResult(accuracy, seconds, log_dir=logger.log_dir)
    if pruning and dm.keep_mask is not None:
        result.dropped = ~dm.keep_mask
    if influence is not None and influence.events:
        result.si_event = influence.events[0]
        result.eigenvalues = influence.latest_event.eigenvalues
    if losses is not None and losses.events:
        result.loss_event = losses.events[0]
    return result


def precision_recall(dropped: Tensor, flipped: Tensor) -> tuple[float, float]:
    hits = int((dropped & flipped).sum())
    return hits / max(int(dropped.sum()), 1), hits / max(int(flipped.sum()), 1)


def top_precision_recall(scores: Tensor, flipped: Tensor, count: int) -> tuple[float, float]:
    dropped = torch.zeros_like(flipped)
    dropped[torch.argsort(scores, descending=True)[:count]] = True
    return precision_recall(dropped, flipped)


def detection(
    event: ScoringEvent, flipped: Tensor, count: int, loss: Tensor | None = None
) -> dict[str, tuple[float, float]]:
    """Average precision and top-``count`` precision of the event's signals against the flipped
    labels: the default (``signal="auto"``) first, then the loss (``loss``: every example's,
    when the analysis scored only the candidates), the AUM and self-influence. An example an
    analysis did not score (NaN) ranks below every scored one, as in the pruning plan."""
    from sklearn.metrics import average_precision_score

    from lightning_influence.pruning import suspicion
    from lightning_influence.pruning.signals import resolve_selection

    signals = dict(event.signals) if loss is None else {**event.signals, "loss": loss}
    rows: dict[str, tuple[float, float]] = {}
    default = resolve_selection("auto", list(signals))
    arms = [("default: " + " + ".join(default), default)]
    arms += [(n, (n,)) for n in ("loss", "aum", "self_influence") if n in signals]
    for label, names in arms:
        score = suspicion(signals, list(names))
        if bool(torch.isnan(score).any()):
            finite = score[~torch.isnan(score)]
            low = float(finite.min()) - 1.0 if finite.numel() else 0.0
            score = torch.nan_to_num(score, nan=low)
        ap = float(average_precision_score(flipped.numpy(), score.numpy()))
        rows[label] = (ap, top_precision_recall(score, flipped, count)[0])
    return rows


def run(argv: list[str] | None = None) -> dict[int, dict[str, ArmResult]]:
    """Parse ``argv``, train every arm for every seed, print the report; the results by seed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.2, help="fraction of labels flipped")
    parser.add_argument("--fraction", type=float, default=0.2, help="fraction of train dropped")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--score-every", type=int, default=10, help="InfluenceCallback every_n_epochs"
    )
    parser.add_argument("--combine", choices=COMBINE_MODES, default="latest")
    parser.add_argument("--max-events", type=int, default=None)
    defaults = AnalysisConfig()  # the product's: the demo shows them unless told otherwise
    parser.add_argument("--n-iters", type=int, default=defaults.n_iters, help="Lanczos basis size")
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument(
        "--score-candidates",
        type=float,
        default=3.0,
        help="the product default: influence for the top 3 x fraction by AUM; 0: every example",
    )
    parser.add_argument(
        "--hvp-samples",
        type=int,
        default=defaults.hvp_samples,
        help="the product default; 0: the whole train set",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--logdir", default="influence_logs/demo")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (a tiny CNN gains nothing from more)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Lightning's per-run banners (GPU/TPU availability, tips, why fit stopped) would drown the
    # report; InfluenceDataModule's own messages (what it drops) stay.
    for name in _RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(_drop_trainer_banners)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*no `validation_step`.*")  # the val set is the callback's

    results: dict[int, dict[str, ArmResult]] = {}
    for seed in args.seeds:
        data = load(args.noise, seed)
        flipped = data.flipped
        print(
            f"\n== seed {seed}: {len(data.y_true)} training digits, {int(flipped.sum())} labels "
            f"flipped ({args.noise:.0%}), {0 if data.y_val is None else len(data.y_val)} clean "
            f"validation digits, {len(data.y_test)} clean test digits"
        )
        results[seed] = {arm: run_arm(arm, data, seed, args) for arm in args.arms}
        res = results[seed]
        pruned = res.get("pruned")
        if pruned is not None and pruned.eigenvalues is not None and pruned.si_event is not None:
            print(
                "top of the spectrum:",
                " ".join(f"{v:.3g}" for v in pruned.eigenvalues[:8].tolist()),
            )
            count = int(args.fraction * len(flipped))
            event = pruned.si_event
            cost = event.manifest.get("cost_epochs")
            scored = event.manifest.get("scored_examples", len(flipped))
            print(
                f"analysed at epoch {event.epoch}"
                + (f" (cost: {cost:.1f} training epochs)" if cost is not None else "")
                + (
                    f", influence for the {scored} most suspect by AUM"
                    if scored < len(flipped)
                    else ""
                )
                + f"; finding the {int(flipped.sum())} flipped labels:"
            )
            loss = pruned.loss_event.signals["loss"] if pruned.loss_event is not None else None
            for name, (ap, p) in detection(event, flipped, count, loss).items():
                print(f"  {name:<40} AP {ap:.3f}   precision of the top {count} {p:.2f}")
        for arm, r in res.items():
            line = f"  {arm:<12} test accuracy {r.accuracy:.4f}   ({r.seconds:.1f} s)"
            if r.dropped is not None:
                p, rc = precision_recall(r.dropped, flipped)
                line += f"   dropped {int(r.dropped.sum())} (precision {p:.2f}, recall {rc:.2f})"
            print(line)
        if {"clean", "noisy", "pruned"} <= res.keys():
            lost = res["clean"].accuracy - res["noisy"].accuracy
            back = res["pruned"].accuracy - res["noisy"].accuracy
            print(f"  noise costs {lost:.4f}; pruning recovers {back:.4f} ({_share(back, lost)})")

    if len(args.seeds) > 1 and {"clean", "noisy", "pruned"} <= set(args.arms):
        print(f"\n== {len(args.seeds)} seeds (target: pruning recovers >= half of the cost)")
        shares = []
        for seed, res in results.items():
            lost = res["clean"].accuracy - res["noisy"].accuracy
            back = res["pruned"].accuracy - res["noisy"].accuracy
            shares.append(back / lost if lost > 0 else float("nan"))
            print(f"  seed {seed}: recovered {_share(back, lost)}")
        for arm in args.arms:
            accs = [results[s][arm].accuracy for s in args.seeds]
            print(f"  {arm:<12} mean test accuracy {statistics.mean(accs):.4f}")
        ok = all(s >= 0.5 for s in shares)
        print(f"  target met on every seed: {'yes' if ok else 'no'}")
    print(f"\nTensorBoard: tensorboard --logdir {Path(args.logdir).resolve()}")
    return results


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``lightning-influence-demo``."""
    run(argv)


# Lightning's info messages go to one shared logger, named after whichever of its packages was
# imported last (importing lightning_influence probes both namespaces).
_RANK_ZERO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


def _drop_trainer_banners(record: logging.LogRecord) -> bool:
    """False for an info message of Lightning's own code (accelerators, tips, why fit stopped)."""
    path = record.pathname.replace("\\", "/")
    lightning = "/pytorch_lightning/" in path or "/lightning/pytorch/" in path
    return not (lightning and record.levelno <= logging.INFO)


def _share(back: float, lost: float) -> str:
    return f"{back / lost:.0%} of it" if lost > 0 else "noise cost nothing"


if __name__ == "__main__":
    main()
