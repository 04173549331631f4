"""The three recipes of docs/architecture.md, each a tiny working extension: a new curvature, a
new eigensolver, a new pruning signal and a new logger are one file and one registration."""

from __future__ import annotations

from typing import ClassVar

import torch

from lightning_influence import ArnoldiInfluence, PruningConfig
from lightning_influence.core.curvature import CurvatureInputs, register_curvature
from lightning_influence.core.hvp import DatasetHessian
from lightning_influence.core.solvers import SolveRequest, SolveResult, register_solver
from lightning_influence.io.events import ScoringEvent
from tests.conftest import Dense, cross_entropy, make_data, make_mlp

DAMPING = 0.25


class DampedHessian(DatasetHessian):
    """H + DAMPING * I: each batch adds its share of the damping."""

    def batch_product(self, i, batch, tangent):
        product = super().batch_product(i, batch, tangent)
        share = DAMPING * len(batch[1])  # the operator divides the sum by N
        return {n: p + share * tangent[n] for n, p in product.items()}


@register_curvature("test-damped-hessian")
def _damped(inputs: CurvatureInputs) -> DampedHessian:
    return DampedHessian(
        inputs.f, inputs.params, inputs.space, inputs.batches, inputs.mode,
        inputs.num_examples, inputs.reduce_fn,
    )  # fmt: skip


def test_a_new_curvature_is_one_class_and_one_registration():
    model = make_mlp()
    x, y, batches = make_data()
    engine = ArnoldiInfluence(
        model, cross_entropy, n_iters=60, top_k=5, curvature="test-damped-hessian", progress=False
    ).fit(batches)
    H = Dense(model, x, y).hessian()
    evals = torch.linalg.eigvalsh(H + DAMPING * torch.eye(len(H), dtype=H.dtype))
    top = evals[torch.sort(evals.abs(), descending=True, stable=True).indices[:5]]
    torch.testing.assert_close(engine.eigenvalues, top, rtol=1e-8, atol=1e-10)


@register_solver("test-dense")
def _dense(matvec, start, request: SolveRequest) -> SolveResult:
    """Every product of the identity's columns, then eigh: exact for tiny models."""
    from lightning_influence.core.arnoldi import Eigenpairs

    eye = torch.eye(start.numel(), dtype=start.dtype, device=start.device)
    matrix = torch.stack([matvec(e) for e in eye], dim=1)
    evals, evecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    order = torch.sort(evals.abs(), descending=True, stable=True).indices[: request.top_k]
    vectors = evecs[:, order].T
    signs = torch.where(vectors.amax(1) >= -vectors.amin(1), 1.0, -1.0).to(vectors)
    pairs = Eigenpairs(evals[order].double(), vectors * signs[:, None], torch.zeros(len(order)))
    return SolveResult(pairs, start.numel(), False, {})


def test_a_new_solver_is_one_function_and_one_registration():
    model = make_mlp()
    _, _, batches = make_data()
    dense = ArnoldiInfluence(
        model, cross_entropy, n_iters=10, top_k=5, solver="test-dense", progress=False
    ).fit(batches)
    krylov = ArnoldiInfluence(model, cross_entropy, n_iters=60, top_k=5, progress=False)
    krylov.fit(batches)
    torch.testing.assert_close(dense.eigenvalues, krylov.eigenvalues, rtol=1e-8, atol=1e-10)
    assert dense.fit_stats["solver"] == "test-dense"


def test_a_new_pruning_signal_is_one_registration():
    from lightning_influence.pruning import plan_for, register_signal

    register_signal(
        "test_loss_times_influence",
        suspect="high",
        description="the loss times the self-influence",
        derive=lambda s: s["loss"] * s["self_influence"],
    )
    event = ScoringEvent(
        0, 5,
        {"loss": torch.tensor([1.0, 2.0, 3.0, 0.1]), "self_influence": torch.tensor([1.0, 0.1, 1.0, 9.0])},
        torch.ones(1),
    )  # fmt: skip
    config = PruningConfig(fraction=0.5, signal="test_loss_times_influence")
    plan = plan_for([event], config, 4)
    assert plan.keep.tolist() == [False, True, False, True]  # products 1, 0.2, 3, 0.9


def test_a_new_logger_is_one_adapter_and_one_registration():
    from pytorch_lightning.loggers import Logger

    from lightning_influence.lightning.loggers import LoggerAdapter, log_event, register_logger

    class Notebook(Logger):
        name, version = "notebook", 0
        seen: ClassVar[list] = []

        def log_metrics(self, metrics, step=None):
            self.seen.append(("metrics", step))

        def log_hyperparams(self, params):
            pass

    @register_logger(Notebook)
    class NotebookAdapter(LoggerAdapter):
        def log_event(self, logger, view):
            logger.seen.append(("event", view.ranking, [r["index"] for r in view.top]))

    event = ScoringEvent(1, 7, torch.tensor([0.1, 0.9, 0.5]), torch.ones(2))
    data = [(torch.zeros(2), 0)] * 3
    log_event([Notebook()], event, data, top_n=2)
    assert Notebook.seen == [("metrics", 7), ("event", "self_influence", [1, 2])]
