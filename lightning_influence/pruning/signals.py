"""The per-example signals a scoring event can hold, which end of each is suspect, and how a
pruning plan reads them: the registry of pruning signals. No Lightning.

Built in (``InfluenceCallback`` writes them; ``examples/benchmarks/pruning.py`` compares them):

======================================  =========  ==============================================
signal                                  suspect    what it is
======================================  =========  ==============================================
``self_influence``                      high       ``I(x, x) = sum_i w_i <e_i, g_x>^2``
``validation_influence``                low        ``V(x) = sum_z I(x, z)`` over the validation
                                                   set, about ``<g_val, H^-1 g_x>``; negative:
                                                   removing x lowers the validation loss
``validation_influence_class_<c>``      low        the same over the validation examples of
                                                   class c
``validation_influence_min``            low        the lowest of the per-class ones: the class
                                                   the example hurts most (a mislabeled example
                                                   hurts its true class; the sum over classes
                                                   dilutes that)
``loss``                                high       the example's loss at the analysed weights
``loss_mean``                           high       its training loss averaged over the epochs
``aum``                                 low        the area under the margin: the assigned
                                                   class' logit minus the largest other,
                                                   averaged over the epochs (Pleiss et al. 2020)
======================================  =========  ==============================================

``suspicion(signals, spec)`` turns a selection into one score per example, higher = more suspect:
one name, or several (their rank mean: the mean of each one's suspicion quantile, so signals of
other scales count alike). A new signal is one registration (in a file of its own)::

    register_signal("loss_x_influence", suspect="high", description="...",
                    derive=lambda s: s["loss"] * s["self_influence"])

``derive`` computes it from the signals an event already holds, whenever a plan asks for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lightning_influence.pruning.functional import quantiles

__all__ = [
    "SignalSpec",
    "register_signal",
    "resolve_selection",
    "signal_names",
    "signal_spec",
    "suspicion",
]


@dataclass(frozen=True)
class SignalSpec:
    """A pruning signal: its name, which end is suspect, what it means and, for a derived
    signal, how it is computed from an event's other signals."""

    name: str
    suspect: Literal["high", "low"]
    description: str
    derive: Callable[[Mapping[str, Tensor]], Tensor] | None = None
    needs_validation: bool = False


_REGISTRY: dict[str, SignalSpec] = {}
_PER_CLASS = re.compile(r"^validation_influence_class_(-?\d+)$")


def register_signal(
    name: str,
    *,
    suspect: Literal["high", "low"],
    description: str,
    derive: Callable[[Mapping[str, Tensor]], Tensor] | None = None,
    needs_validation: bool = False,
) -> SignalSpec:
    """Register a pruning signal (``suspect``: which end marks a suspect example)."""
    if suspect not in ("high", "low"):
        raise ValueError(f"suspect={suspect!r} is not one of 'high', 'low'")
    spec = SignalSpec(name, suspect, description, derive, needs_validation)
    if name in _REGISTRY and _REGISTRY[name] != spec:
        raise ValueError(f"a signal named {name!r} is already registered")
    _REGISTRY[name] = spec
    return spec


register_signal(
    "self_influence",
    suspect="high",
    description="I(x, x) = sum_i w_i <e_i, g_x>^2: high for mislabeled and atypical examples",
)
register_signal(
    "validation_influence",
    suspect="low",
    description="V(x) = sum_z I(x, z) over the validation set, about <g_val, H^-1 g_x>: negative "
    "when removing x would lower the validation loss",
    needs_validation=True,
)
register_signal(
    "validation_influence_min",
    suspect="low",
    description="min over the validation classes c of sum_{z in c} I(x, z): the validation class "
    "the example hurts most",
    needs_validation=True,
)
register_signal(
    "loss",
    suspect="high",
    description="the example's loss at the analysed weights",
)
register_signal(
    "loss_mean",
    suspect="high",
    description="the example's training loss averaged over the epochs it was trained on",
)
register_signal(
    "aum",
    suspect="low",
    description="area under the margin: the assigned class' logit minus the largest other, "
    "averaged over the epochs it was trained on",
)


