"""The numerical core: pure torch, no Lightning (a test pins this).

``hvp`` (Hessian-vector products and the dataset Hessian operator), ``arnoldi`` (the iteration and
distillation), ``projection`` (projected per-example gradients), ``scores`` (the influence formulas),
``parameters`` (which parameters, and their flat view), ``functional_loss`` (the user's loss as a
function of a parameter dict), ``batch`` (batch pytrees), ``context`` (the autograd context),
``lanczos`` (thick-restart Lanczos to a residual tolerance), ``ggn`` (Gauss-Newton products),
``xla`` (graph cuts on XLA devices).
"""

from lightning_influence.core.arnoldi import (
    ArnoldiResult,
    Eigenpairs,
    NonFiniteError,
    arnoldi,
    distill,
)
from lightning_influence.core.hvp import DatasetHessian, HVPMode, hvp, resolve_hvp_mode
from lightning_influence.core.parameters import ParameterSpace, ParamSelector, select_parameters
from lightning_influence.core.projection import (
    ProjectionMode,
    per_example_gradients,
    project_grad,
    project_jvp,
)
from lightning_influence.core.scores import (
    EigenvaluePolicy,
    influence,
    inverse_eigenvalues,
    self_influence,
)

__all__ = [
    "ArnoldiResult",
    "DatasetHessian",
    "Eigenpairs",
    "EigenvaluePolicy",
    "HVPMode",
    "NonFiniteError",
    "ParamSelector",
    "ParameterSpace",
    "ProjectionMode",
    "arnoldi",
    "distill",
    "hvp",
    "influence",
    "inverse_eigenvalues",
    "per_example_gradients",
    "project_grad",
    "project_jvp",
    "resolve_hvp_mode",
    "select_parameters",
    "self_influence",
]
