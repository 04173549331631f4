"""Hugging Face ``transformers`` models, with and without ``peft`` LoRA adapters, end to end.

Every model is built from a small config (random weights, nothing downloaded). Scores are
compared across projection routes in float64: the one-example-at-a-time fallback (``loop``) that
``projection='auto'`` takes when ``vmap`` cannot trace a model (GPT-2 and BERT with SDPA
attention check their padding mask with a data-dependent ``if``) against the ``vmap`` route on the
same weights with eager attention, which ``vmap`` can trace.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from lightning_influence import (  # noqa: E402
    ArnoldiInfluence,
    ConfigurationError,
    InfluenceCallback,
    InfluenceDataModule,
    PruningConfig,
)
from lightning_influence.losses import (  # noqa: E402
    causal_lm_loss,
    sequence_classification_loss,
)

VOCAB, CLASSES, PAD = 60, 3, 0
FAST = {"n_iters": 6, "top_k": 3, "progress": False}


def gpt2(*, lora: bool = True, attention: str = "sdpa", head: str = "cls") -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        n_positions=32,
        vocab_size=VOCAB,
        pad_token_id=PAD,
        bos_token_id=PAD,
        eos_token_id=PAD,
        num_labels=CLASSES,
        attn_implementation=attention,
    )
    if head == "cls":
        model = transformers.GPT2ForSequenceClassification(config)
    else:
        model = transformers.GPT2LMHeadModel(config)
    if not lora:
        return model
    task = "SEQ_CLS" if head == "cls" else "CAUSAL_LM"
    adapters = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True, task_type=task
    )
    return peft.get_peft_model(model, adapters)


def bert(*, lora: bool = True) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=CLASSES,
        pad_token_id=PAD,
    )
    model = transformers.BertForSequenceClassification(config)
    if not lora:
        return model
    adapters = peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    return peft.get_peft_model(model, adapters)


class Sequences(Dataset):
    """Sequences of 4..10 tokens; the label is the first token modulo the classes."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(4, 11, (n,), generator=g).tolist()
        self.items = [torch.randint(1, VOCAB, (length,), generator=g) for length in lengths]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tensor:
        return self.items[i]


