"""Every argument of lightning-influence as data: dataclasses with help, validated once.

* ``ScoringConfig``: how scores are formed from directions and eigenvalues (every engine).
* ``ArnoldiConfig``, ``RandomProjectionConfig``: the engines' own arguments.
* ``AnalysisConfig``: an ``ArnoldiConfig`` plus what ``InfluenceCallback``, ``analyze_checkpoint``
  and the command line analyse around it (the HVP sample, the loaders, when, what on failure).
* ``PruningConfig``: what ``InfluenceDataModule`` drops or down-weights.

The fields are the single source of every default, help text and choice: the callback and the
DataModule take a config object plus field overrides, the command line's options are generated from
the fields, and ``dataclasses.asdict`` of the config is the ``arguments`` of every manifest.

Each field says its **role** in its metadata (``field_names(cls, role)`` lists them):

* ``"result"``: changes what an event holds (the numbers). Only these name an analysis' folder
  (a hash of the ones that differ from their defaults, so a new field left at its default never
  renames a folder) and are compared before an event is written over.
* ``"execution"``: how the same numbers are computed (chunks, caches, workers, where the basis
  lives): in the manifest, not in the name.
* ``"schedule"``: when a training run analyses and what it does on failure; meaningless for one
  checkpoint (the command line has no such options).
* ``"display"``: progress bars.

The choices of a ``Literal``-typed field are read from its type (``field_choices``) and checked
once, in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lightning_influence.core.hvp import HVPMode
from lightning_influence.core.parameters import ParamSelector
from lightning_influence.core.projection import ProjectionMode
from lightning_influence.core.scores import EigenvaluePolicy

__all__ = [
    "ROLES",
    "AnalysisConfig",
    "ArnoldiConfig",
    "ConfigurationError",
    "PruningConfig",
    "RandomProjectionConfig",
    "Role",
    "ScoringConfig",
    "TracInConfig",
    "field_choices",
    "field_names",
]

Role = Literal["result", "execution", "schedule", "display"]
ROLES: tuple[str, ...] = typing.get_args(Role)

_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class ConfigurationError(ValueError):
    """An argument, a loss or a data layout the analysis cannot work with; the message says the fix.

    The callback never skips these under ``on_error="warn"``: they would fail every analysis.
    """


def with_overrides(cls: type, config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` with the fields in ``overrides`` replaced (and validated again), or
    ``cls(**overrides)`` when there is no config: how every entry point takes "a config, or its
    fields as keywords"."""
    if config is None:
        return cls(**overrides)
    return dataclasses.replace(config, **overrides) if overrides else config


def parse_dtype(name: str | torch.dtype | None, what: str) -> torch.dtype | None:
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


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_choices(cls: type, name: str) -> tuple[Any, ...] | None:
    """The allowed values of field ``name`` of config class ``cls``: the arguments of its
    ``Literal`` type (also inside ``Optional``), or its ``choices`` metadata; None when free.

    Example:
        >>> field_choices(ScoringConfig, "projection")
        ('auto', 'hooks', 'grad', 'jvp', 'loop')
    """
    literal = _literal(cls, name)
    if literal is not None:
        return literal
    meta = next(f for f in dataclasses.fields(cls) if f.name == name).metadata
    choices = meta.get("choices")
    if callable(choices):  # a registry, read when asked (plugins register on import)
        choices = choices()
    return None if choices is None else tuple(choices)


def _literal(cls: type, name: str) -> tuple[Any, ...] | None:
    hint = _hints(cls)[name]
    for candidate in (hint, *typing.get_args(hint)):
        if typing.get_origin(candidate) is Literal:
            return typing.get_args(candidate)
    return None


def field_names(cls: type, *roles: str) -> tuple[str, ...]:
    """The fields of config class ``cls`` with one of ``roles`` (all fields for none), in order.

    Example:
        >>> field_names(AnalysisConfig, "schedule")
        ('every_n_epochs', 'at_train_end', 'on_error', 'log_top_n', 'max_events')
    """
    for role in roles:
        _choice("role", role, ROLES)
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if not roles or f.metadata.get("role", "result") in roles
    )


