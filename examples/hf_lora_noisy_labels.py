"""A Hugging Face model with LoRA adapters in Lightning: find and drop the mislabeled sequences.

The task, generated in code (nothing is downloaded): ``--classes`` topics, each with its own
keywords. A sequence of 8 to 24 tokens mixes common words (shared by every topic) with a few
keywords of its topic; the label is the topic. Batches are padded with ``PAD = 0`` and come as a
``transformers.BatchEncoding`` (``input_ids``, ``attention_mask``, ``labels``), as a tokenizer's
would. A fraction (``--noise``, 20%) of the training labels are flipped within topic pairs
(0<->1, 2<->3, ...): the systematic confusion of a human annotator. A clean validation split is
held out, as every Lightning user has one.

The model is ``transformers.GPT2ForSequenceClassification`` built from a small config (random
weights, no download) wrapped by ``peft`` with LoRA on the attention's ``c_attn`` (the base frozen;
the adapters and the classification head train). Its loss is
``lightning_influence.losses.sequence_classification_loss``: the per-example cross-entropy of
``model(**inputs).logits`` against ``labels``, the LightningModule's ``influence_loss``.

``InfluenceCallback`` analyses the adapters (the trainable parameters: the default rule) after
``--score-epoch`` epochs and writes every per-example signal: the training loss, ``aum`` and
``loss_mean`` from the training pass, self-influence, and validation influence ``<g_val, H^-1 g_x>``
over the validation set (``validation_influence_min``: the most harmful class). ``InfluenceDataModule``
drops the top ``--fraction`` by the product's default signal for the remaining epochs. The example
prints each signal's detection of the flipped labels (average precision and ROC AUC), the cost of
the analysis in training epochs and the projection route, and the clean test accuracy of the noisy
run beside the pruned one. TensorBoard shows the spectrum, the signals and the dropped examples.

    PYTHONPATH=. python examples/hf_lora_noisy_labels.py            # a few minutes on 2 CPUs
    PYTHONPATH=. python examples/hf_lora_noisy_labels.py --quick    # tiny sizes, a first look
    tensorboard --logdir influence_logs/hf_lora
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_influence import (
    AnalysisConfig,
    InfluenceCallback,
    InfluenceDataModule,
    PruningConfig,
    read_event,
)
from lightning_influence.losses import sequence_classification_loss
from lightning_influence.pruning import suspicion

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # small configs only: never reach the hub

PAD = 0
COMMON = 40  # tokens 1..40 are common words; each topic owns KEYWORDS tokens after them
KEYWORDS = 6


class TopicSequences(Dataset):
    """``n`` sequences of ``classes`` topics: item ``i`` is ``{"input_ids", "labels"}``."""

    def __init__(self, n: int, classes: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.sequences: list[Tensor] = []
        for label in self.labels.tolist():
            length = int(torch.randint(8, 25, (), generator=g))
            tokens = torch.randint(1, COMMON + 1, (length,), generator=g)
            keyword = torch.rand(length, generator=g) < 0.3
            topic = (
                COMMON + 1 + label * KEYWORDS + torch.randint(0, KEYWORDS, (length,), generator=g)
            )
            self.sequences.append(torch.where(keyword, topic, tokens))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.sequences[i], "labels": self.labels[i]}


def flip_pairs(labels: Tensor, fraction: float, classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(noisy labels, flipped mask)``: ``round(fraction * n)`` labels moved to their pair
    (``c ^ 1``: 0<->1, 2<->3, ...; an odd last class keeps its labels)."""
    g = torch.Generator().manual_seed(seed + 1)
    candidates = torch.nonzero((labels ^ 1) < classes).flatten()
    count = min(round(fraction * len(labels)), len(candidates))
    chosen = candidates[torch.randperm(len(candidates), generator=g)[:count]]
    noisy = labels.clone()
    noisy[chosen] = labels[chosen] ^ 1
    return noisy, noisy != labels


