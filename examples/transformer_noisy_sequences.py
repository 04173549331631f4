"""A Transformer end to end: find the corrupted training sequences of a sorting task.

The task, generated in code (nothing is downloaded): the input is a sequence of 4 to 12 tokens
drawn from ``1 .. vocab-1`` and the target is the same tokens sorted, position by position, so
``y[t]`` is the t-th smallest input token. Sequences of one batch are padded with ``PAD = 0`` to
the longest one. A fraction (``--noise``, 15% by default) of the training sequences get corrupted
targets: random tokens at every real position, which no sorting rule explains.

The model is a small pre-LayerNorm Transformer encoder built from ``torch.nn`` only
(``nn.TransformerEncoderLayer``; padding enters as ``src_key_padding_mask``), trained by a Lightning
``Trainer``. One example's loss is the mean token cross-entropy over its real positions, padding
masked, which is what ``lightning_influence.losses.cross_entropy_loss`` computes for logits
``[B, C, T]``, targets ``[B, T]`` and ``ignore_index=PAD``. The LightningModule says so in

    def influence_loss(self, batch) -> Tensor[B]:
        return cross_entropy_loss(self, batch, ignore_index=PAD)

which training also uses (its batch mean), and which ``InfluenceCallback`` finds by itself.

Two callbacks in the one Trainer analyse the final weights with different parameter subsets, as
in Table 2 of Schioppa et al. (AAAI 2022): every parameter, and only the last encoder block with
the final norm and the output head (``params=["encoder.layers.1", "norm", "head"]``: module
prefixes). For each subset the example prints the number of parameters analysed, how well
self-influence ``I(x, x) = sum_i w_i <e_i, g_x>^2`` finds the corrupted sequences (ROC AUC and
average precision) beside the same figures for the per-example loss, the top eigenvalues of the
Hessian with their relative residuals ``||H e_i - lambda_i e_i|| / |lambda_i|`` (small: converged),
and where the event files are.

    PYTHONPATH=. python examples/transformer_noisy_sequences.py            # 1-2 minutes on 2 CPUs
    PYTHONPATH=. python examples/transformer_noisy_sequences.py --quick    # seconds, tiny sizes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from lightning_influence import InfluenceCallback, read_event
from lightning_influence.io import latest_event_dir
from lightning_influence.losses import cross_entropy_loss

PAD = 0  # the padding token of inputs and targets; never a real token


class SortingSequences(Dataset):
    """Variable-length sequences ``(tokens [L], targets [L])`` with ``targets = sorted(tokens)``.

    ``corrupted[i]`` is True where example i's targets were replaced by random tokens.
    """

    def __init__(
        self,
        size: int,
        *,
        vocab: int,
        min_len: int,
        max_len: int,
        noise: float = 0.0,
        seed: int = 0,
    ) -> None:
        rng = np.random.default_rng(seed)
        lengths = rng.integers(min_len, max_len + 1, size)
        self.tokens = [torch.from_numpy(rng.integers(1, vocab, n)) for n in lengths]
        self.targets = [t.sort().values for t in self.tokens]
        self.corrupted = rng.random(size) < noise
        for i in np.flatnonzero(self.corrupted):
            self.targets[i] = torch.from_numpy(rng.integers(1, vocab, lengths[i]))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.tokens[i], self.targets[i]


def pad_batch(items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Collate: pad inputs and targets with ``PAD`` to the longest sequence, ``[B, T]`` each.

    The analysis reuses the train loader's ``collate_fn``, so its batches are padded the same way.
    """
    tokens, targets = zip(*items, strict=True)
    return (
        pad_sequence(list(tokens), batch_first=True, padding_value=PAD),
        pad_sequence(list(targets), batch_first=True, padding_value=PAD),
    )