class _Config:
    """What every config shares: ``Literal`` fields checked against their choices, ``to_dict``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            choices = _literal(type(self), f.name)
            value = getattr(self, f.name)
            optional = type(None) in typing.get_args(_hints(type(self))[f.name])
            if choices is not None and not (value is None and optional):
                _choice(f.name, value, choices)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _int(name: str, value: Any, minimum: int, hint: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum} ({hint})")


def _curvatures() -> tuple[str, ...]:
    from lightning_influence.core.curvature import curvature_names

    return curvature_names()


def _solvers() -> tuple[str, ...]:
    from lightning_influence.core.solvers import solver_names

    return ("auto", *solver_names())


def _help(text: str, role: Role = "result", **extra: Any) -> dict[str, Any]:
    return {"help": text, "role": role, **extra}


@dataclass
class ScoringConfig(_Config):
    """How scores are computed from directions and eigenvalues (shared by every engine)."""

    projection: ProjectionMode = field(
        default="auto",
        metadata=_help(
            "how per-example gradients meet the directions: 'hooks' (one backward pass and a "
            "contraction per Linear/Conv/Embedding/LayerNorm/BatchNorm layer), 'grad' (vmapped "
            "per-example gradients), 'jvp' (forward mode, vmapped over directions), 'loop' (one "
            "example at a time, for models vmap cannot trace) or 'auto' (hooks where they apply "
            "and pass an exactness check on the first batch, else the faster of grad/loop and "
            "jvp).",
            role="execution",
        ),
    )
    eigenvalue_policy: EigenvaluePolicy = field(
        default="abs",
        metadata=_help(
            "how 1/lambda is formed: 'abs', 'signed', 'positive' or 'damped' "
            "(see lightning_influence.core.scores.inverse_eigenvalues)."
        ),
    )
    damping: float = field(
        default=0.0,
        metadata=_help("added to every eigenvalue under 'damped' (what stays <= 0 is dropped)."),
    )
    eigenvalue_rtol: float = field(
        default=1e-10,
        metadata=_help("eigenvalues with |lambda| <= rtol * max|lambda| get weight 0."),
    )
    example_chunk: int | None = field(
        default=None,
        metadata=_help(
            "examples per vmapped per-example-gradient chunk; None sizes chunks to about 256 MiB "
            "of gradients.",
            role="execution",
        ),
    )
    direction_chunk: int = field(
        default=32, metadata=_help("directions per vmapped JVP chunk.", role="execution")
    )
    compute_dtype: str | None = field(
        default=None,
        metadata=_help(
            "dtype of HVPs and projections; None: the parameters' dtype, but at least float32.",
            choices=tuple(_DTYPES),
        ),
    )
    progress: bool = field(default=True, metadata=_help("show tqdm progress bars.", "display"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eigenvalue_policy == "damped" and not self.damping > 0:
            raise ValueError(
                f"eigenvalue_policy='damped' needs damping > 0, got damping={self.damping}"
            )
        if self.damping < 0:
            raise ValueError(f"damping={self.damping} must be >= 0")
        if not 0 <= self.eigenvalue_rtol < 1:
            raise ValueError(f"eigenvalue_rtol={self.eigenvalue_rtol} must be in [0, 1)")
        _int("example_chunk", self.example_chunk, 1, "None sizes chunks by memory", optional=True)
        _int("direction_chunk", self.direction_chunk, 1, "directions per JVP chunk")
        parse_dtype(self.compute_dtype, "compute_dtype")


@dataclass
class ArnoldiConfig(ScoringConfig):
    """Arguments of ``ArnoldiInfluence`` (the fields of ``ScoringConfig`` plus the iteration's)."""

    n_iters: int = field(default=200, metadata=_help("Arnoldi iterations n (HVPs)."))
    top_k: int = field(default=100, metadata=_help("eigenpairs p kept, by |lambda|."))
    seed: int = field(
        default=0, metadata=_help("seed of the N(0, 1) start vector (and of the HVP sample).")
    )
    hvp_mode: HVPMode = field(
        default="auto",
        metadata=_help(
            "'fwd-rev', 'rev-rev' or 'auto' (rev-rev on XLA, fwd-rev elsewhere).", "execution"
        ),
    )
    curvature: str = field(
        default="hessian",
        metadata=_help(
            "a registered curvature (lightning_influence.core.curvature): 'hessian' or 'ggn' "
            "(the Gauss-Newton matrix: positive semi-definite for convex losses of the outputs; "
            "the loss must call the model once per batch).",
            choices=_curvatures,
        ),
    )
    solver: str = field(
        default="auto",
        metadata=_help(
            "a registered eigensolver (lightning_influence.core.solvers): 'arnoldi' (n_iters "
            "products, the paper's method), 'lanczos' (thick restart to restart_tol, a basis of "
            "n_iters vectors), or 'auto' ('lanczos' when restart_tol is set, else 'arnoldi').",
            choices=_solvers,
        ),
    )
    basis_device: str | None = field(
        default=None,
        metadata=_help(
            "device of the Krylov basis and eigenvectors; 'cpu' offloads them from an "
            "accelerator. None: the model's device.",
            role="execution",
        ),
    )
    basis_dtype: str | None = field(
        default=None,
        metadata=_help(
            "storage dtype of the basis; arithmetic stays in at least float32. None: the compute "
            "dtype.",
            choices=tuple(_DTYPES),
        ),
    )
    basis_file: str | None = field(
        default=None,
        metadata=_help(
            "keep the Krylov basis in this file (a numpy memmap) instead of memory, for when "
            "(n + 1) x P does not fit in RAM; needs a CPU basis and basis_dtype float32/float16.",
            role="execution",
        ),
    )
    cache_batches: bool = field(
        default=True,
        metadata=_help(
            "keep the HVP sample's batches on the device between iterations (and immune to a "
            "shuffling loader); False re-reads the loader every iteration.",
            role="execution",
        ),
    )
    hvp_cache: Literal["auto", "on", "off"] | bool = field(
        default="auto",
        metadata=_help(
            "keep each HVP-sample batch's graph of the gradient for the whole fit, so that a "
            "product is one reverse pass (about 2x fewer CPU seconds per fit on the digits CNN, "
            "the same eigenpairs up to rounding), at the memory of the sample's graphs; Hessian "
            "curvature only, needs cache_batches. 'auto': on when the graphs' estimated memory "
            "(measured on the first batch) fits in half of the free memory, else off with a "
            "message; 'on' (True), 'off' (False).",
            role="execution",
        ),
    )

    restart_tol: float | None = field(
        default=None,
        metadata=_help(
            "the relative residual of solver='lanczos': restart until every one of the top_k "
            "pairs has ||H e - lambda e|| <= restart_tol |lambda| or 10 n_iters products are "
            "spent (a symmetric H: the Hessian or the GGN; in-memory basis of at least float32; "
            "not on XLA). With solver='auto', a number selects 'lanczos' and None 'arnoldi'."
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.hvp_cache, bool):  # True / False spell 'on' / 'off'
            self.hvp_cache = "on" if self.hvp_cache else "off"
        super().__post_init__()
        _int("n_iters", self.n_iters, 1, "Hessian-vector products per fit")
        _int("top_k", self.top_k, 1, "eigenpairs kept")
        if self.top_k > self.n_iters:
            raise ValueError(
                f"top_k={self.top_k} exceeds n_iters={self.n_iters}: Arnoldi can return at most "
                "n_iters eigenpairs; raise n_iters or lower top_k"
            )
        from lightning_influence.core.curvature import supports_cache
        from lightning_influence.core.solvers import residual_controlled

        _choice("solver", self.solver, _solvers())
        _choice("curvature", self.curvature, _curvatures())
        if self.restart_tol is not None and not 0 < self.restart_tol < 1:
            raise ValueError(
                f"restart_tol={self.restart_tol} must be in (0, 1): it is a residual "
                "relative to |lambda| (1e-2 is a good start); None runs plain Arnoldi"
            )
        if residual_controlled(self.resolved_solver):
            if self.n_iters < self.top_k + 2:
                raise ValueError(
                    f"solver={self.resolved_solver!r} needs n_iters >= top_k + 2 = "
                    f"{self.top_k + 2} (n_iters is the basis size, got {self.n_iters}); about "
                    "1.5 to 2 x top_k works well"
                )
            if self.basis_file is not None:
                raise ValueError(
                    f"solver={self.resolved_solver!r} rewrites its basis in memory at every "
                    "restart, so basis_file is not supported with it: pass basis_file=None, or "
                    "solver='arnoldi'"
                )
        parse_dtype(self.basis_dtype, "basis_dtype")
        if self.hvp_cache == "on" and not supports_cache(self.curvature):
            raise ValueError(
                f"hvp_cache='on' caches Hessian products, not curvature={self.curvature!r}: "
                "pass hvp_cache='off', or curvature='hessian'"
            )
        if self.hvp_cache == "on" and not self.cache_batches:
            raise ValueError(
                "hvp_cache='on' keeps the HVP sample's graphs, so it needs cache_batches=True"
            )

    @property
    def cache_wanted(self) -> bool:
        """Whether the fit should try the product cache: 'on', or 'auto' where it applies."""
        if self.hvp_cache == "on":
            return True
        from lightning_influence.core.curvature import supports_cache

        return self.hvp_cache == "auto" and supports_cache(self.curvature) and self.cache_batches

    @property
    def resolved_solver(self) -> str:
        """The solver ``solver`` names: ``"auto"`` is ``"lanczos"`` when ``restart_tol`` is set,
        else ``"arnoldi"``."""
        if self.solver != "auto":
            return self.solver
        return "lanczos" if self.restart_tol is not None else "arnoldi"


@dataclass
class RandomProjectionConfig(ScoringConfig):
    """Arguments of ``RandomProjectionInfluence``."""

    dim: int = field(default=100, metadata=_help("sketch size p (rows of G, HVPs in fit)."))
    seed: int = field(default=0, metadata=_help("seed of the Gaussian sketch G."))
    hvp_mode: HVPMode = field(default="auto", metadata=_help("as in ArnoldiConfig."))

    def __post_init__(self) -> None:
        super().__post_init__()
        _int("dim", self.dim, 1, "rows of the sketch")


@dataclass
class TracInConfig(ScoringConfig):
    """Arguments of ``TracInInfluence``: the scoring fields it uses (``example_chunk``,
    ``compute_dtype``, ``progress``); it always takes per-example gradients."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.projection not in ("auto", "grad"):
            raise ValueError(
                f"projection={self.projection!r}: TracIn takes per-example gradients; leave "
                "projection at 'auto'"
            )


@dataclass
class AnalysisConfig(ArnoldiConfig):
    """One analysis of a training set: an ``ArnoldiConfig`` and what surrounds the engine.

    ``InfluenceCallback``, ``analyze_checkpoint`` and ``lightning-influence score`` all run
    ``lightning_influence.lightning.analysis.run_analysis`` with one of these.

    Its solver defaults differ from the engine's (the paper's Arnoldi, n = 200, p = 100): an
    analysis that runs during training must cost a few epochs, so it converges only the top 20
    pairs, to a relative residual of 5e-2 (thick-restart Lanczos with a basis of 30), on an HVP
    sample of 128 (``examples/benchmarks/analysis_cost.py``: 4.5 instead of 29 training epochs on
    the MNIST CNN at 1e-2 and 256 examples, top-10 eigenvalues within 2e-8 of Arnoldi n = 200 on
    the same sample). 5e-2 rather than 1e-2 from the pruning benchmark (``pruning.py
    --detection-only``, 3 seeds): the default signal's AP unchanged within 0.002 on digits (four
    noise settings) and MNIST 10k class pairs, with 0.6-0.7x the products
    (``results/pruning_detection_*``). 128 examples rather than 256: 0.66-0.76x the analysis, the
    default signal's AP within 0.006 on eight digits and MNIST 10k settings, and the same pruned
    accuracy over 9 seeds where 3 had looked worse (digits class pairs 0.935 vs 0.932, uniform40
    0.918 vs 0.922; the demo 0.9743 vs 0.9747; ``results/pruning_digits_accuracy_*``). 20
    pairs rather than 30: 0.7-0.8x the analysis, the default signal's AP within 0.004, and pruned
    accuracy within noise: digits over 9 seeds .9500/.9216/.9335/.8588 vs .9490/.9183/.9352/.8547
    (uniform20, uniform40, class pairs, instance), MNIST 10k over 3 seeds
    .9739/.9646/.9709/.9023 vs .9748/.9634/.9696/.9068, the demo over 9 seeds 0.9732 vs 0.9743
    (``results/pruning_*_p20_*``, ``results/demo_seeds0-8_s128_p20.md``).
    """

    n_iters: int = field(
        default=30,
        metadata=_help("Arnoldi iterations n (HVPs), or with solver 'lanczos' the basis size."),
    )
    top_k: int = field(default=20, metadata=_help("eigenpairs p kept, by |lambda|."))
    restart_tol: float | None = field(
        default=5e-2,
        metadata=_help(
            "the relative residual of solver='lanczos' (as in ArnoldiConfig); with solver='auto' "
            "a number selects 'lanczos' (except on XLA, with basis_file, or n_iters < top_k + 2) "
            "and None 'arnoldi'."
        ),
    )
    hvp_samples: int | None = field(
        default=128,
        metadata=_help(
            "size of the HVP sample, drawn once from the training set without replacement with "
            "seed and fixed for the run; None uses the whole training set."
        ),
    )
    params: ParamSelector = field(
        default=None,
        metadata=_help(
            "parameters to analyse: names, module prefixes or globs (or a predicate); None: "
            "every parameter that requires grad."
        ),
    )
    validation: Literal["auto", "off"] = field(
        default="auto",
        metadata=_help(
            "'auto': also compute validation influence (sum over the validation set of "
            "I(x, z), about <g_val, H^-1 g_x>) when a validation loader is there (the callback's "
            "val_dataloader, else the Trainer's); 'off': never."
        ),
    )
    validation_samples: int | None = field(
        default=None,
        metadata=_help(
            "use a seeded random subset of this many validation examples; None: all of them."
        ),
    )
    score_candidates: float | None = field(
        default=3.0,
        metadata=_help(
            "when an InfluenceDataModule prunes by a signal of the analysis (its 'auto', "
            "validation or self-influence), compute the influence signals only for the "
            "score_candidates x fraction share of the training set that the AUM ranks most "
            "suspect (>= 1); the other examples get NaN influence signals and rank below every "
            "scored one. None (or no such pruning, no AUM, shard_batches): score every example."
        ),
    )
    warm_start: bool = field(
        default=True,
        metadata=_help(
            "start each fit of a run from the previous analysis' eigenvectors (same "
            "parameters): the wanted pairs converge in fewer products, to the same restart_tol.",
            "execution",
        ),
    )
    dynamics: bool = field(
        default=True,
        metadata=_help(
            "record each example's training loss and margin during training (the signals "
            "loss_mean and aum; needs InfluenceDataModule's sampler), from the training "
            "step's own outputs."
        ),
    )
    batch_size: int | None = field(
        default=None,
        metadata=_help(
            "batch size of the HVP and scoring loaders; None: the train loader's (a cached HVP "
            "sample is joined into batches of up to 256, and scoring uses up to 256 when its "
            "memory per example is known to fit in 256 MiB a batch).",
            "execution",
        ),
    )
    num_workers: int = field(
        default=0,
        metadata=_help("worker processes of the HVP and scoring loaders.", "execution"),
    )
    every_n_epochs: int = field(
        default=1,
        metadata=_help(
            "analyse at the end of every n-th training epoch; 0: only at the end.", "schedule"
        ),
    )
    at_train_end: bool = field(
        default=True,
        metadata=_help(
            "also analyse at the end of training (skipped when the last epoch-end analysis "
            "already saw the final weights).",
            role="schedule",
        ),
    )
    on_error: Literal["warn", "raise"] = field(
        default="warn",
        metadata=_help(
            "'warn' skips a failed analysis (non-finite loss or HVP, ...) with a warning and "
            "training continues; 'raise' fails the fit.",
            role="schedule",
        ),
    )
    log_top_n: int = field(
        default=16,
        metadata=_help("how many of the most self-influential examples to log.", "schedule"),
    )
    max_events: int | None = field(
        default=None,
        metadata=_help(
            "keep only the newest events in memory and in checkpoints (the files keep all); "
            "None keeps all.",
            role="schedule",
        ),
    )
    max_eigenpairs_mb: float | None = field(
        default=256,
        metadata=_help(
            "save the eigenpairs of each analysis (eigenpairs.safetensors in its event folder: "
            "reused by explain, score --resume and interrupted analyses) when they take at most "
            "this many MiB (k x P x 4 bytes); None: always; 0: never.",
            role="execution",
        ),
    )
    shard_batches: int | None = field(
        default=None,
        metadata=_help(
            "stream the scores to <event>/scores/ in shards of this many batches (memory "
            "independent of N; an interrupted analysis of the same weights resumes from the "
            "complete shards and the saved eigenpairs); None scores in memory.",
            role="execution",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _int("hvp_samples", self.hvp_samples, 1, "None uses the whole training set", True)
        _int("validation_samples", self.validation_samples, 1, "None uses all of them", True)
        _int("batch_size", self.batch_size, 1, "None reuses the train loader's", True)
        _int("num_workers", self.num_workers, 0, "0 loads in the main process")
        _int("every_n_epochs", self.every_n_epochs, 0, "0 analyses only at the end of training")
        _int("log_top_n", self.log_top_n, 0, "0 shows no examples")
        _int("max_events", self.max_events, 1, "None keeps every event", True)
        _int("shard_batches", self.shard_batches, 1, "None scores in memory", True)
        candidates = self.score_candidates
        if candidates is not None and (
            isinstance(candidates, bool)
            or not isinstance(candidates, (int, float))
            or not candidates >= 1
        ):
            raise ValueError(
                f"score_candidates={candidates!r} must be a number >= 1 (the scored share of the "
                "training set in multiples of the pruning fraction, e.g. 3) or None (score every "
                "example)"
            )
        if self.max_eigenpairs_mb is not None and not self.max_eigenpairs_mb >= 0:
            raise ValueError(
                f"max_eigenpairs_mb={self.max_eigenpairs_mb!r} must be >= 0 (MiB; 0 never saves "
                "them, None always does)"
            )
        if isinstance(self.params, str):
            self.params = [self.params]
        elif self.params is not None and not callable(self.params):
            self.params = list(self.params)

    @property
    def resolved_solver(self) -> str:
        """As ``ArnoldiConfig.resolved_solver``, except that ``"auto"`` with the default
        ``restart_tol`` falls back to ``"arnoldi"`` where thick restart cannot run: with
        ``basis_file``, or a basis too small for the pairs (``n_iters < top_k + 2``)."""
        if self.solver != "auto" or self.restart_tol is None:
            return super().resolved_solver
        fits = self.basis_file is None and self.n_iters >= self.top_k + 2
        return "lanczos" if fits else "arnoldi"

    def engine_config(self) -> ArnoldiConfig:
        """The ``ArnoldiConfig`` part (what the engine sees)."""
        names = {f.name for f in dataclasses.fields(ArnoldiConfig)}
        values = {n: getattr(self, n) for n in names}
        if self.solver == "auto" and self.resolved_solver == "arnoldi":
            values["restart_tol"] = None
        return ArnoldiConfig(**values)

    @classmethod
    def fast(cls, **overrides: Any) -> AnalysisConfig:
        """A small preset: 50 HVPs on a 512-example sample, 30 eigenpairs (seconds on a CPU)."""
        return cls(**{"n_iters": 50, "top_k": 30, "hvp_samples": 512, **overrides})

    @classmethod
    def paper(cls, **overrides: Any) -> AnalysisConfig:
        """The paper's Table 1 settings: n=200 iterations, the top p=100 by |lambda|, all data."""
        return cls(
            **{"n_iters": 200, "top_k": 100, "hvp_samples": None, "restart_tol": None, **overrides}
        )