def pad(items: list[Tensor], *, width: int | None = None) -> dict[str, Tensor]:
    """A tokenizer's padded dict batch (right padding, ``labels`` the class)."""
    width = width or max(len(t) for t in items)
    ids = torch.full((len(items), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, tokens in enumerate(items):
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
    labels = torch.stack([t[0] % CLASSES for t in items])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(n: int = 8, size: int = 4, seed: int = 0) -> list[dict[str, Tensor]]:
    data = Sequences(n, seed)
    return [pad([data[j] for j in range(i, min(i + size, n))]) for i in range(0, n, size)]


def signals(model: nn.Module, loss, data, projection: str = "auto", **kwargs) -> Any:
    engine = ArnoldiInfluence(model, loss, projection=projection, **FAST, **kwargs).fit(data)
    return engine, engine.self_influence(data)


# ---- the Lightning path ------------------------------------------------------------------------


class Classifier(pl.LightningModule):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def influence_loss(self, batch: Any) -> Tensor:
        return sequence_classification_loss(self, batch)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.influence_loss(batch).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)


class Data(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train, self.val = Sequences(24, 0), Sequences(8, 1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, 8, shuffle=True, collate_fn=pad)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, 8, collate_fn=pad)


def fit(tmp_path, model: nn.Module, loss=None, epochs: int = 2) -> InfluenceCallback:
    callback = InfluenceCallback(loss, hvp_samples=16, dirpath=tmp_path / "events", **FAST)
    datamodule = InfluenceDataModule(
        Data(), config=PruningConfig(fraction=0.25, start_epoch=1), source=callback
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(Classifier(model), datamodule=datamodule)
    return callback


@pytest.mark.slow
@pytest.mark.parametrize("build", [gpt2, bert], ids=["gpt2-lora", "bert-lora"])
def test_lora_model_through_a_trainer_fit(tmp_path, build):
    model = build()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    callback = fit(tmp_path, model)

    (event,) = callback.events[-1:]
    expected = {"loss", "self_influence", "validation_influence", "aum", "loss_mean"}
    assert expected <= set(event.signals)
    # the plan drops 25%: the influence signals (and the loss) are computed for the 3 x 25% of
    # the examples with the lowest AUM (score_candidates=3), the training dynamics for all
    scored = event.manifest["scored_examples"]
    assert scored == 18
    for name in expected:
        values = event.signals[name]
        finite = int(torch.isfinite(values).sum())
        assert values.shape == (24,) and finite == (24 if name in ("aum", "loss_mean") else 18), (
            name
        )
    # the adapters and the head only: today's rule, "the parameters that require grad"
    assert event.manifest["num_params"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    assert event.manifest["projection_mode"] in {"hooks", "grad", "jvp", "loop"}
    assert event.eigenvalues.numel() == 3 and torch.isfinite(event.eigenvalues).all()


# ---- routes ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_loop_fallback_equals_the_vmap_route():
    data = batches()
    # full GPT-2 with SDPA attention: the hooks check fails (position embeddings broadcast over
    # the batch) and vmap cannot trace the padding-mask check, so 'auto' falls back to 'loop'
    sdpa = gpt2(lora=False).double()
    with pytest.warns(RuntimeWarning, match="vmap cannot trace"):
        engine, chosen = signals(sdpa, sequence_classification_loss, data)
    assert engine.projection_mode_ in {"loop", "jvp"}  # the faster of the two that work, timed
    assert any("vmap cannot trace" in note for note in engine.route_notes)
    _, fallback = signals(sdpa, sequence_classification_loss, data, "loop")
    # the same weights with eager attention, which vmap traces
    eager = gpt2(lora=False, attention="eager").double()
    eager.load_state_dict(sdpa.state_dict())
    reference_engine, reference = signals(eager, sequence_classification_loss, data, "grad")
    torch.testing.assert_close(engine.eigenvalues, reference_engine.eigenvalues, rtol=1e-9, atol=0)
    torch.testing.assert_close(fallback, reference, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(chosen, reference, rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_lora_routes_agree_in_float64():
    data = batches()
    model = gpt2(attention="eager").double()
    results = {route: signals(model, sequence_classification_loss, data, route)[1]
               for route in ("hooks", "grad", "loop")}  # fmt: skip
    for route in ("grad", "loop"):
        torch.testing.assert_close(results[route], results["hooks"], rtol=1e-9, atol=1e-12)
    engine, _ = signals(model, sequence_classification_loss, data)
    assert engine.projection_mode_ == "hooks"  # LoRA's A and B are nn.Linear; the head too


@pytest.mark.slow
def test_batch_encoding_batches_score_like_dicts():
    data = batches()
    encoded = [transformers.BatchEncoding(b) for b in data]
    model = gpt2(attention="eager").double()
    _, plain = signals(model, sequence_classification_loss, data, "grad")
    _, wrapped = signals(model, sequence_classification_loss, encoded, "grad")
    torch.testing.assert_close(wrapped, plain, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_causal_lm_loss_ignores_padding_and_masked_labels():
    model = gpt2(head="lm", attention="eager").double().eval()  # no dropout
    items = Sequences(6, 3).items

    def lm_batch(width: int) -> dict[str, Tensor]:
        batch = pad(items, width=width)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        labels[:, :2] = -100  # a prompt that is not learned
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "labels": labels}  # fmt: skip

    short, long = [lm_batch(10)], [lm_batch(16)]
    losses = causal_lm_loss(model, short[0])
    assert losses.shape == (6,) and torch.isfinite(losses).all()
    # by hand: the mean over the predicted positions 2..len-1 of each sequence
    logits = model(input_ids=short[0]["input_ids"]).logits
    for row, tokens in enumerate(items):
        targets = tokens[2:]
        expected = F.cross_entropy(logits[row, 1 : len(tokens) - 1], targets)
        torch.testing.assert_close(losses[row], expected, rtol=1e-10, atol=0)
    engine, first = signals(model, causal_lm_loss, short, "grad")
    second = engine.self_influence(long)  # six more padding positions change nothing
    torch.testing.assert_close(second, first, rtol=1e-8, atol=1e-12)
    assert engine.space.dim == sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- bad input ---------------------------------------------------------------------------------


def test_merged_adapters_are_refused():
    model = gpt2()
    model.merge_adapter()
    with pytest.raises(ConfigurationError, match=r"merged into the base weights.*unmerge"):
        ArnoldiInfluence(model, sequence_classification_loss, **FAST).fit(batches(4))
    model.unmerge_adapter()
    ArnoldiInfluence(model, sequence_classification_loss, **FAST).fit(batches(4))


def test_inputs_the_forward_refuses_or_misses_are_named():
    model = gpt2()

    class Strict(nn.Module):  # a LightningModule-style forward: no **kwargs
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Tensor, *, attention_mask: Tensor) -> Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    # (Hugging Face models themselves take **kwargs and ignore an unknown key.)
    extra = [{**b, "lengths": b["attention_mask"].sum(1)} for b in batches(4)]
    with pytest.raises(ConfigurationError, match=r"forward refused the batch's inputs.*lengths"):
        ArnoldiInfluence(Strict(), sequence_classification_loss, **FAST).fit(extra)

    def forgets_the_mask(m: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(m(b["input_ids"]), b["labels"], reduction="none")

    with pytest.raises(ConfigurationError, match=r"raised TypeError on batch 0 .*attention_mask"):
        ArnoldiInfluence(Strict(), forgets_the_mask, **FAST).fit(batches(4))


def test_the_callback_names_a_missing_input_before_training(tmp_path):
    def forgets_the_mask(m: nn.Module, b: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(m(b), b["labels"], reduction="none")  # the dict as one input

    with pytest.raises(MisconfigurationException, match="raised TypeError on the first training"):
        fit(tmp_path, gpt2(), loss=forgets_the_mask, epochs=1)
    assert not any((tmp_path / "events").glob("**/signals.csv"))


def test_sequence_loss_needs_labels():
    batch = batches(4)[0]
    del batch["labels"]
    with pytest.raises(ConfigurationError, match="needs the batch's 'labels'"):
        sequence_classification_loss(gpt2(), batch)
    assert math.isfinite(float(sequence_classification_loss(gpt2(), batches(4)[0]).detach().sum()))