class SequenceTransformer(pl.LightningModule):
    """Token and learned position embeddings, a pre-LN ``nn.TransformerEncoder``, a linear head."""

    def __init__(
        self,
        vocab: int = 16,
        max_len: int = 12,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff: int = 128,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Embedding(max_len, d_model)
        block = nn.TransformerEncoderLayer(
            d_model, heads, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        # Nested tensors only speed up no-grad inference, and are off with norm_first anyway.
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens [B, T]`` -> logits ``[B, vocab, T]`` (classes second, as cross-entropy wants)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.embed(tokens) + self.position(positions)
        # Padding is masked as a key, so no real position sees it: a sequence's outputs do not
        # depend on how much padding its batch adds. (The analysis itself switches attention to
        # its math kernels, whose derivatives exist in every mode.)
        h = self.encoder(h, src_key_padding_mask=tokens == PAD)
        return self.head(self.norm(h)).transpose(1, 2)

    def influence_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """``[B]``: each sequence's mean cross-entropy over its real (non-padding) positions."""
        return cross_entropy_loss(self, batch, ignore_index=PAD)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.influence_loss(batch).mean()  # one definition of the loss for both
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.hparams.lr,
            total_steps=self.trainer.estimated_stepping_batches,
            pct_start=0.1,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC: the chance that a random positive outscores a random negative (ties count half)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(scores, kind="mergesort")
    ordered = scores[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]  # first of each group of equal scores
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(scores)])
    ranks = np.empty(len(scores))
    ranks[order] = (first + (counts + 1) / 2)[np.cumsum(starts) - 1]  # 1-based, ties averaged
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP ``= sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, highest first
    (precision P and recall R of "score >= threshold"; the definition sklearn uses)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    last = np.r_[ordered[1:] != ordered[:-1], True]  # last of each group of equal scores
    true_positives = np.cumsum(positive[order])[last]
    precision = true_positives / (np.flatnonzero(last) + 1)
    recall_gain = np.diff(np.r_[0, true_positives]) / positive.sum()
    return float((recall_gain * precision).sum())


def found_in_top(scores: np.ndarray, positive: np.ndarray) -> int:
    """How many positives rank among the ``positive.sum()`` highest scores."""
    top = np.argsort(-np.asarray(scores), kind="mergesort")[: int(positive.sum())]
    return int(np.asarray(positive)[top].sum())


