"""``TracInInfluence`` (Pruthi et al., 2020): gradient similarity summed over training checkpoints."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_influence.config import TracInConfig, with_overrides
from lightning_influence.core import batch as _batch
from lightning_influence.core.context import analysis_context
from lightning_influence.core.functional_loss import LossFn
from lightning_influence.core.parameters import ParamSelector
from lightning_influence.core.projection import per_example_gradients
from lightning_influence.engines.base import EngineBase, TransferFn
from lightning_influence.io.checkpoint import match_parameter_names, state_dict_of
from lightning_influence.losses import check_losses

__all__ = ["TracInInfluence"]


class TracInInfluence(EngineBase):
    """TracIn (Pruthi et al., 2020): gradient similarity summed over training checkpoints.

    ``I(x, z) = sum_c eta_c <g_c(z), g_c(x)>`` and self-influence ``sum_c eta_c ||g_c(x)||^2``,
    with ``g_c`` the per-example gradient at checkpoint c and ``eta_c`` its learning rate.

    Args:
        model: the architecture; its parameters are replaced functionally by each checkpoint's.
        loss_fn: as for ``ArnoldiInfluence``.
        checkpoints: state dicts, Lightning checkpoints, or paths to either.
        learning_rates: one per checkpoint, or a single float for all.
        params, transfer_batch: as for ``ArnoldiInfluence``.
        config: a ``TracInConfig``; or pass its fields (``example_chunk``, ``compute_dtype``,
            ``progress``) as keywords.
    """

    config: TracInConfig

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        checkpoints: Sequence[dict[str, Tensor] | str | os.PathLike],
        learning_rates: float | Sequence[float] = 1.0,
        *,
        params: ParamSelector = None,
        config: TracInConfig | None = None,
        transfer_batch: TransferFn | None = None,
        **kwargs: Any,
    ) -> None:
        config = with_overrides(TracInConfig, config, kwargs)
        super().__init__(model, loss_fn, config, params=params, transfer_batch=transfer_batch)
        if len(checkpoints) == 0:
            raise ValueError(
                "checkpoints is empty: pass at least one state dict or checkpoint path"
            )
        if isinstance(learning_rates, (int, float)):
            learning_rates = [float(learning_rates)] * len(checkpoints)
        if len(learning_rates) != len(checkpoints):
            raise ValueError(
                f"got {len(learning_rates)} learning rates for {len(checkpoints)} checkpoints: pass "
                "one per checkpoint or a single float"
            )
        self.learning_rates = [float(lr) for lr in learning_rates]
        self.checkpoints = [
            match_parameter_names(state_dict_of(c), self.space.names) for c in checkpoints
        ]

    def _gradients(self, f, params, loader: Iterable[Any], desc: str):
        for i, batch in enumerate(self.batches(loader, desc)):
            if i == 0:
                with torch.no_grad():
                    check_losses(
                        f(params, batch), _batch.batch_size(batch), f"batch 0 of the {desc} loader"
                    )
            size = _batch.batch_size(batch)
            step = self._grad_chunk()
            for start in range(0, size, step):
                part = _batch.slice_batch(batch, start, min(start + step, size))
                yield per_example_gradients(f, params, part, self.space)

    def self_influence(self, loader: Iterable[Any]) -> Tensor:
        """``[N]``: ``sum_c eta_c ||g_c(x)||^2`` in loader order."""
        total: Tensor | None = None
        with analysis_context(self.model):
            f = self.functional_loss()
            for ckpt, lr in tqdm(
                list(zip(self.checkpoints, self.learning_rates, strict=True)),
                desc="TracIn",
                disable=not self.config.progress,
                leave=False,
            ):
                params = self.parameters(ckpt)
                norms = torch.cat(
                    [g.square().sum(1).cpu() for g in self._gradients(f, params, loader, "scoring")]
                )
                total = lr * norms if total is None else total + lr * norms
        assert total is not None
        return total

    def validation_influence(
        self, train_loader: Iterable[Any], val_loader: Iterable[Any]
    ) -> Tensor:
        """``[N]``: ``sum_c eta_c <sum_z g_c(z), g_c(x)>`` over a validation set (the influence
        matrix on it, summed over it, without the inverse curvature)."""
        total: Tensor | None = None
        with analysis_context(self.model):
            f = self.functional_loss()
            for ckpt, lr in zip(self.checkpoints, self.learning_rates, strict=True):
                params = self.parameters(ckpt)
                g_val = sum(g.sum(0) for g in self._gradients(f, params, val_loader, "validation"))
                assert isinstance(g_val, Tensor)
                values = torch.cat(
                    [(g @ g_val).cpu() for g in self._gradients(f, params, train_loader, "train")]
                )
                total = lr * values if total is None else total + lr * values
        assert total is not None
        return total.double()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoints' selected parameters, the learning rates, the layout and the config."""
        return {
            "engine": type(self).__name__,
            "config": self.config.to_dict(),
            "param_names": list(self.space.names),
            "param_shapes": [list(s) for s in self.space.shapes],
            "checkpoints": [{n: t.detach().cpu() for n, t in c.items()} for c in self.checkpoints],
            "learning_rates": list(self.learning_rates),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved (the config too, except ``progress``)."""
        if state.get("engine") != type(self).__name__:
            raise ValueError(
                f"state_dict was saved by {state.get('engine')!r}, not {type(self).__name__}: "
                "load it into the engine that produced it"
            )
        self.space.check_compatible(state["param_names"], state["param_shapes"])
        saved = dict(state["config"])
        saved["progress"] = self.config.progress
        self.config = TracInConfig(**saved)
        self.checkpoints = [dict(c) for c in state["checkpoints"]]
        self.learning_rates = [float(lr) for lr in state["learning_rates"]]

    def influence(self, train_loader: Iterable[Any], test_loader: Iterable[Any]) -> Tensor:
        """``[N_test, N_train]``: ``sum_c eta_c <g_c(z), g_c(x)>``."""
        total: Tensor | None = None
        with analysis_context(self.model):
            f = self.functional_loss()
            for ckpt, lr in zip(self.checkpoints, self.learning_rates, strict=True):
                params = self.parameters(ckpt)
                test = torch.cat(list(self._gradients(f, params, test_loader, "test")))
                block = torch.cat(
                    [(test @ g.T).cpu() for g in self._gradients(f, params, train_loader, "train")],
                    dim=1,
                )
                total = lr * block if total is None else total + lr * block
        assert total is not None
        return total
