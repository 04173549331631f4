"""The numerical core: pure torch, no Lightning (a test pins this). The documented namespace for
the maths.

* curvature: ``curvature`` (the operator interface and its registry), ``hvp`` (Hessian-vector
  products, the ``"hessian"`` operator), ``ggn`` (Gauss-Newton products, the ``"ggn"`` operator);
* eigensolvers: ``solvers`` (the interface and its registry), ``arnoldi`` (the iteration and
  ``distill``), ``lanczos`` (thick-restart Lanczos to a residual tolerance);
* scoring: ``projection`` (projected per-example gradients), ``scores`` (the influence formulas);
* plumbing: ``parameters`` (which parameters, and their flat view), ``functional_loss`` (the user's
  loss as a function of a parameter dict), ``batch`` (batch pytrees), ``context`` (the autograd
  context), ``xla`` (graph cuts on XLA devices).
"""

from lightning_influence.core.arnoldi import (
    ArnoldiResult,
    Eigenpairs,
    NonFiniteError,
    arnoldi,
    distill,
)
from lightning_influence.core.curvature import (
    CurvatureInputs,
    DatasetOperator,
    curvature_names,
    make_curvature,
    register_curvature,
)
from lightning_influence.core.ggn import DatasetGGN
from lightning_influence.core.hvp import DatasetHessian, HVPMode, hvp, resolve_hvp_mode
from lightning_influence.core.lanczos import thick_restart_lanczos
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
from lightning_influence.core.solvers import (
    SolveRequest,
    SolveResult,
    register_solver,
    solve,
    solver_names,
)

__all__ = [
    "ArnoldiResult",
    "CurvatureInputs",
    "DatasetGGN",
    "DatasetHessian",
    "DatasetOperator",
    "Eigenpairs",
    "EigenvaluePolicy",
    "HVPMode",
    "NonFiniteError",
    "ParamSelector",
    "ParameterSpace",
    "ProjectionMode",
    "SolveRequest",
    "SolveResult",
    "arnoldi",
    "curvature_names",
    "distill",
    "hvp",
    "influence",
    "inverse_eigenvalues",
    "make_curvature",
    "per_example_gradients",
    "project_grad",
    "project_jvp",
    "register_curvature",
    "register_solver",
    "resolve_hvp_mode",
    "select_parameters",
    "self_influence",
    "solve",
    "solver_names",
    "thick_restart_lanczos",
]