@torch.no_grad()
def per_example_losses(model: SequenceTransformer, loader: DataLoader) -> Tensor:
    """``[N]`` the influence loss of every example, in loader order, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.influence_loss(batch) for batch in loader]).double()
    finally:
        model.train(was_training)


@torch.no_grad()
def sequence_accuracy(model: SequenceTransformer, loader: DataLoader) -> tuple[float, float]:
    """(token accuracy, whole-sequence accuracy) over the real positions."""
    was_training = model.training
    model.eval()
    right = total = exact = count = 0
    try:
        for tokens, targets in loader:
            predicted = model(tokens).argmax(dim=1)
            real = targets != PAD
            correct = (predicted == targets) & real
            right += int(correct.sum())
            total += int(real.sum())
            exact += int((correct | ~real).all(dim=1).sum())
            count += len(tokens)
    finally:
        model.train(was_training)
    return right / total, exact / count


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests, a first look)")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--noise", type=float, default=0.15, help="share of corrupted targets")
    parser.add_argument("--vocab", type=int, default=16, help="tokens 1..vocab-1, and PAD=0")
    parser.add_argument("--min-len", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=12)
    parser.add_argument("--layers", type=int, default=2, help="encoder blocks")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-iters", type=int, default=60, help="Arnoldi iterations n")
    parser.add_argument("--top-k", type=int, default=20, help="eigenpairs p kept")
    parser.add_argument("--hvp-samples", type=int, default=256, help="HVP sample size")
    parser.add_argument("--logdir", default="influence_logs/transformer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.epochs, args.d_model = 200, 2, 16
        args.n_iters, args.top_k, args.hvp_samples = 8, 4, 64
    torch.set_num_threads(1)
    pl.seed_everything(args.seed, verbose=False)
    started = time.perf_counter()

    sizes = {"vocab": args.vocab, "min_len": args.min_len, "max_len": args.max_len}
    train = SortingSequences(args.train_size, noise=args.noise, seed=args.seed, **sizes)
    test = SortingSequences(500, seed=args.seed + 1, **sizes)  # clean
    train_loader = DataLoader(train, batch_size=64, shuffle=True, collate_fn=pad_batch)
    model = SequenceTransformer(
        vocab=args.vocab,
        max_len=args.max_len,
        d_model=args.d_model,
        heads=4,
        layers=args.layers,
        ff=2 * args.d_model,
    )

    # Two analyses of the same weights: every parameter, and the last block with the head.
    subsets = {
        "all": None,
        "last-block": [f"encoder.layers.{args.layers - 1}", "norm", "head"],
    }
    callbacks = {
        name: InfluenceCallback(  # no loss_fn: the module's influence_loss is used
            name=name,  # the folder influence/<name>/ (two callbacks, two folders)
            params=params,
            every_n_epochs=0,  # only at the end of training
            n_iters=args.n_iters,
            top_k=args.top_k,
            hvp_samples=args.hvp_samples,
            batch_size=256,  # analysis batches; training keeps its 64
            on_error="raise",  # without the analysis there is nothing to report
            progress=False,
        )
        for name, params in subsets.items()
    }
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=TensorBoardLogger(args.logdir, name="sorting"),
        callbacks=list(callbacks.values()),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, train_dataloaders=train_loader)

    ordered = DataLoader(train, batch_size=256, collate_fn=pad_batch)  # dataset-index order
    losses = per_example_losses(model, ordered).numpy()
    corrupted = train.corrupted
    token_acc, seq_acc = sequence_accuracy(
        model, DataLoader(test, batch_size=256, collate_fn=pad_batch)
    )
    total_params = sum(p.numel() for p in model.parameters())
    print(
        f"{len(train)} training sequences (lengths {args.min_len}-{args.max_len}, vocab "
        f"{args.vocab}), {int(corrupted.sum())} with corrupted targets; {total_params:,} "
        f"parameters; clean test accuracy {token_acc:.3f} per token, {seq_acc:.3f} per sequence"
    )
    loss_auc, loss_ap = roc_auc(losses, corrupted), average_precision(losses, corrupted)
    report: dict[str, Any] = {
        "log_dir": trainer.log_dir,
        "train": train,
        "model": model,
        "losses": losses,
        "subsets": {},
    }
    n_corrupted = int(corrupted.sum())
    for name in callbacks:
        # The report reads what the callback wrote: influence/<name>/epoch=E-step=S/.
        event = read_event(latest_event_dir(Path(trainer.log_dir, "influence", name)))
        scores = event.self_influence.numpy()
        relative = (event.residuals / event.eigenvalues.abs()).numpy()
        auc, ap = roc_auc(scores, corrupted), average_precision(scores, corrupted)
        shown = ", ".join(f"{v:.4g}" for v in event.eigenvalues[:5].tolist())
        print(f"[{name}] {event.manifest['num_params']:,} parameters analysed")
        print(
            f"  self-influence    AUC {auc:.3f}  AP {ap:.3f}  "
            f"{found_in_top(scores, corrupted)} of {n_corrupted} corrupted in the top {n_corrupted}"
        )
        print(
            f"  loss (baseline)   AUC {loss_auc:.3f}  AP {loss_ap:.3f}  "
            f"{found_in_top(losses, corrupted)} of {n_corrupted} corrupted in the top {n_corrupted}"
        )
        print(
            f"  top eigenvalues {shown}; relative residuals {relative[0]:.1e} (top) to "
            f"{relative.max():.1e} (worst of {len(relative)})"
        )
        print(f"  events: {event.directory}")
        report["subsets"][name] = {"auc": auc, "ap": ap, "event": event}
    print(f"TensorBoard: tensorboard --logdir {Path(trainer.log_dir)}")
    print(f"wall time {time.perf_counter() - started:.0f} s")
    return report


if __name__ == "__main__":
    main()
