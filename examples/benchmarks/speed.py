"""Speed levers of the Arnoldi fit (issue 13), each measured in one run on one thread.

Setting: the digits benchmark's CNN (``digits.py``: 9,258 parameters, 1,500 scikit-learn digits, 10%
of the labels flipped, 40 epochs of Adam, rebuilt with the same seed) and, for the product
throughput, an MLP on the same digits (64-128-128-10, 26,122 parameters).

1. **Products per second** of ``DatasetHessian`` over the whole 1,500-example HVP sample: the
   default product (forward-over-reverse, ``jvp`` of ``grad``, one vector at a time), reverse-over-
   reverse, the cached pullback (``cache=True``: the primal forward and backward pass done once per
   batch and kept, a product is one reverse pass), and block products ``matmat`` of b in
   {1, 2, 4, 8, 16} vectors (``vmap`` over the tangents), uncached and cached. Reported: CPU
   seconds per product, the speed-up over the default, the seconds to build the cache, and the
   memory its graphs keep (the torch profiler's CPU memory accounting).
2. **The engine's fit with and without ``hvp_cache``** at n=200, p=100 (the paper's setting),
   CNN and MLP:
   fit and end-to-end CPU seconds, fit / its products alone, the largest relative difference of
   the eigenvalues, and AP for finding the flipped labels.
3. **A smaller HVP sample per product**: the top-100 eigenvalues (by |lambda|) of an n=200
   Arnoldi run on the Hessian of m examples, against scipy's ARPACK (``eigsh``, to tolerance) on
   the full 1,500-example operator, for m in {100, 250, 500, 1500}, with one fixed sample
   (seeded) and with a fresh sample drawn for every product (``resampled``, the paper's code).
   Reported: relative eigenvalue error (median and max over the top 10 and the top 100), AUC and
   AP of the self-influence ``sum_i <e_i, g_x>^2 / |lambda_i|`` of all 1,500 examples, and the
   CPU seconds of the 200 products.
4. **Block Arnoldi** (``experimental.block_arnoldi`` over the cached ``experimental.matmat``) on the full
   sample with b in {1, 4, 8} and the same 200 products: CPU seconds and the same errors and AP.

Run: ``PYTHONPATH=. python examples/benchmarks/speed.py [--quick] [--out DIR]`` (about 4 CPU
minutes; ``--quick``: 600 examples, n=60, p=20, well under a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_OUT,
    Timer,
    arpack_eigenvalues,
    clock,
    cross_entropy_loss,
    detection_metrics,
    eigenvalues_found,
    machine_info,
    markdown_table,
    set_threads,
    tune_allocator,
    write_results,
)
from digits import build_cnn, load_data, train

from lightning_influence import ArnoldiInfluence
from lightning_influence.core.arnoldi import arnoldi, distill
from lightning_influence.core.context import analysis_context
from lightning_influence.core.functional_loss import make_functional_loss
from lightning_influence.core.hvp import DatasetHessian
from lightning_influence.core.parameters import ParameterSpace, select_parameters
from lightning_influence.core.projection import per_example_gradients
from lightning_influence.experimental import block_arnoldi, distill_block, matmat

BATCH = 256
PRODUCT_COLUMNS = ["model", "params", "method", "b", "s/product", "products/s", "speed-up"]
PRODUCT_COLUMNS += ["cache_build_s", "cache_MiB"]
FIT_COLUMNS = ["model", "hvp_cache", "n", "p", "fit_s", "score_s", "total_s", "fit/its products"]
FIT_COLUMNS += ["fit speed-up", "total speed-up", "eig max rel diff", "AUC", "AP"]
BLOCK_COLUMNS = ["b", "products", "arnoldi_s", "top10 median err %", "top10 max err %"]
SIZE_COLUMNS = ["m", "sample", "products_s", "top10 median err %", "top10 max err %"]


def build_mlp() -> nn.Module:
    """64-128-128-10 on the flattened 8x8 digits: 26,122 parameters."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def loadavg() -> str:
    """The machine's load (1, 5, 15 minutes) from /proc/loadavg, or 'n/a'."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "n/a"


def operator(model: nn.Module, x: Tensor, y: Tensor, **kwargs) -> DatasetHessian:
    """``DatasetHessian`` of the mean cross-entropy over ``(x, y)`` in batches of 256."""
    params = {n: p.detach() for n, p in select_parameters(model, None).items()}
    space = ParameterSpace.of(params)
    f = make_functional_loss(model, cross_entropy_loss)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)]
    mode = kwargs.pop("mode", "fwd-rev")
    return DatasetHessian(f, params, space, batches, mode, len(y), **kwargs)


def retained_bytes(build: Callable[[], object]) -> int:
    """Net bytes that torch allocates on the CPU while ``build`` runs and keeps after it.

    Counted by the profiler's memory accounting (allocations minus frees per op): for building
    the cache it is the size of the graphs the cache keeps. (torch.func refuses
    ``saved_tensors_hooks``, which would have counted the saved tensors directly.)
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        kept = build()
    del kept
    return int(sum(e.self_cpu_memory_usage for e in prof.key_averages()))