def collate(items: list[dict[str, Tensor]]) -> Any:
    """Pad to the longest sequence: a ``BatchEncoding``, as a tokenizer returns."""
    from transformers import BatchEncoding

    longest = max(len(item["input_ids"]) for item in items)
    ids = torch.full((len(items), longest), PAD, dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item["input_ids"])] = item["input_ids"]
        mask[row, : len(item["input_ids"])] = 1
    labels = torch.stack([item["labels"] for item in items])
    return BatchEncoding({"input_ids": ids, "attention_mask": mask, "labels": labels})


def lora_gpt2(classes: int, seed: int, *, layers: int = 2, width: int = 32) -> torch.nn.Module:
    """A GPT-2 sequence classifier from a small config (random weights), LoRA on ``c_attn``."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=layers,
        n_embd=width,
        n_head=2,
        n_positions=64,
        vocab_size=COMMON + 1 + classes * KEYWORDS,
        pad_token_id=PAD,
        bos_token_id=PAD,
        eos_token_id=PAD,
        num_labels=classes,
    )
    base = GPT2ForSequenceClassification(config)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, task_type="SEQ_CLS"
    )
    return get_peft_model(base, lora)


class LoraClassifier(pl.LightningModule):
    """The Hugging Face model in a LightningModule; ``forward`` returns the logits."""

    def __init__(self, classes: int = 4, seed: int = 0, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = lora_gpt2(classes, seed)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def influence_loss(self, batch: Any) -> Tensor:
        return sequence_classification_loss(self, batch)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.influence_loss(batch).mean()
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.influence_loss(batch).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(trainable, lr=self.hparams.lr)


class Labelled(Dataset):
    """``dataset`` with its labels replaced by ``labels``."""

    def __init__(self, dataset: TopicSequences, labels: Tensor) -> None:
        self.dataset, self.labels = dataset, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**self.dataset[i], "labels": self.labels[i]}


class TopicData(pl.LightningDataModule):
    """Noisy training split, clean validation split, clean test split."""

    def __init__(self, train: Dataset, val: Dataset, test: Dataset, batch_size: int) -> None:
        super().__init__()
        self.train, self.val, self.test, self.batch_size = train, val, test, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, self.batch_size, shuffle=True, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, self.batch_size, collate_fn=collate)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, self.batch_size, collate_fn=collate)


def accuracy(model: LoraClassifier, loader: DataLoader) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for batch in loader:
            logits = model(batch["input_ids"], batch["attention_mask"])
            right += int((logits.argmax(1) == batch["labels"]).sum())
            total += len(batch["labels"])
    return right / total


def detection(scores: np.ndarray, flipped: np.ndarray) -> tuple[float, float]:
    """(average precision, ROC AUC) of ``scores`` (high = suspect) against ``flipped``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    return float(average_precision_score(flipped, scores)), float(roc_auc_score(flipped, scores))


