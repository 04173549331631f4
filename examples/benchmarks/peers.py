"""Peers side by side: lightning-influence against Captum and pyDVL on the same model and data.

The model and data are the digits benchmark's (``digits.py``: 9,258-parameter CNN, 1,500 digits,
10% labels flipped, trained 40 epochs), the setting in which issue 2 quotes Captum 0.9 (29.9 s fit,
3.5 s scoring) and pyDVL 0.10 (35.1 s, 0.84 s). Each method fits on all 1,500 training examples
(the HVP sample) and scores self-influence for all of them. Reported per method: fit and scoring
CPU seconds (one thread, measured in this run), the ratio ours/theirs end to end, AUC/AP for
finding the flipped labels, and the relative difference of the top eigenvalues against ours.

* Captum ``ArnoldiInfluenceFunction`` at equal n and p (``arnoldi_dim=n``, ``projection_dim=p``,
  ``arnoldi_tol`` tiny so that all n iterations run). Captum's Hessian is of the summed loss and
  carries ``hessian_reg`` on its diagonal; its eigenvalues are compared as
  ``(lambda - hessian_reg) / N``. Captum keeps the top eigenvalues algebraically (positive ones),
  ours by |lambda|; the comparison pairs the i-th largest positive eigenvalue of each.
* Captum ``TracInCP`` at the same checkpoints as our ``TracInInfluence`` (per-sample gradients
  through its Conv2d/Linear hooks, ``sample_wise_grads_per_batch=True``).
* pyDVL ``ArnoldiInfluence`` (``rank=p``, ``krylov_dimension=n``): implicitly restarted Lanczos
  (ARPACK) to tolerance, so its number of HVPs is not fixed at n. Self-influence is the diagonal
  of ``influences_from_factors`` per batch (pyDVL has no self-influence call).
* Kronfluence is not run: kronfluence 1.0.1 requires torchvision, which must never be installed
  alongside this project (it breaks ``import pytorch_lightning``).

Install (a separate virtual environment, never the project's):
``python3 -m venv /work/venvs/peers && /work/venvs/peers/bin/pip install -c constraints.txt
torch==2.13.0 -r examples/benchmarks/requirements-peers.txt``. Run with that interpreter:
``PYTHONPATH=. /work/venvs/peers/bin/python examples/benchmarks/peers.py [--quick]``.
``--peers captum`` runs Captum only (without pyDVL installed). Without a peer installed the script
says how to install it and exits with status 2. Our Arnoldi also runs with ``hvp_cache=True``
(issue 13: cached products), and each peer's speed-up is given against both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    DEFAULT_OUT,
    Timer,
    cross_entropy_loss,
    detection_metrics,
    machine_info,
    markdown_table,
    set_threads,
    tune_allocator,
    write_results,
)
from digits import build_cnn, load_data, train

from lightning_influence import ArnoldiInfluence, TracInInfluence

INSTALL = (
    "python3 -m venv /work/venvs/peers && /work/venvs/peers/bin/pip install -c constraints.txt "
    "torch==2.13.0 -r examples/benchmarks/requirements-peers.txt && /work/venvs/peers/bin/pip "
    "install -c constraints.txt --no-deps -e ."
)
PEERS = {"captum": "captum==0.9.0", "pydvl": "pydvl[influence]==0.10.0"}


def import_peers(names: list[str]) -> dict:
    """The peer modules by name; exits with an install hint (status 2) if one is missing."""
    import importlib

    found, missing = {}, []
    for name in names:
        try:
            found[name] = importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({PEERS[name]}): {err}")
    if missing:
        print(
            "peers.py compares against peer libraries that are not installed here:\n  "
            + "\n  ".join(missing)
            + "\nInstall them into a SEPARATE virtual environment (never the project's; an "
            "unpinned torch pulls a multi-GB CUDA build), then run the script with it:\n  "
            + INSTALL
            + "\n  PYTHONPATH=. /work/venvs/peers/bin/python examples/benchmarks/peers.py\n"
            "To run without pyDVL: --peers captum.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return found


def load_checkpoint(model: nn.Module, path: str) -> float:
    """Captum's ``checkpoints_load_func``: load the state dict, return its learning rate."""
    state = torch.load(path)
    lr = state.pop("learning_rate", 1.0)
    model.load_state_dict(state)
    return lr


def eigen_agreement(ours: torch.Tensor, theirs: torch.Tensor, count: int) -> float:
    """Largest relative difference between the ``count`` largest positive eigenvalues of each."""
    a = ours[ours > 0].sort(descending=True).values[:count].double()
    b = theirs[theirs > 0].sort(descending=True).values[:count].double()
    m = min(len(a), len(b))
    if m == 0:
        return float("nan")
    return float(((a[:m] - b[:m]).abs() / a[:m].abs()).max())