def signal_names() -> tuple[str, ...]:
    """The registered signals (``validation_influence_class_<c>`` is one per class besides)."""
    return tuple(_REGISTRY)


def signal_spec(name: str) -> SignalSpec:
    """The registration of signal ``name``.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    match = _PER_CLASS.match(name)
    if match:
        return SignalSpec(
            name,
            "low",
            f"validation influence over the validation examples of class {match.group(1)}",
            needs_validation=True,
        )
    raise ValueError(
        f"signal={name!r} is not a known signal: use one of {', '.join(map(repr, _REGISTRY))}, "
        "'validation_influence_class_<c>', a list of them (their rank mean), or 'auto'"
    )


Selection = str | Sequence[str]

# The product default, chosen by examples/benchmarks/pruning.py (results/pruning.md, 2026-12-07:
# digits and MNIST, uniform, class-pair and instance-dependent noise, 3 seeds): with a validation
# set, the rank mean of the AUM and the worst validation class' influence (the one arm within 0.01
# of the best of loss, AUM and cleanlab everywhere and +0.04 to +0.13 AP on class-pair and
# instance noise, in both protocols), the loss in place of the AUM when the run has no AUM (it
# needs InfluenceDataModule's sampler), and the plain validation influence when the validation
# set has no classes; without a validation set, the AUM, else the loss.
AUTO_WITH_VALIDATION: tuple[tuple[str, ...], ...] = (
    ("aum", "validation_influence_min"),
    ("loss", "validation_influence_min"),
    ("loss", "validation_influence"),
)
AUTO_WITHOUT_VALIDATION: tuple[tuple[str, ...], ...] = (("aum",), ("loss",), ("self_influence",))


def resolve_selection(selection: Selection, available: Sequence[str]) -> tuple[str, ...]:
    """The signal names a selection means for an event holding ``available`` signals.

    ``"auto"`` is the first option of ``AUTO_WITH_VALIDATION``, then of
    ``AUTO_WITHOUT_VALIDATION``, whose signals the event holds.

    Raises:
        ValueError: an unknown name, or an empty selection.
        KeyError: a named signal the event does not hold (and cannot derive).
    """
    names = (selection,) if isinstance(selection, str) else tuple(selection)
    if not names:
        raise ValueError("signal=[] selects nothing: name at least one signal, or 'auto'")
    if names == ("auto",):
        for option in AUTO_WITH_VALIDATION + AUTO_WITHOUT_VALIDATION:
            if all(n in available for n in option):
                return option
        raise KeyError(
            f"signal='auto' found none of its signals in an event holding {', '.join(available)}"
        )
    for name in names:
        spec = signal_spec(name)
        if name not in available and spec.derive is None:
            needs = " (it needs a validation set: see InfluenceCallback(val_dataloader=...))"
            raise KeyError(
                f"signal {name!r} is not in the event, which holds {', '.join(available)}"
                + (needs if spec.needs_validation else "")
            )
    return names


def suspicion(signals: Mapping[str, Tensor], selection: Selection) -> Tensor:
    """``[N]`` float64, higher = more suspect, from an event's ``signals``.

    One signal: its values, negated when its low end is suspect (NaN stays NaN and is never
    dropped first). Several: the mean of their suspicion quantiles (the rank mean).

    Example:
        >>> s = {"loss": torch.tensor([0.1, 2.0, 0.5]), "aum": torch.tensor([3.0, -1.0, 0.25])}
        >>> suspicion(s, "aum").tolist()
        [-3.0, 1.0, -0.25]
        >>> suspicion(s, ["loss", "aum"]).tolist()
        [0.16666666666666666, 0.8333333333333334, 0.5]
    """
    names = resolve_selection(selection, list(signals))
    parts = []
    for name in names:
        spec = signal_spec(name)
        value = signals[name] if name in signals else spec.derive(signals)  # type: ignore[misc]
        value = value.detach().cpu().double()
        parts.append(-value if spec.suspect == "low" else value)
    if len(parts) == 1:
        return parts[0]
    return torch.stack([quantiles(p) for p in parts]).mean(0)
