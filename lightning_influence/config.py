"""Arguments of the influence engines as data: validated once, saved beside every result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_influence.hvp import HVPMode
from lightning_influence.projection import ProjectionMode
from lightning_influence.scores import EigenvaluePolicy

__all__ = ["ArnoldiConfig", "ScoringConfig"]

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def parse_dtype(name: str | None, what: str) -> torch.dtype | None:
    """``"float32"`` -> ``torch.float32``; a clear error for anything else."""
    if name is None:
        return None
    if isinstance(name, torch.dtype):
        return name
    key = str(name).removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"{what}={name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def _choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


@dataclass
class ScoringConfig:
    """How scores are computed from directions and eigenvalues (shared by every engine)."""

    projection: ProjectionMode = field(
        default="auto",
        metadata={
            "help": "'jvp' (forward-mode, vmapped over directions), 'grad' (per-example "
            "gradients times directions) or 'auto' (time both on the first batch, keep the faster)."
        },
    )
    eigenvalue_policy: EigenvaluePolicy = field(
        default="abs",
        metadata={
            "help": "how 1/lambda is formed: 'abs', 'signed', 'positive' or 'damped' "
            "(see lightning_influence.scores.inverse_eigenvalues)."
        },
    )
    damping: float = field(
        default=0.0,
        metadata={"help": "added to every eigenvalue under 'damped' (what stays <= 0 is dropped)."},
    )
    eigenvalue_rtol: float = field(
        default=1e-10,
        metadata={"help": "eigenvalues with |lambda| <= rtol * max|lambda| get weight 0."},
    )
    example_chunk: int | None = field(
        default=None,
        metadata={
            "help": "examples per vmapped per-example-gradient chunk; None sizes chunks to "
            "about 256 MiB of gradients."
        },
    )
    direction_chunk: int = field(default=32, metadata={"help": "directions per vmapped JVP chunk."})
    compute_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of HVPs and projections; None: the parameters' dtype, but at least "
            "float32."
        },
    )
    progress: bool = field(default=True, metadata={"help": "show tqdm progress bars."})

    def __post_init__(self) -> None:
        _choice("projection", self.projection, ("auto", "jvp", "grad"))
        _choice(
            "eigenvalue_policy", self.eigenvalue_policy, ("abs", "signed", "positive", "damped")
        )
        if self.eigenvalue_policy == "damped" and not self.damping > 0:
            raise ValueError(
                f"eigenvalue_policy='damped' needs damping > 0, got damping={self.damping}"
            )
        if self.damping < 0:
            raise ValueError(f"damping={self.damping} must be >= 0")
        if not 0 <= self.eigenvalue_rtol < 1:
            raise ValueError(f"eigenvalue_rtol={self.eigenvalue_rtol} must be in [0, 1)")
        if self.example_chunk is not None and self.example_chunk < 1:
            raise ValueError(
                f"example_chunk={self.example_chunk} must be a positive integer or None"
            )
        if self.direction_chunk < 1:
            raise ValueError(f"direction_chunk={self.direction_chunk} must be a positive integer")
        parse_dtype(self.compute_dtype, "compute_dtype")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ArnoldiConfig(ScoringConfig):
    """Arguments of ``ArnoldiInfluence`` (the fields of ``ScoringConfig`` plus the iteration's)."""

    n_iters: int = field(default=200, metadata={"help": "Arnoldi iterations n (HVPs)."})
    top_k: int = field(default=100, metadata={"help": "eigenpairs p kept, by |lambda|."})
    seed: int = field(default=0, metadata={"help": "seed of the N(0, 1) start vector."})
    hvp_mode: HVPMode = field(
        default="auto",
        metadata={"help": "'fwd-rev', 'rev-rev' or 'auto' (rev-rev on XLA, fwd-rev elsewhere)."},
    )
    basis_device: str | None = field(
        default=None,
        metadata={
            "help": "device of the Krylov basis and eigenvectors; 'cpu' offloads them from an "
            "accelerator. None: the model's device."
        },
    )
    basis_dtype: str | None = field(
        default=None,
        metadata={
            "help": "storage dtype of the basis ('float32', 'bfloat16', ...); arithmetic stays "
            "in at least float32. None: the compute dtype."
        },
    )
    cache_batches: bool = field(
        default=True,
        metadata={
            "help": "keep the HVP sample's batches on the device between iterations (and "
            "immune to a shuffling loader); False re-reads the loader every iteration."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_iters < 1:
            raise ValueError(f"n_iters={self.n_iters} must be a positive integer")
        if self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be a positive integer")
        if self.top_k > self.n_iters:
            raise ValueError(
                f"top_k={self.top_k} exceeds n_iters={self.n_iters}: Arnoldi can return at most "
                "n_iters eigenpairs; raise n_iters or lower top_k"
            )
        _choice("hvp_mode", self.hvp_mode, ("auto", "fwd-rev", "rev-rev"))
        parse_dtype(self.basis_dtype, "basis_dtype")
