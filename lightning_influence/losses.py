"""Per-example losses ``loss_fn(model, batch) -> Tensor[B]``: ready ones, and the contract.

Influence needs one loss per example (``reduction="none"``), computed from the batch exactly as
training computes it. ``cross_entropy_loss`` and ``mse_loss`` cover the usual ``(inputs,
targets)`` batches, ``sequence_classification_loss`` and ``causal_lm_loss`` the dict batches of
Hugging Face models (with LoRA adapters or not); anything else is a three-line function, or an
``influence_loss(self, batch)`` method on the model. ``resolve_loss`` is the one place that decides which of the two is used, and
``check_losses`` the one check that a loss function keeps the contract.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_influence.config import ConfigurationError
from lightning_influence.core.functional_loss import LossFn

__all__ = [
    "LossFn",
    "causal_lm_loss",
    "check_contract",
    "check_losses",
    "cross_entropy_loss",
    "loss_name",
    "mse_loss",
    "resolve_loss",
    "sequence_classification_loss",
]


def _inputs_targets(batch: Any, what: str) -> tuple[Any, Tensor]:
    if isinstance(batch, Mapping):
        inputs = next((batch[k] for k in ("x", "input", "inputs") if k in batch), None)
        targets = next(
            (batch[k] for k in ("y", "target", "targets", "label", "labels") if k in batch), None
        )
        if inputs is not None and targets is not None:
            return inputs, targets
    elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"{what} expects a batch (inputs, targets) or a dict with keys 'x'/'input' and "
        f"'y'/'target'/'label', got {type(batch).__name__}: write your own "
        "loss_fn(model, batch) -> Tensor[B], or an influence_loss(self, batch) method on the "
        "LightningModule"
    )


def cross_entropy_loss(model: nn.Module, batch: Any, *, ignore_index: int = -100) -> Tensor:
    """Per-example cross-entropy for ``(inputs, class-index targets)`` batches.

    ``loss[b] = -log softmax(model(x_b))[y_b]`` for logits ``[B, C]``. For sequences (logits
    ``[B, C, T, ...]``, targets ``[B, T, ...]``) an example's loss is the mean over its real
    positions, those whose target is not ``ignore_index`` (padding):
    ``loss[b] = sum_t l[b, t] / #{t : y[b, t] != ignore_index}`` (0 for an all-padding example).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> cross_entropy_loss(model, (torch.randn(5, 4), torch.randint(0, 3, (5,)))).shape
        torch.Size([5])
    """
    inputs, targets = _inputs_targets(batch, "cross_entropy_loss")
    losses = F.cross_entropy(model(inputs), targets, reduction="none", ignore_index=ignore_index)
    if losses.ndim == 1:
        return losses
    real = (targets != ignore_index).reshape(losses.shape[0], -1)
    total = losses.reshape(losses.shape[0], -1).sum(dim=1)
    return total / real.sum(dim=1).clamp(min=1).to(total.dtype)


def mse_loss(model: nn.Module, batch: Any) -> Tensor:
    """Per-example squared error ``loss[b] = mean_j (model(x_b)_j - y_b,j)^2`` for regression.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> mse_loss(model, (torch.randn(5, 4), torch.randn(5, 2))).shape
        torch.Size([5])
    """
    inputs, targets = _inputs_targets(batch, "mse_loss")
    outputs = model(inputs)
    losses = F.mse_loss(outputs, targets.to(outputs.dtype).reshape(outputs.shape), reduction="none")
    return losses.reshape(losses.shape[0], -1).mean(dim=1)


def _model_inputs(batch: Any, what: str) -> dict[str, Any]:
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"{what} expects a dict batch (a tokenizer's output: input_ids, attention_mask, "
            f"labels), got {type(batch).__name__}"
        )
    if "labels" not in batch:
        raise ConfigurationError(
            f"{what} needs the batch's 'labels'; the batch holds {', '.join(map(str, batch))}"
        )
    return {k: v for k, v in batch.items() if k != "labels"}


def _call(model: nn.Module, inputs: dict[str, Any], what: str) -> Tensor:
    try:
        outputs = model(**inputs)
    except TypeError as err:
        raise ConfigurationError(
            f"{what}: the model's forward refused the batch's inputs {sorted(inputs)} ({err}): "
            "give the batch the inputs the model needs (and no others), or write your own "
            "loss_fn(model, batch)"
        ) from err
    logits = getattr(outputs, "logits", outputs)
    if not isinstance(logits, Tensor):
        raise ConfigurationError(
            f"{what}: the model returned {type(outputs).__name__} without logits: write your own "
            "loss_fn(model, batch)"
        )
    return logits


def sequence_classification_loss(model: nn.Module, batch: Any) -> Tensor:
    """Per-example cross-entropy of a sequence classifier on dict batches (a Hugging Face
    model, ``AutoModelForSequenceClassification``-style, LoRA-wrapped or not).

    ``loss[b] = -log softmax(model(**inputs).logits[b])[labels[b]]`` where ``inputs`` are the
    batch's entries other than ``labels`` (``input_ids``, ``attention_mask``, ...).

    Example:
        >>> class Bag(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = torch.nn.EmbeddingBag(10, 3, mode="sum")
        ...     def forward(self, input_ids, attention_mask):
        ...         return self.emb(input_ids, per_sample_weights=attention_mask.float())
        >>> batch = {"input_ids": torch.randint(0, 10, (4, 5)), "attention_mask": torch.ones(4, 5),
        ...          "labels": torch.tensor([0, 2, 1, 0])}
        >>> sequence_classification_loss(Bag(), batch).shape
        torch.Size([4])
    """
    what = "sequence_classification_loss"
    logits = _call(model, _model_inputs(batch, what), what)
    return F.cross_entropy(logits, batch["labels"], reduction="none")


def causal_lm_loss(model: nn.Module, batch: Any, *, ignore_index: int = -100) -> Tensor:
    """Per-sequence next-token loss of a causal language model on dict batches (a Hugging Face
    ``AutoModelForCausalLM``-style model, LoRA-wrapped or not).

    The logits at position t predict token t + 1; ``labels`` (the input ids, with
    ``ignore_index`` = -100 at padding and at any position not to be learned, such as a prompt)
    give the targets. An example's loss is the mean over its predicted positions:
    ``loss[b] = sum_t l[b, t] / #{t : labels[b, t + 1] != -100}`` (0 when there is none).

    Example:
        >>> class Bigram(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.emb = torch.nn.Embedding(10, 10)
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return self.emb(input_ids)
        >>> ids = torch.randint(0, 10, (3, 6))
        >>> labels = ids.clone(); labels[0, 4:] = -100  # padding
        >>> causal_lm_loss(Bigram(), {"input_ids": ids, "labels": labels}).shape
        torch.Size([3])
    """
    what = "causal_lm_loss"
    logits = _call(model, _model_inputs(batch, what), what)[:, :-1]
    labels = batch["labels"][:, 1:]
    tokens = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).reshape(labels.shape)
    counted = (labels != ignore_index).to(tokens.dtype)
    return (tokens * counted).sum(-1) / counted.sum(-1).clamp(min=1)


def _module_influence_loss(model: nn.Module, batch: Any) -> Tensor:
    """``loss_fn`` that defers to the model's ``influence_loss(batch)`` method."""
    return model.influence_loss(batch)


def resolve_loss(loss_fn: LossFn | None, model: nn.Module) -> LossFn:
    """The per-example loss to use: ``loss_fn``, else the model's ``influence_loss`` method.

    Raises:
        ConfigurationError: neither is there (the message shows both ways to give one).
    """
    if loss_fn is not None:
        if not callable(loss_fn):
            raise ConfigurationError(
                f"loss_fn={loss_fn!r} is not callable: pass loss_fn(model, batch) -> Tensor[B], or "
                "leave it None and define influence_loss(self, batch) on the model"
            )
        return loss_fn
    if callable(getattr(model, "influence_loss", None)):
        return _module_influence_loss
    raise ConfigurationError(
        "the analysis needs one loss per training example. Either pass loss_fn=..., e.g. "
        "lightning_influence.losses.cross_entropy_loss for (inputs, class-index targets) batches, "
        f"or add this method to {type(model).__name__}:\n\n"
        "    def influence_loss(self, batch):  # -> Tensor[B], one loss per example\n"
        "        x, y = batch\n"
        "        return F.cross_entropy(self(x), y, reduction='none')\n"
    )


def loss_name(loss_fn: LossFn | None) -> str:
    """How manifests (and so analysis names) name a loss, the same in every process: its module
    and qualified name, ``influence_loss`` for the method, and for a ``functools.partial`` the
    function with its bound arguments (never a ``repr`` that holds a memory address).

    Example:
        >>> loss_name(functools.partial(cross_entropy_loss, ignore_index=0))
        'lightning_influence.losses.cross_entropy_loss(ignore_index=0)'
    """
    if loss_fn is None or loss_fn is _module_influence_loss:
        return "influence_loss"
    if isinstance(loss_fn, functools.partial):
        bound = [repr(a) for a in loss_fn.args]
        bound += [f"{k}={v!r}" for k, v in sorted(loss_fn.keywords.items())]
        return f"{loss_name(loss_fn.func)}({', '.join(bound)})"
    target = loss_fn if hasattr(loss_fn, "__qualname__") else type(loss_fn)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", type(loss_fn).__name__)
    return f"{module}.{qualname}" if module else qualname


def check_contract(losses: Any, batch_size: int, where: str) -> None:
    """Raise ``ConfigurationError`` unless ``losses`` is a ``Tensor[batch_size]``: one loss per
    example (``where`` names the batch in the message)."""
    if not isinstance(losses, Tensor):
        raise ConfigurationError(
            f"loss_fn returned {type(losses).__name__} for {where}; it must return a Tensor of "
            f"per-example losses, shape [{batch_size}]"
        )
    if losses.shape != (batch_size,):
        raise ConfigurationError(
            f"loss_fn returned a tensor of shape {tuple(losses.shape)} for {where} of "
            f"{batch_size} examples: it must return one loss per example, shape [{batch_size}] "
            "(use reduction='none')"
        )


def check_losses(
    losses: Any,
    batch_size: int,
    where: str,
    *,
    indices: Sequence[int] | None = None,
    weights: Mapping[str, Tensor] | None = None,
) -> None:
    """Raise unless ``losses`` is a finite ``Tensor[batch_size]``.

    Args:
        losses: what the loss function returned.
        batch_size: examples in the batch.
        where: named in the message, e.g. ``"batch 3 of the HVP sample loader"``.
        indices: the dataset index of each example of the batch, to name the bad ones.
        weights: the model's parameters, to say when they are themselves NaN or Inf.

    Raises:
        ConfigurationError: not a tensor of one loss per example (a mistake of configuration:
            every analysis would fail).
        FloatingPointError: NaN or Inf losses (numerical trouble at these weights).
    """
    check_contract(losses, batch_size, where)
    if bool(torch.isfinite(losses).all()):
        return
    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
    shown = f"{len(bad)} of its {batch_size} examples"
    if indices is not None:
        shown += f", dataset indices {[int(indices[i]) for i in bad[:8]]}"
    else:
        shown += f", positions {bad[:8]} within the batch"
    broken = [
        name for name, w in (weights or {}).items() if not bool(torch.isfinite(w.detach()).all())
    ]
    if broken:
        raise FloatingPointError(
            f"loss_fn returned NaN or Inf in {where} ({shown}) because the model's weights are "
            f"themselves NaN or Inf ({', '.join(broken[:5])}): training diverged before this "
            "analysis (lower the learning rate, clip gradients)"
        )
    raise FloatingPointError(
        f"loss_fn returned NaN or Inf in {where} ({shown}); the weights are finite: check those "
        "examples' inputs"
    )
