"""Training dynamics: each example's loss and margin, recorded during the training pass itself.

``InfluenceCallback`` records, for every training batch, the per-example loss and, for
classification, the margin (the assigned class' logit minus the largest other logit), keyed by
the dataset indices that ``InfluenceDataModule``'s sampler handed out for that batch, and keeps
their sums over epochs: the signals ``loss_mean`` (the mean training loss over the epochs an
example was trained on) and ``aum`` (the mean margin, Pleiss et al., "Identifying Mislabeled
Data using the Area Under the Margin Ranking", NeurIPS 2020).

Nothing is computed twice: a forward hook on the LightningModule keeps the outputs of the
training step's own ``self(...)`` call, and the loss is ``loss_fn`` replayed on those outputs
(the module's ``forward`` stands in for itself, returning them; the package's
``cross_entropy_loss`` and ``mse_loss``, which only call the model, get a stand-in model instead,
the same numbers without touching the module); the margin is read off the
logits and the class-index targets of the batch (``core.batch.class_targets``). The replay runs
with every submodule in eval mode and no grad, so a loss that does not call the module (and would
run a real forward) changes nothing: it is detected, and the dynamics are then not recorded. Under
DDP each rank records its own share; the sums are added across ranks at the end of every epoch.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from lightning_influence.core import batch as _batch
from lightning_influence.core.context import eval_mode
from lightning_influence.lightning.sampler import InfluenceSampler
from lightning_influence.losses import LossFn, cross_entropy_loss, mse_loss

__all__ = ["TrainingDynamics"]

_SUMS = ("loss_sum", "loss_count", "margin_sum", "margin_count")


def _logits(outputs: Any) -> Tensor | None:
    value = getattr(outputs, "logits", outputs)  # Hugging Face ModelOutput
    return value if isinstance(value, Tensor) and value.is_floating_point() else None


def margins(logits: Tensor, targets: Tensor) -> Tensor:
    """``[B]``: the assigned class' logit minus the largest other logit.

    Example:
        >>> margins(torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0]]), torch.tensor([0, 2])).tolist()
        [1.0, -2.0]
    """
    assigned = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, targets.view(-1, 1), float("-inf"))
    return assigned - others.amax(1)


class TrainingDynamics:
    """Per-example loss and margin sums over the epochs of a run, by dataset index.

    Args:
        loss_fn: the per-example loss ``loss_fn(model, batch)`` (resolved: never None).

    Attributes:
        route: how the dynamics are recorded: ``"hooks"`` (the training pass' own outputs),
            ``"off"`` (not recorded: the reason is in ``note``), or None before the first batch.
        note: why the dynamics are not recorded, when they are not.
    """

    def __init__(self, loss_fn: LossFn) -> None:
        self.loss_fn = loss_fn
        self.sums: dict[str, Tensor] | None = None
        self.epoch_sums: dict[str, Tensor] | None = None
        self.route: str | None = None
        self.note = ""
        self._captured: list[Any] = []
        # batches recorded this epoch, not yet in epoch_sums: (indices, losses, margins, valid)
        self._pending: list[tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = []
        self._handle: Any = None
        self._indices: list[int] | None = None
        self._offset = 0
        self._sampler: InfluenceSampler | None = None

    # -- the training loop -----------------------------------------------------------------------
    def start_epoch(self, module: nn.Module, loader: Any, size: int) -> None:
        """Attach the forward hook for this epoch (when the loader's sampler gives indices)."""
        self.detach()
        if self.route == "off":
            return
        sampler = _influence_sampler(loader)
        if sampler is None:
            self._off(
                "the train loader's sampler is not InfluenceDataModule's, so the dataset index "
                "of each trained example is unknown (wrap the DataModule in InfluenceDataModule "
                "to record loss_mean and aum)",
                warn=False,
            )
            return
        if self.sums is None:
            self.sums = {k: torch.zeros(size, dtype=torch.float64) for k in _SUMS}
        self.epoch_sums = {k: torch.zeros(size, dtype=torch.float64) for k in _SUMS}
        self._pending = []
        self._sampler, self._indices, self._offset = sampler, None, 0
        self._handle = module.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: Any, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self._captured.append(output)

    def on_batch(self, module: nn.Module, batch: Any) -> None:
        """Record the batch just trained on (call from ``on_train_batch_end``)."""
        captured, self._captured = self._captured, []
        if self.route == "off" or self.epoch_sums is None or self._sampler is None:
            return
        size = _batch.batch_size(_batch.as_pytree(batch))
        if self._indices is None:
            self._indices = self._sampler.last_indices
        if self._indices is None:
            return
        indices = self._indices[self._offset : self._offset + size]
        self._offset += size
        outputs = next((o for o in captured if _leading(o) == size), None)
        if outputs is None or len(indices) != size:
            self._off(
                "the training step does not call the LightningModule itself on the batch "
                "(self(x)), so its outputs cannot be reused; loss_mean and aum are not recorded"
            )
            return
        outputs = _detached(outputs)
        losses = self._replay(module, outputs, batch)
        if losses is None:
            return
        # Only device work here (no host sync per batch): the batch's values wait on the device
        # and are added to the epoch's sums in one pass at the end of the epoch (_flush).
        margin = valid = None
        logits, targets = _logits(outputs), _batch.class_targets(batch)
        if logits is not None and logits.ndim == 2 and targets is not None:
            targets = targets.to(logits.device).long()
            valid = (targets >= 0) & (targets < logits.shape[1])
            margin = margins(logits.detach(), targets.clamp(0, logits.shape[1] - 1))
        self._pending.append(
            (torch.as_tensor(indices, dtype=torch.long), losses.detach(), margin, valid)
        )
        self.route = "hooks"

    def _flush(self) -> None:
        """Add the batches recorded since the last flush to the epoch's sums."""
        pending, self._pending = self._pending, []
        if not pending or self.epoch_sums is None:
            return
        sums = self.epoch_sums
        index = torch.cat([p[0] for p in pending])
        losses = torch.cat([p[1].reshape(-1) for p in pending]).double().cpu()
        sums["loss_sum"].index_add_(0, index, losses)
        sums["loss_count"].index_add_(0, index, torch.ones_like(losses))
        with_margin = [p for p in pending if p[2] is not None]
        if with_margin:
            index = torch.cat([p[0] for p in with_margin])
            margin = torch.cat([p[2] for p in with_margin]).double().cpu()
            valid = torch.cat([p[3] for p in with_margin]).cpu()
            sums["margin_sum"].index_add_(0, index[valid], margin[valid])
            sums["margin_count"].index_add_(0, index[valid], torch.ones_like(margin[valid]))

    def _replay(self, module: nn.Module, outputs: Any, batch: Any) -> Tensor | None:
        if self.loss_fn in _CALL_ONLY_LOSSES:
            # these losses only call the model: a stand-in returning the outputs gives the same
            # numbers without touching the module (no forward swap, no eval-mode round trip)
            with torch.no_grad():
                losses = self.loss_fn(_Outputs(outputs), batch)  # type: ignore[arg-type]
            if isinstance(losses, Tensor) and losses.shape == (_batch.batch_size(batch),):
                return losses
        calls = []

        def forward(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return outputs

        with _forward_replaced(module, forward), eval_mode(module), torch.no_grad():
            try:
                losses = self.loss_fn(module, batch)
            except Exception as err:  # a loss that cannot take the outputs: not recorded
                self._off(f"the loss could not be replayed on the training outputs ({err})")
                return None
        if not calls:
            self._off(
                "the loss does not call the LightningModule itself (model(...)), so it cannot "
                "be replayed on the training outputs; loss_mean and aum are not recorded"
            )
            return None
        if not isinstance(losses, Tensor) or losses.shape != (_batch.batch_size(batch),):
            self._off("the loss does not return one value per example")
            return None
        return losses

    def end_epoch(self, reduce_sum: Any = None) -> None:
        """Add the epoch's sums (summed across ranks by ``reduce_sum``) to the run's."""
        self.detach()
        self._flush()
        if self.epoch_sums is None or self.sums is None:
            return
        stacked = torch.stack([self.epoch_sums[k] for k in _SUMS])
        if reduce_sum is not None:
            stacked = reduce_sum(stacked)
        for k, value in zip(_SUMS, stacked.cpu(), strict=True):
            self.sums[k] += value
        self.epoch_sums = None

    def detach(self) -> None:
        """Remove the forward hook (between epochs, and at the end of training)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._captured = []

    def _off(self, note: str, warn: bool = True) -> None:
        if self.route != "off":
            if warn:
                warnings.warn(f"InfluenceCallback: {note}", RuntimeWarning, stacklevel=3)
            else:
                rank_zero_info(f"InfluenceCallback: {note}")
        self.route, self.note = "off", note
        self.detach()
        self.epoch_sums, self._pending = None, []

    # -- results and state -----------------------------------------------------------------------
    def signals(self) -> dict[str, Tensor]:
        """``loss_mean`` and (for classification) ``aum``, NaN for examples never trained on; an
        empty dict before anything was recorded."""
        if self.sums is None or not bool((self.sums["loss_count"] > 0).any()):
            return {}
        s = self.sums
        out = {"loss_mean": _mean(s["loss_sum"], s["loss_count"])}
        if bool((s["margin_count"] > 0).any()):
            out["aum"] = _mean(s["margin_sum"], s["margin_count"])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "note": self.note,
            "sums": None if self.sums is None else {k: v.clone() for k, v in self.sums.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.route, self.note = state.get("route"), state.get("note", "")
        sums = state.get("sums")
        self.sums = None if sums is None else {k: v.double().clone() for k, v in sums.items()}


def _mean(total: Tensor, count: Tensor) -> Tensor:
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def _leading(outputs: Any) -> int | None:
    logits = _logits(outputs)
    if logits is not None and logits.ndim > 0:
        return int(logits.shape[0])
    try:
        return _batch.batch_size(outputs)
    except ValueError:
        return None


def _detached(outputs: Any) -> Any:
    if isinstance(outputs, Tensor):
        return outputs.detach()
    if hasattr(outputs, "logits") and isinstance(outputs.logits, Tensor):
        return type(outputs)(
            **{k: v.detach() if isinstance(v, Tensor) else v for k, v in outputs.items()}
        )
    return _batch.map_tensors(lambda t: t.detach(), outputs)


class _Outputs:
    """A stand-in model that returns the recorded outputs, whatever it is called with."""

    def __init__(self, outputs: Any) -> None:
        self.outputs = outputs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.outputs


# The package's losses whose only use of the model is one call on the batch's inputs.
_CALL_ONLY_LOSSES = (cross_entropy_loss, mse_loss)


@contextlib.contextmanager
def _forward_replaced(module: nn.Module, forward: Any) -> Iterator[None]:
    # An instance attribute shadows the class' forward for this module only; hooks still fire
    # around it, so the recording hook is removed first (the caller detached it).
    had = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        if had:
            module.forward = previous  # type: ignore[method-assign]
        else:
            del module.forward


def _influence_sampler(loader: Any) -> InfluenceSampler | None:
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, InfluenceSampler):
        return sampler
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return inner if isinstance(inner, InfluenceSampler) else None