def find_eigenvalues(obj, depth: int = 0):
    """pyDVL keeps its eigenvalues deep inside its block structure: find ``eigen_vals``."""
    if depth > 6 or obj is None:
        return None
    if hasattr(obj, "eigen_vals"):
        return obj.eigen_vals
    children = vars(obj).values() if hasattr(obj, "__dict__") else []
    if isinstance(obj, dict):
        children = obj.values()
    for child in children:
        if isinstance(child, (torch.Tensor, str, int, float, nn.Module)):
            continue
        found = find_eigenvalues(child, depth + 1)
        if found is not None:
            return found
    return None


def run_captum_arnoldi(model, loader, checkpoint, n, p, timer):
    from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

    with timer("fit"):
        captum = ArnoldiInfluenceFunction(
            model,
            loader,
            checkpoint,
            checkpoints_load_func=load_checkpoint,
            loss_fn=nn.CrossEntropyLoss(reduction="none"),
            batch_size=256,
            hessian_dataset=loader,
            projection_dim=p,
            arnoldi_dim=n,
            arnoldi_tol=1e-12,
            seed=0,
            show_progress=False,
        )
    with timer("score"):
        scores = captum.self_influence(show_progress=False)
    # R_i = v_i / sqrt(l_i) with unit v_i: l_i = 1 / ||R_i||^2 (summed-loss Hessian + reg).
    norms = torch.stack([sum(t.double().square().sum() for t in r) for r in captum.R])
    eigenvalues = (1.0 / norms - captum.hessian_reg) / len(loader.dataset)
    return scores, eigenvalues


def run_pydvl_arnoldi(model, loader, n, p, timer):
    from pydvl.influence.torch import ArnoldiInfluence as PyDVLArnoldi

    with timer("fit"):
        pydvl = PyDVLArnoldi(model, F.cross_entropy, rank=p, krylov_dimension=n).fit(loader)
    with timer("score"):
        parts = []
        for xb, yb in loader:
            factors = pydvl.influence_factors(xb, yb)
            parts.append(pydvl.influences_from_factors(factors, xb, yb).diagonal())
        scores = torch.cat(parts)
    scores = -scores if float(scores.mean()) < 0 else scores  # pyDVL's sign convention
    eigenvalues = find_eigenvalues(pydvl)
    return scores, eigenvalues