CombineMode = Literal["latest", "mean", "normalized_sum"]
COMBINE_MODES: tuple[str, ...] = typing.get_args(CombineMode)
PruneMode = Literal["drop", "reweight"]


@dataclass
class PruningConfig(_Config):
    """What ``InfluenceDataModule`` drops or down-weights, and by which signal (see
    ``lightning_influence.pruning``)."""

    signal: str | list[str] = field(
        default="auto",
        metadata=_help(
            "the per-example signal that ranks the suspects (lightning_influence.pruning.signals): "
            "a name ('validation_influence', 'loss', 'aum', 'self_influence', 'loss_mean', ...), "
            "a list of names (their rank mean), or 'auto': the rank mean of the AUM and the worst "
            "validation class' influence (validation_influence_min) when the events have a "
            "validation set, else the AUM (else the loss); see README 'Pruning noisy data'."
        ),
    )
    mode: PruneMode = field(
        default="drop",
        metadata=_help("'drop' leaves examples out; 'reweight' samples them less often."),
    )
    fraction: float = field(
        default=0.1,
        metadata=_help("in [0, 1): the share of the training set dropped (or down-weighted)."),
    )
    start_epoch: int = field(default=0, metadata=_help("the first epoch that may be pruned."))
    max_dropped: int | float | None = field(
        default=None,
        metadata=_help(
            "cap on the total dropped: a count (int) or a share of the dataset (float)."
        ),
    )
    cumulative: bool = field(
        default=False,
        metadata=_help("drop mode: each new event drops fraction more of the examples still kept."),
    )
    combine: CombineMode = field(
        default="latest",
        metadata=_help(
            "across events: 'latest' (the newest event's), 'mean' (the mean quantile over "
            "events) or 'normalized_sum' (each event's suspicion over its mean, summed)."
        ),
    )
    min_per_class: int = field(
        default=1, metadata=_help("never keep fewer examples of a class (needs labels).")
    )
    temperature: float = field(
        default=0.05, metadata=_help("reweight mode: width of the weight transition, > 0.")
    )
    floor: float = field(
        default=0.0, metadata=_help("reweight mode: the weight of the most suspect examples.")
    )
    seed: int | None = field(
        default=None,
        metadata=_help("shuffle seed of the train sampler; None: PL_GLOBAL_SEED, else 0."),
    )
    write_files: bool = field(
        default=True, metadata=_help("write dropped.csv (or weights.csv) beside the scores.")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from lightning_influence.pruning.signals import signal_spec

        names = [self.signal] if isinstance(self.signal, str) else list(self.signal)
        if not names:
            raise ValueError("signal=[] selects nothing: name at least one signal, or 'auto'")
        if names != ["auto"]:
            for name in names:
                signal_spec(name)  # an unknown name: an error listing the valid ones
        if not isinstance(self.signal, str):
            self.signal = names
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(
                f"fraction={self.fraction!r} must be in [0, 1): the share of the training set "
                f"{'dropped' if self.mode == 'drop' else 'down-weighted'} (0.1 = 10%)"
            )
        _int("start_epoch", self.start_epoch, 0, "0 prunes from the first epoch")
        cap = self.max_dropped
        if cap is not None and (
            isinstance(cap, bool)
            or not isinstance(cap, (int, float))
            or cap < 0
            or (isinstance(cap, float) and cap > 1.0)
        ):
            raise ValueError(
                f"max_dropped={cap!r} must be a count >= 0 (int) or a share of the dataset in "
                "[0, 1] (float)"
            )
        _int("min_per_class", self.min_per_class, 0, "0 turns the class safeguard off")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r} must be > 0 (e.g. 0.05)")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor={self.floor!r} must be in [0, 1]")

    def cap(self, size: int) -> int | None:
        """``max_dropped`` as a count for a dataset of ``size`` examples."""
        if isinstance(self.max_dropped, float):
            return int(self.max_dropped * size)
        return self.max_dropped
