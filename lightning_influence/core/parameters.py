"""Parameter selection and the flat-vector view of a parameter subset.

Influence is computed in the space of the selected parameters: all trainable ones by default, or a
subset (the paper's Table 2 compares all layers with the last layers only).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ParamSelector", "ParameterSpace", "select_parameters"]

ParamSelector = Sequence[str] | Callable[[str, nn.Parameter], bool] | None
"""Which parameters to analyse.

``None``: every parameter with ``requires_grad``. A sequence of strings: parameter names, module
prefixes (``"fc2"`` selects ``fc2.weight`` and ``fc2.bias``) or glob patterns (``"layers.*.weight"``).
A callable ``(name, parameter) -> bool``: a predicate.
"""


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def select_parameters(model: nn.Module, params: ParamSelector = None) -> dict[str, Tensor]:
    """The selected parameters of ``model`` by name, in ``named_parameters`` order.

    ``None`` selects the parameters that require grad (the ones training updates: a LoRA
    adapter's, say); parameters named explicitly are selected even when frozen.

    Raises:
        ValueError: a pattern selects nothing, or nothing is selected.
    """
    named = dict(model.named_parameters())
    if not named:
        raise ValueError(f"{type(model).__name__} has no parameters to analyse")
    if params is None:
        chosen = {n: p for n, p in named.items() if p.requires_grad}
        if not chosen:
            raise ValueError(
                "no parameter of the model requires grad, so there is none to analyse by "
                "default: pass params=[...] naming the parameters to analyse (frozen ones can "
                "be analysed when named), e.g. params=['classifier']"
            )
        return chosen
    if callable(params):
        chosen = {n: p for n, p in named.items() if params(n, p)}
    else:
        if isinstance(params, str):
            params = [params]
        chosen = {}
        for pattern in params:
            hits = [n for n in named if _matches(n, pattern)]
            if not hits:
                raise ValueError(
                    f"params entry {pattern!r} matches no parameter of {type(model).__name__}; "
                    f"its parameters are: {', '.join(list(named)[:20])}"
                    + (" ..." if len(named) > 20 else "")
                )
            chosen.update({n: named[n] for n in hits})
        chosen = {n: named[n] for n in named if n in chosen}  # model order
    if not chosen:
        raise ValueError(
            "params selects no parameter: pass names, prefixes or a predicate that match"
        )
    # Parameters named here are analysed whether or not training updates them: the analysis
    # differentiates detached copies, never the live parameters.
    return chosen


@dataclass(frozen=True)
class ParameterSpace:
    """Names and shapes of a parameter subset, and the maps between its dict and flat forms."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, tensors: dict[str, Tensor]) -> ParameterSpace:
        return cls(tuple(tensors), tuple(t.shape for t in tensors.values()))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def dim(self) -> int:
        """P, the number of scalar parameters."""
        return sum(self.numels)

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        """dict of tensors -> vector [P]."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def flatten_batched(self, tensors: dict[str, Tensor]) -> Tensor:
        """dict of tensors with a leading dimension B -> matrix [B, P]."""
        return torch.cat([tensors[n].reshape(tensors[n].shape[0], -1) for n in self.names], dim=1)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """vector [P] -> dict of views."""
        parts = torch.split(flat, self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def unflatten_batched(self, flat: Tensor) -> dict[str, Tensor]:
        """matrix [K, P] -> dict of [K, *shape] views."""
        parts = torch.split(flat, self.numels, dim=1)
        return {
            n: p.reshape(flat.shape[0], *s)
            for n, p, s in zip(self.names, parts, self.shapes, strict=True)
        }

    def check_compatible(self, names: Iterable[str], shapes: Iterable[Sequence[int]]) -> None:
        """Raise if saved names/shapes do not describe this space."""
        names, shapes = tuple(names), tuple(torch.Size(s) for s in shapes)
        if names != self.names or shapes != self.shapes:
            missing = sorted(set(names) ^ set(self.names))[:5]
            raise ValueError(
                "saved eigenvectors were computed for other parameters than this model selects "
                f"(differing names: {missing or 'none; shapes differ'}): build the engine with the "
                "same model architecture and params selection that fit it"
            )