def run(args: argparse.Namespace, data: dict[str, Any], prune: bool) -> dict[str, Any]:
    """One training run (the noisy arm, or the arm pruned from ``--score-epoch`` on)."""
    pl.seed_everything(args.seed, workers=True, verbose=False)
    name = "pruned" if prune else "noisy"
    callback = InfluenceCallback(
        config=AnalysisConfig(
            solver="lanczos",
            restart_tol=1e-2,
            n_iters=args.n_iters,
            top_k=args.top_k,
            hvp_samples=args.hvp_samples,
            hvp_cache=True,
            every_n_epochs=args.score_epoch,
            at_train_end=False,
            max_events=1,
            progress=False,
            # every example scored: the report compares each signal's AP over the whole set
            score_candidates=None,
        ),
        name=name,
    )
    datamodule = InfluenceDataModule(
        TopicData(data["train"], data["val"], data["test"], args.batch_size),
        config=PruningConfig(
            mode="drop",
            fraction=args.fraction,
            # the noisy arm records the same signals and never prunes
            start_epoch=args.score_epoch if prune else args.epochs,
        ),
        source=callback,
    )
    model = LoraClassifier(classes=args.classes, seed=args.seed, lr=args.lr)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=TensorBoardLogger(args.logdir, name=name),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    wall = time.perf_counter() - start
    test = DataLoader(data["test"], args.batch_size, collate_fn=collate)
    return {
        "trainer": trainer,
        "callback": callback,
        "datamodule": datamodule,
        "test_accuracy": accuracy(model, test),
        "wall_seconds": wall,
        "log_dir": trainer.log_dir,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests, a first look)")
    parser.add_argument("--train-size", type=int, default=1200)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.2, help="share of labels flipped")
    parser.add_argument("--fraction", type=float, default=0.2, help="share dropped")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--score-epoch", type=int, default=3, help="analyse after this epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-iters", type=int, default=30, help="Lanczos basis size")
    parser.add_argument("--top-k", type=int, default=20, help="eigenpairs p kept")
    parser.add_argument("--hvp-samples", type=int, default=256)
    parser.add_argument("--logdir", default="influence_logs/hf_lora")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.epochs, args.score_epoch = 160, 3, 2
        args.n_iters, args.top_k, args.hvp_samples = 12, 6, 64

    clean = TopicSequences(args.train_size, args.classes, args.seed)
    noisy_labels, flipped = flip_pairs(clean.labels, args.noise, args.classes, args.seed)
    held_out = max(args.train_size // 8, 2 * args.classes)
    data = {
        "train": Labelled(clean, noisy_labels),
        "val": TopicSequences(held_out, args.classes, args.seed + 100),
        "test": TopicSequences(2 * held_out, args.classes, args.seed + 200),
    }

    noisy = run(args, data, prune=False)
    event = read_event(noisy["callback"].events[-1].directory)
    trainable = sum(
        p.numel() for p in noisy["trainer"].lightning_module.parameters() if p.requires_grad
    )
    flipped_np = flipped.numpy()
    rows = {}
    for name in ("loss", "loss_mean", "aum", "self_influence", "validation_influence",
                 "validation_influence_min"):  # fmt: skip
        if name in event.signals:
            rows[name] = detection(suspicion(event.signals, name).numpy(), flipped_np)
    chosen, scores = noisy["datamodule"].ranking(event.signals)
    rows[f"default ({chosen})"] = detection(scores.numpy(), flipped_np)
    manifest = event.manifest
    pruned = run(args, data, prune=True)

    print(f"\nGPT-2 + LoRA: {trainable:,} trainable parameters analysed, {args.train_size} sequences,"
          f" {flipped_np.sum()} labels flipped within topic pairs")  # fmt: skip
    print(f"analysis at epoch {args.score_epoch}: {manifest.get('cost_epochs', float('nan')):.2f} "
          f"training epochs, projection route {manifest.get('projection_mode')!r}")  # fmt: skip
    print(f"{'signal':42s} {'AP':>6s} {'AUC':>6s}")
    for name, (ap, auc) in rows.items():
        print(f"{name:42s} {ap:6.3f} {auc:6.3f}")
    print(f"clean test accuracy: noisy {noisy['test_accuracy']:.3f}, pruned "
          f"{pruned['test_accuracy']:.3f} (wall {pruned['wall_seconds'] / noisy['wall_seconds']:.2f}x"
          " the noisy run's)")  # fmt: skip
    print(f"events and TensorBoard logs under {args.logdir}")
    return {
        "detection": rows,
        "cost_epochs": manifest.get("cost_epochs"),
        "projection_mode": manifest.get("projection_mode"),
        "trainable_parameters": trainable,
        "noisy_accuracy": noisy["test_accuracy"],
        "pruned_accuracy": pruned["test_accuracy"],
        "event_dir": str(Path(event.directory)),
        "log_dir": noisy["log_dir"],
        "dropped": torch.nonzero(~pruned["datamodule"].keep_mask).flatten().tolist(),
        "flipped": torch.nonzero(flipped).flatten().tolist(),
    }


if __name__ == "__main__":
    main()