def per_product(run: Callable[[], Tensor], products: int, repeats: int) -> float:
    """Median CPU seconds per product over ``repeats`` calls of ``run`` (after one warm-up)."""
    run()
    times = []
    for _ in range(repeats):
        start = clock()
        run()
        times.append((clock() - start) / products)
    return sorted(times)[len(times) // 2]


def throughput(label: str, model: nn.Module, x: Tensor, y: Tensor, blocks, repeats: int):
    """Section 1 for one model: rows of seconds per product and speed-ups over the default."""
    rows = []
    with analysis_context(model):
        plain = operator(model, x, y)
        dim = plain.space.dim
        gen = torch.Generator().manual_seed(0)
        V = torch.randn(max(blocks), dim, generator=gen)
        base = per_product(lambda: plain(V[0]), 1, repeats)

        def add(method: str, b: int, seconds: float, **extra) -> None:
            rows.append(
                {
                    "model": label,
                    "params": dim,
                    "method": method,
                    "b": b,
                    "s/product": seconds,
                    "products/s": 1 / seconds,
                    "speed-up": base / seconds,
                    **extra,
                }
            )

        add("fwd-rev (default)", 1, base)
        revrev = operator(model, x, y, mode="rev-rev")
        add("rev-rev", 1, per_product(lambda: revrev(V[0]), 1, repeats))
        cached = operator(model, x, y, cache=True)
        start = clock()
        nbytes = retained_bytes(lambda: cached(V[0]))
        build = clock() - start
        add(
            "cached pullback",
            1,
            per_product(lambda: cached(V[0]), 1, repeats),
            cache_build_s=build,
            cache_MiB=nbytes / 2**20,
        )
        reference = torch.stack([plain(v) for v in V[:4]])
        err_cached = float((matmat(cached, V[:4]) - reference).norm() / reference.norm())
        err_block = float((matmat(plain, V[:4]) - reference).norm() / reference.norm())
        for b in blocks:
            add("matmat (vmap)", b, per_product(lambda b=b: matmat(plain, V[:b]), b, repeats))
        for b in blocks:
            add("matmat, cached", b, per_product(lambda b=b: matmat(cached, V[:b]), b, repeats))
        cached.clear_cache()
    return rows, {"cached_vs_default_rel_err": err_cached, "matmat_vs_default_rel_err": err_block}


def engine_fits(label: str, model, loader, flipped, n: int, p: int, timer: Timer):
    """Section 2: the engine's fit at (n, p) with and without ``hvp_cache``."""
    rows, eigs = [], {}
    for cache in (False, True):
        engine = ArnoldiInfluence(
            model, cross_entropy_loss, n_iters=n, top_k=p, progress=False, hvp_cache=cache
        )
        with timer("fit"):
            engine.fit(loader)
        with timer("score"):
            scores = engine.self_influence(loader)
        m = detection_metrics(scores, flipped)
        eigs[cache] = engine.eigenvalues
        stats = engine.fit_stats
        rows.append(
            {
                "model": label,
                "hvp_cache": cache,
                "n": n,
                "p": p,
                "fit_s": timer.seconds["fit"],
                "score_s": timer.seconds["score"],
                "total_s": timer.seconds["fit"] + timer.seconds["score"],
                "fit/its products": stats["fit_seconds"] / stats["hvp_seconds"],
                "AUC": 100 * m["auc"],
                "AP": 100 * m["ap"],
            }
        )
    rows[1]["fit speed-up"] = rows[0]["fit_s"] / rows[1]["fit_s"]
    rows[1]["total speed-up"] = rows[0]["total_s"] / rows[1]["total_s"]
    rel = ((eigs[True] - eigs[False]).abs() / eigs[False].abs()).max()
    rows[1]["eig max rel diff"] = float(rel)
    return rows


class _Resampled:
    """``v -> H_S v`` with a fresh sample S of ``m`` examples (without replacement) per product."""

    def __init__(self, model, x, y, m: int, seed: int) -> None:
        self.model, self.x, self.y, self.m = model, x, y, m
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, v: Tensor) -> Tensor:
        idx = torch.randperm(len(self.y), generator=self.gen)[: self.m]
        return operator(self.model, self.x[idx], self.y[idx])(v)