def run_captum_tracin(model, loader, paths, timer):
    from captum.influence import TracInCP

    with timer("score"):
        tracin = TracInCP(
            model,
            loader,
            paths,
            checkpoints_load_func=load_checkpoint,
            loss_fn=nn.CrossEntropyLoss(reduction="sum"),
            batch_size=256,
            sample_wise_grads_per_batch=True,
        )
        scores = tracin.self_influence(show_progress=False)
    return scores


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (about a minute)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--num-train", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--n-iters", type=int, default=200)
    parser.add_argument("--ps", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--default-malloc", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--peers", nargs="+", choices=sorted(PEERS), default=sorted(PEERS), help="peers to run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.num_train, args.epochs, args.n_iters, args.ps = 600, 10, 40, [10]
    set_threads(args.threads)
    tune_allocator(not args.default_malloc)
    name = "peers_quick" if args.quick else "peers"

    peers = import_peers(args.peers)
    captum, pydvl = peers.get("captum"), peers.get("pydvl")

    torch.manual_seed(args.seed)
    x, y, flipped = load_data(args.num_train, 0.1, args.seed)
    model = build_cnn()
    _, checkpoints, lrs = train(model, x, y, args.epochs, 3e-3, args.seed, args.checkpoints)
    model.eval()
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    tmp = tempfile.mkdtemp(prefix="li-peers-")
    paths = []
    for i, (state, lr) in enumerate(zip(checkpoints, lrs, strict=True)):
        paths.append(os.path.join(tmp, f"ckpt{i}.pt"))
        torch.save({**state, "learning_rate": lr}, paths[-1])

    rows, timer = [], Timer()

    walls: dict[str, float] = {}
    cached_total: dict[int, float] = {}

    def add(library, method, p, scores, fit_s, score_s, ours_total=None, eig=None, vs_cache=None):
        m = detection_metrics(scores, flipped)
        total = fit_s + score_s
        wall = (timer.wall["fit"] if fit_s else 0.0) + timer.wall["score"]
        if ours_total is None:
            walls["ours"] = wall
        rows.append(
            {
                "library": library,
                "method": method,
                "n": args.n_iters if "Arnoldi" in method else None,
                "p": p,
                "fit_s": fit_s,
                "score_s": score_s,
                "total_s": total,
                "ours/theirs": None if ours_total is None else ours_total / total,
                "speed-up": None if ours_total is None else total / ours_total,
                "speed-up vs hvp_cache": None if vs_cache is None else total / vs_cache,
                "total_wall_s": wall,
                "wall speed-up": None if ours_total is None else wall / walls["ours"],
                "AUC": 100 * m["auc"],
                "AP": 100 * m["ap"],
                "top-eig max rel diff": eig,
            }
        )

    for p in args.ps:
        ours = ArnoldiInfluence(
            model, cross_entropy_loss, n_iters=args.n_iters, top_k=p, progress=False
        )
        with timer("fit"):
            ours.fit(loader)
        with timer("score"):
            scores = ours.self_influence(loader)
        ours_total = timer.seconds["fit"] + timer.seconds["score"]
        add(
            "lightning-influence",
            "Arnoldi",
            p,
            scores,
            timer.seconds["fit"],
            timer.seconds["score"],
        )
        ours_eigs = ours.eigenvalues

        cached = ArnoldiInfluence(
            model, cross_entropy_loss, n_iters=args.n_iters, top_k=p, progress=False, hvp_cache=True
        )
        with timer("fit"):
            cached.fit(loader)
        with timer("score"):
            scores = cached.self_influence(loader)
        cached_total[p] = timer.seconds["fit"] + timer.seconds["score"]
        add(
            "lightning-influence",
            "Arnoldi, hvp_cache=True",
            p,
            scores,
            timer.seconds["fit"],
            timer.seconds["score"],
            ours_total,
            eigen_agreement(ours_eigs, cached.eigenvalues, min(p, 10)),
        )
        # this row's speed-up: our default over our cached fit (both ours, same run)
        rows[-1]["speed-up"] = ours_total / cached_total[p]
        rows[-1]["wall speed-up"] = walls["ours"] / rows[-1]["total_wall_s"]
        rows[-1]["ours/theirs"] = None

        if captum is None:
            continue
        scores, eigs = run_captum_arnoldi(model, loader, paths[-1], args.n_iters, p, timer)
        add(
            f"Captum {captum.__version__}",
            "ArnoldiInfluenceFunction",
            p,
            scores,
            timer.seconds["fit"],
            timer.seconds["score"],
            ours_total,
            eigen_agreement(ours_eigs, eigs, min(p, 10)),
            cached_total[p],
        )
        rows[-1]["top eigenvalues"] = eigs.sort(descending=True).values[:5].tolist()
        rows[-3]["top eigenvalues"] = ours_eigs[:5].tolist()

        if pydvl is None:
            continue
        scores, eigs = run_pydvl_arnoldi(model, loader, args.n_iters, p, timer)
        add(
            f"pyDVL {pydvl.__version__}",
            "ArnoldiInfluence",
            p,
            scores,
            timer.seconds["fit"],
            timer.seconds["score"],
            ours_total,
            None if eigs is None else eigen_agreement(ours_eigs, eigs.cpu(), min(p, 10)),
            cached_total[p],
        )

    ours_tracin = TracInInfluence(model, cross_entropy_loss, checkpoints, lrs, progress=False)
    with timer("score"):
        scores = ours_tracin.self_influence(loader)
    ours_total = timer.seconds["score"]
    label = f"TracIn[{len(checkpoints)}]"
    add("lightning-influence", label, None, scores, 0.0, ours_total)
    if captum is not None:
        scores = run_captum_tracin(model, loader, paths, timer)
        add(
            f"Captum {captum.__version__}",
            f"TracInCP[{len(checkpoints)}]",
            None,
            scores,
            0.0,
            timer.seconds["score"],
            ours_total,
        )

    info = machine_info()
    columns = ["library", "method", "n", "p", "fit_s", "score_s", "total_s", "speed-up"]
    columns += ["speed-up vs hvp_cache"]
    columns += ["AUC", "AP", "top-eig max rel diff", "total_wall_s", "wall speed-up"]
    goal = [r for r in rows if r["method"] == "ArnoldiInfluenceFunction"]
    md = [
        f"# Peers{' (quick)' if args.quick else ''}",
        "",
        f"Digits benchmark model (CNN, {sum(p.numel() for p in model.parameters())} parameters), "
        f"{args.num_train} training digits with 10% labels flipped; fit on all of them (HVP "
        f"sample), self-influence of all of them. CPU seconds, one thread, measured in one run. "
        "speed-up = their total / our total for the same method, n and p. "
        "top-eig max rel diff: largest relative difference of the top min(p, 10) positive "
        "eigenvalues against ours (Captum's rescaled to the mean loss).",
        "",
        markdown_table(rows, columns),
        "",
        "Goal (issue 5): at least 10x faster end to end than Captum's Arnoldi at equal n and p, "
        "eigenvalues agreeing to 1%: "
        + "; ".join(
            f"p={r['p']}: {r['speed-up']:.1f}x ({r['speed-up vs hvp_cache']:.1f}x with hvp_cache), "
            f"{100 * r['top-eig max rel diff']:.2g}%"
            for r in goal
        )
        + ". The hvp_cache row's speed-up column is ours default / ours cached, and its "
        "top-eig column compares it with our default fit.",
        "",
        "Kronfluence (EK-FAC self-scores) is not run: kronfluence 1.0.1 requires torchvision, "
        "which must never be installed next to this project.",
        "",
        f"Machine: {info['processor']}, {info['cpu_count']} cores shared with other jobs, torch "
        f"{info['torch']} ({info['torch_threads']} thread), {info['date_utc']}.",
    ]
    payload = {
        "config": vars(args),
        "machine": info,
        "versions": {k: v.__version__ for k, v in peers.items()},
        "rows": rows,
    }
    write_results(args.out, name, "\n".join(md), payload)
    return payload


if __name__ == "__main__":
    main()
