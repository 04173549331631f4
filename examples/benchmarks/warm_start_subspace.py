"""Why a warm start saves few products: how far the previous analysis' eigenvectors are from
converged on the next analysis' Hessian (issue 21, item 3).

``warm_start.py`` measured the product's warm start (each fit starts from the sum of the previous
analysis' eigenvectors): 0.98x the products of a cold start. A block warm start (Rayleigh-Ritz
on the previous k eigenvectors, keep the pairs that are already converged, run Lanczos for the
rest) pays only if many of those pairs pass the solver's test ``||H y - theta y|| <= tol *
|theta|`` after the k products that Rayleigh-Ritz costs. This script measures that directly.

The demo's digits CNN trains on the demo's data (20% flipped labels, its optimizer, batch 32,
one thread). Every ``--every`` epochs the product fits the top ``--top-k`` pairs cold (thick-
restart Lanczos, ``restart_tol=5e-2``, cached HVPs, the same 256-example HVP sample each time).
From the second analysis on, the previous analysis' eigenvectors ``W`` are orthonormalized,
``H W`` is computed with ``torch.func`` (forward-over-reverse, independent of the engine),
and the Ritz pairs of ``W^T H W`` are tested: how many of the k pass 5e-2 (and 1e-1), the
largest relative residual of the top 10, and the largest relative difference of their top
eigenvalues from the cold fit's (paired by rank). As a check of the test itself, the cold fit's
own eigenvectors are tested on the same Hessian (all k must pass 5e-2).

    PYTHONPATH=. python examples/benchmarks/warm_start_subspace.py --out examples/benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, jvp

from lightning_influence import ArnoldiInfluence
from lightning_influence.demo.data import load
from lightning_influence.demo.model import DigitsCNN
from lightning_influence.losses import cross_entropy_loss


def ritz_test(
    model: torch.nn.Module, x: Tensor, y: Tensor, vectors: Tensor
) -> tuple[Tensor, Tensor]:
    """Ritz values (by |theta| descending) of ``vectors`` ([k, P], orthonormalized here) on the
    Hessian of the mean cross-entropy over ``(x, y)``, and their relative residuals."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta: Tensor) -> Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = shape.numel()
            params[name] = theta[offset : offset + size].view(shape)
            offset += size
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    w = torch.linalg.qr(vectors.T.to(flat.dtype))[0].T
    hw = torch.stack([jvp(grad(loss), (flat,), (v,))[1] for v in w]).double()
    w = w.double()
    gram = w @ hw.T
    theta, s = torch.linalg.eigh((gram + gram.T) / 2)
    order = theta.abs().argsort(descending=True)
    theta, s = theta[order], s[:, order]
    residual = (s.T @ hw - theta[:, None] * (s.T @ w)).norm(dim=1) / theta.abs()
    return theta, residual


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=2, help="analyse every N epochs")
    parser.add_argument("--top-k", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="examples/benchmarks/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    data = load(0.2, args.seed)
    x, y = data.x_train, data.y_noisy
    model = DigitsCNN()
    optimizer = model.configure_optimizers()
    generator = torch.Generator().manual_seed(args.seed)
    sample = torch.randperm(len(x), generator=generator)[:256]
    xs, ys = x[sample], y[sample]
    rows: list[dict[str, Any]] = []
    previous: Tensor | None = None
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 32):
            batch = order[i : i + 32]
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if (epoch + 1) % args.every:
            continue
        model.eval()
        engine = ArnoldiInfluence(
            model,
            cross_entropy_loss,
            n_iters=45,
            top_k=args.top_k,
            restart_tol=5e-2,
            hvp_cache=True,
            progress=False,
        ).fit([(xs, ys)])
        cold, vectors = engine.eigenvalues, engine.eigenvectors
        row: dict[str, Any] = {"epoch": epoch, "cold_products": int(engine.fit_stats["iterations"])}
        _, own = ritz_test(model, xs, ys, vectors)
        row["own_pass_5e-2"] = int((own <= 5e-2).sum())
        if previous is not None:
            theta, residual = ritz_test(model, xs, ys, previous)
            k = min(len(theta), len(cold))
            row.update(
                pass_5e2=int((residual <= 5e-2).sum()),
                pass_1e1=int((residual <= 1e-1).sum()),
                top10_max_residual=float(residual[:10].max()),
                top10_eig_rel_diff=float(((theta[:10] - cold[:10]) / cold[:10]).abs().max()),
                all_eig_rel_diff=float(((theta[:k] - cold[:k]) / cold[:k]).abs().max()),
            )
        rows.append(row)
        print(row, flush=True)
        previous = vectors
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"warm_start_subspace_every{args.every}.json").write_text(
        json.dumps({"args": vars(args), "rows": rows, "seconds": seconds}, indent=2)
    )
    k = args.top_k
    lines = [
        "# Warm starts: are the previous analysis' eigenvectors converged on the next Hessian?",
        "",
        "Command: `PYTHONPATH=. python examples/benchmarks/warm_start_subspace.py "
        f"--every {args.every} --out {args.out}`; digits CNN, demo data (20% flipped), seed "
        f"{args.seed}, top_k={k}, cold fits by thick-restart Lanczos at restart_tol=5e-2 on one "
        f"256-example HVP sample; {seconds:.0f} s wall.",
        "",
        f"Rayleigh-Ritz of the previous analysis' {k} eigenvectors on this analysis' Hessian "
        f"({k} products): how many of the {k} Ritz pairs pass `residual <= tol * |theta|`. "
        f"own = the cold fit's own {k} vectors on the same Hessian (the test's check).",
        "",
        "| epoch | cold products | own pass 5e-2 | previous pass 5e-2 | pass 1e-1 | top-10 max rel. residual | top-10 eigenvalue rel. diff | all |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "pass_5e2" not in r:
            lines.append(
                f"| {r['epoch']} | {r['cold_products']} | {r['own_pass_5e-2']}/{k} | (first) | | | | |"
            )
            continue
        lines.append(
            f"| {r['epoch']} | {r['cold_products']} | {r['own_pass_5e-2']}/{k} | "
            f"{r['pass_5e2']}/{k} | {r['pass_1e1']}/{k} | {r['top10_max_residual']:.3f} | "
            f"{r['top10_eig_rel_diff']:.3f} | {r['all_eig_rel_diff']:.2f} |"
        )
    (out / f"warm_start_subspace_every{args.every}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"rows": rows, "seconds": seconds}


if __name__ == "__main__":
    main()