def sample_sizes(model, x, y, flipped, sizes, n: int, p: int, seed: int, timer: Timer, blocks=()):
    """Sections 3 and 4: eigenvalue error against ARPACK on the full operator, and AP, against
    the sample size m, and against the block size b of block Arnoldi on the full sample."""
    rows = []
    with analysis_context(model):
        full = operator(model, x, y, cache=True)
        dim = full.space.dim
        with timer("eigsh"):
            ref = arpack_eigenvalues(full, dim, p)
        eigsh_products = full.calls
        full.clear_cache()
        f = make_functional_loss(model, cross_entropy_loss)
        params = {k: t.detach() for k, t in select_parameters(model, None).items()}
        grads = torch.cat(
            [
                per_example_gradients(f, params, (x[i : i + BATCH], y[i : i + BATCH]), full.space)
                for i in range(0, len(y), BATCH)
            ]
        )
        start = torch.randn(dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        start = start.float()

        def evaluate(pairs) -> dict:
            lam = pairs.eigenvalues
            err = (lam - ref[: len(lam)]).abs() / ref[: len(lam)].abs()
            proj = grads @ pairs.eigenvectors.T.float()
            metrics = detection_metrics((proj.double().square() / lam.abs()).sum(1), flipped)
            top10 = err[: min(10, p)]
            return {
                "top10 median err %": 100 * float(top10.median()),
                "top10 max err %": 100 * float(top10.max()),
                f"top{p} median err %": 100 * float(err.median()),
                f"top{p} max err %": 100 * float(err.max()),
                f"top{p} within 1%": eigenvalues_found(ref[:p], lam)[0],
                "AUC": 100 * metrics["auc"],
                "AP": 100 * metrics["ap"],
            }

        block_rows = []
        for b in blocks:
            op = operator(model, x, y, cache=True)
            with timer("arnoldi"):
                if b == 1:
                    result = arnoldi(op, start, n)
                else:
                    gen = torch.Generator().manual_seed(0)
                    block = torch.randn(b, dim, generator=gen, dtype=torch.float64).float()
                    result = block_arnoldi(lambda V, op=op: matmat(op, V), block, n // b)
            op.clear_cache()
            block_rows.append(
                {
                    "b": b,
                    "products": result.iterations,
                    "arnoldi_s": timer.seconds["arnoldi"],
                    **evaluate(distill(result, p) if b == 1 else distill_block(result, p)),
                }
            )
        for m in sizes:
            for kind in ("fixed", "resampled"):
                if kind == "resampled" and m >= len(y):
                    continue  # every draw would be the full sample
                if kind == "fixed":
                    sub = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed + 1))
                    sub = sub[:m].sort().values
                    op = operator(model, x[sub], y[sub], cache=True)
                else:
                    op = _Resampled(model, x, y, m, seed + 2)
                with timer("arnoldi"):
                    result = arnoldi(op, start, n)
                if kind == "fixed":
                    op.clear_cache()
                rows.append(
                    {
                        "m": m,
                        "sample": kind,
                        "products_s": timer.seconds["arnoldi"],
                        **evaluate(distill(result, p)),
                    }
                )
    reference = {"eigsh_products": eigsh_products, "eigsh_s": timer.seconds["eigsh"], "ref": ref}
    return rows, block_rows, reference


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (well under a minute)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for speed.md / speed.json")
    parser.add_argument("--num-train", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--n-iters", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1500])
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument(
        "--krylov-blocks", type=int, nargs="+", default=[1, 4, 8], help="block Arnoldi's b"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per product figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.num_train, args.epochs, args.n_iters, args.top_k = 600, 10, 60, 20
        args.sizes, args.blocks, args.repeats, args.krylov_blocks = [100, 600], [1, 4], 1, [1, 4]
    set_threads(args.threads)
    tune_allocator(True)
    name = "speed_quick" if args.quick else "speed"
    load_start = loadavg()

    torch.manual_seed(args.seed)
    x, y, flipped = load_data(args.num_train, 0.1, args.seed)
    cnn = build_cnn()
    train(cnn, x, y, args.epochs, 3e-3, args.seed, 1)
    cnn.eval()
    mlp = build_mlp()
    train(mlp, x, y, args.epochs, 3e-3, args.seed, 1)
    mlp.eval()
    timer = Timer()

    product_rows, errors = throughput("CNN", cnn, x, y, args.blocks, args.repeats)
    rows_mlp, errors_mlp = throughput("MLP", mlp, x, y, args.blocks, args.repeats)
    product_rows += rows_mlp
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    fit_rows = engine_fits("CNN", cnn, loader, flipped, args.n_iters, args.top_k, timer)
    fit_rows += engine_fits("MLP", mlp, loader, flipped, args.n_iters, args.top_k, timer)
    size_rows, block_rows, ref = sample_sizes(
        cnn,
        x,
        y,
        flipped,
        args.sizes,
        args.n_iters,
        args.top_k,
        args.seed,
        timer,
        args.krylov_blocks,
    )
    load_end = loadavg()

    info = machine_info()
    p = args.top_k
    md = [
        f"# Speed levers (issue 13){' (quick)' if args.quick else ''}",
        "",
        f"{args.num_train} digits, 10% labels flipped; the digits CNN and a 64-128-128-10 MLP, "
        f"trained {args.epochs} epochs. CPU seconds of this process, {info['torch_threads']} "
        f"thread(s), every ratio measured in this run. Load average (1, 5, 15 min): {load_start} "
        f"at the start, {load_end} at the end ({info['cpu_count']} cores).",
        "",
        f"## 1. Products over the {args.num_train}-example HVP sample (batches of {BATCH})",
        "",
        "speed-up: seconds per product of the default (fwd-rev, one vector) over this method's. "
        f"Median of {args.repeats} timed calls after a warm-up. cache_MiB: what building the cache "
        "allocates and keeps (torch profiler's memory accounting).",
        "",
        markdown_table(
            product_rows,
            PRODUCT_COLUMNS,
        ),
        "",
        "Relative error against the default products (float32, 4 vectors): cached "
        f"{errors['cached_vs_default_rel_err']:.1e} (CNN), "
        f"{errors_mlp['cached_vs_default_rel_err']:.1e} (MLP); matmat "
        f"{errors['matmat_vs_default_rel_err']:.1e} (CNN), "
        f"{errors_mlp['matmat_vs_default_rel_err']:.1e} (MLP).",
        "",
        f"## 2. The engine's fit, n={args.n_iters}, p={p}, with and without hvp_cache",
        "",
        "fit/its products: the fit's CPU seconds over those of its products alone (the rest is "
        "Gram-Schmidt, distillation and the projection probe).",
        "",
        markdown_table(
            fit_rows,
            FIT_COLUMNS,
        ),
        "",
        f"## 3. HVP sample size m (CNN, n={args.n_iters}, top {p} by |lambda|)",
        "",
        f"Reference: ARPACK (scipy eigsh, k={p}, tol=1e-6) on the full {args.num_train}-example "
        f"operator, {ref['eigsh_products']} products, {ref['eigsh_s']:.1f} s with the cached "
        "product. err: |lambda_i - lambda_i(ARPACK)| / |lambda_i(ARPACK)|, the i-th by |lambda| "
        "of each (+x against -x where the signs interleave: the 200% maxima); within 1%: how many "
        "of ARPACK's top p the run found to 1%, paired by rank within each sign. AUC/AP: self-influence of all examples with these eigenpairs, w = 1/|lambda|. "
        "products_s: CPU seconds of the n products (fixed samples use the cached product; "
        "resampled ones cannot cache and use the default product).",
        "",
        markdown_table(
            size_rows,
            [
                *SIZE_COLUMNS,
                f"top{p} median err %",
                f"top{p} max err %",
                f"top{p} within 1%",
                "AUC",
                "AP",
            ],
        ),
        "",
        f"## 4. Block Arnoldi on the full sample (CNN, {args.n_iters} products, cached matmat)",
        "",
        "b=1 is the engine's Arnoldi (one vector per product); b > 1: ``block_arnoldi`` over "
        "``experimental.matmat`` with block CGS2, n/b blocks of b. Errors against the same "
        "ARPACK reference as section 3.",
        "",
        markdown_table(
            block_rows,
            [
                *BLOCK_COLUMNS,
                f"top{p} median err %",
                f"top{p} max err %",
                f"top{p} within 1%",
                "AUC",
                "AP",
            ],
        ),
        "",
        f"Machine: {info['processor']}, {info['cpu_count']} cores, torch {info['torch']}, "
        f"{info['date_utc']}.",
    ]
    payload = {
        "config": vars(args),
        "machine": info,
        "loadavg": {"start": load_start, "end": load_end},
        "products": product_rows,
        "product_errors": {"CNN": errors, "MLP": errors_mlp},
        "fits": fit_rows,
        "sample_sizes": size_rows,
        "block_arnoldi": block_rows,
        "reference": {
            "eigsh_products": ref["eigsh_products"],
            "eigsh_s": ref["eigsh_s"],
            "eigenvalues": ref["ref"].tolist(),
        },
    }
    write_results(args.out, name, "\n".join(md), payload)
    return payload


if __name__ == "__main__":
    main()
