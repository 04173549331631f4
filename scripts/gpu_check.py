"""One short GPU check of the engine (and, when present, the callback and DataModule) on CUDA.

Run on a machine with a GPU: ``PYTHONPATH=. python scripts/gpu_check.py --out results/``. It
compares CUDA against CPU results on the same weights and prints a few throughput figures; every
check prints PASS or FAIL and the script exits non-zero on any FAIL. Figures go to
``<out>/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_influence import ArnoldiInfluence
from lightning_influence.demo.model import digits_cnn
from lightning_influence.losses import cross_entropy_loss

RESULTS: dict = {"checks": {}, "figures": {}}


def check(name: str, ok: bool, detail: str = "") -> None:
    RESULTS["checks"][name] = {"ok": bool(ok), "detail": detail}
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)


loss_fn = cross_entropy_loss


def cnn() -> nn.Module:
    """The package's digits CNN (demo, benchmarks and this check share it)."""
    return digits_cnn()


def digits(noise: float = 0.1, seed: int = 0):
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < noise
    y = torch.where(flip, (y + torch.randint(1, 10, (len(y),), generator=g)) % 10, y)
    return x, y, flip


def train(model, x, y, device, epochs=15):
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
            opt.step()
    return model.eval()


def engine_checks(device: str) -> None:
    torch.manual_seed(0)
    x, y, _ = digits()
    model = train(cnn(), x, y, device)
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    kw = dict(n_iters=80, top_k=30, progress=False)
    gpu = ArnoldiInfluence(model, loss_fn, projection="grad", **kw).fit(loader)
    s_gpu = gpu.self_influence(loader)
    cpu_model = cnn()
    cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    cpu = ArnoldiInfluence(cpu_model.eval(), loss_fn, projection="grad", **kw).fit(loader)
    s_cpu = cpu.self_influence(loader)
    conv = cpu.relative_residuals < 1e-3
    rel = ((gpu.eigenvalues - cpu.eigenvalues).abs() / cpu.eigenvalues.abs())[conv]
    check(
        "engine eigenvalues cuda == cpu (converged pairs, rel 1e-3)",
        bool((rel < 1e-3).all()),
        f"max rel {rel.max().item():.2e} over {int(conv.sum())} converged pairs",
    )
    top = s_cpu.topk(50).indices
    overlap = len(set(top.tolist()) & set(s_gpu.topk(50).indices.tolist()))
    corr = torch.corrcoef(torch.stack([s_gpu.double(), s_cpu.double()]))[0, 1].item()
    check(
        "engine self-influence cuda ~ cpu",
        corr > 0.999 and overlap >= 45,
        f"pearson {corr:.6f}, top-50 overlap {overlap}",
    )
    s_jvp = ArnoldiInfluence(model, loss_fn, projection="jvp", **kw)
    s_jvp.load_state_dict(gpu.state_dict())
    s_jvp.config.projection = "jvp"
    s_jvp.projection_mode_ = "jvp"
    diff = ((s_jvp.self_influence(loader) - s_gpu).abs().max() / s_gpu.abs().max()).item()
    check("engine jvp route == grad route on cuda", diff < 1e-4, f"max rel diff {diff:.2e}")
    off = ArnoldiInfluence(model, loss_fn, basis_device="cpu", basis_dtype="bfloat16", **kw).fit(
        loader
    )
    rel_off = (
        ((off.eigenvalues[:5] - gpu.eigenvalues[:5]).abs() / gpu.eigenvalues[:5].abs()).max().item()
    )
    check(
        "engine basis offloaded to cpu in bf16 (top-5, rel 2e-2)",
        off.eigenvectors.device.type == "cpu" and rel_off < 2e-2,
        f"max rel {rel_off:.2e}",
    )
    RESULTS["figures"]["digits_fit_seconds_cuda"] = gpu.fit_stats["fit_seconds"]
    RESULTS["figures"]["digits_fit_seconds_cpu"] = cpu.fit_stats["fit_seconds"]


def big_cnn() -> nn.Module:
    # About 800k parameters, the paper's large-model setting for MNIST.
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 12 * 12, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def throughput(device: str, n_hvp: int, n_score: int, n_iters: int = 200) -> None:
    torch.manual_seed(0)
    model = big_cnn().to(device).eval()
    x, y = torch.rand(n_score, 1, 28, 28), torch.randint(0, 10, (n_score,))
    hvp_loader = DataLoader(TensorDataset(x[:n_hvp], y[:n_hvp]), batch_size=512)
    engine = ArnoldiInfluence(
        model, loss_fn, n_iters=n_iters, top_k=min(100, n_iters), progress=False
    ).fit(hvp_loader)
    stats = engine.fit_stats
    RESULTS["figures"].update(
        params=stats["num_params"],
        fit_seconds=stats["fit_seconds"],
        hvp_seconds=stats["hvp_seconds"],
        fit_over_hvps=stats["fit_seconds"] / stats["hvp_seconds"],
        projection=engine.projection_mode_,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=512)
    torch.cuda.synchronize() if device == "cuda" else None
    start = time.perf_counter()
    engine.self_influence(loader)
    torch.cuda.synchronize() if device == "cuda" else None
    RESULTS["figures"]["self_influence_examples_per_second"] = n_score / (
        time.perf_counter() - start
    )
    check(
        "800k-param CNN: n=200 fit costs at most 1.2x its HVPs",
        stats["fit_seconds"] <= 1.2 * stats["hvp_seconds"],
        f"fit {stats['fit_seconds']:.2f}s, HVPs {stats['hvp_seconds']:.2f}s, P={stats['num_params']}",
    )


def lightning_checks(device: str) -> None:
    try:
        from lightning_influence import InfluenceCallback
    except ImportError as err:
        check("callback available", False, repr(err))
        return
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = cnn()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    x, y, _ = digits()
    root = tempfile.mkdtemp()
    for precision in ("32-true", "16-mixed", "bf16-mixed"):
        torch.manual_seed(0)
        callback = InfluenceCallback(
            cross_entropy_loss,
            every_n_epochs=2,
            n_iters=40,
            top_k=10,
            hvp_samples=512,
            progress=False,
        )
        trainer = pl.Trainer(
            accelerator="gpu",
            devices=1,
            max_epochs=3,
            precision=precision,
            callbacks=[callback],
            default_root_dir=os.path.join(root, precision),
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
        trainer.fit(Module(), loader)
        events = callback.events
        ok = len(events) >= 1 and all(torch.isfinite(e.self_influence).all() for e in events)
        ok = ok and all(os.path.isfile(os.path.join(e.directory, "manifest.json")) for e in events)
        check(
            f"callback on cuda, precision={precision}",
            ok,
            f"{len(events)} events, top eigenvalue {events[-1].eigenvalues[0].item():.4g}"
            if events
            else "no events",
        )
        if precision == "32-true":
            ckpt = os.path.join(root, "last.ckpt")
            trainer.save_checkpoint(ckpt)
            ordered = DataLoader(TensorDataset(x, y), batch_size=128)
            kw = dict(
                loss_fn=cross_entropy_loss, n_iters=40, top_k=10, hvp_samples=512, progress=False
            )
            on_gpu = InfluenceCallback.analyze_checkpoint(
                ckpt, Module, ordered, dirpath=os.path.join(root, "g"), device="cuda", **kw
            )
            on_cpu = InfluenceCallback.analyze_checkpoint(
                ckpt, Module, ordered, dirpath=os.path.join(root, "c"), device="cpu", **kw
            )
            rel = (
                (
                    (on_gpu.eigenvalues[:3] - on_cpu.eigenvalues[:3]).abs()
                    / on_cpu.eigenvalues[:3].abs()
                )
                .max()
                .item()
            )
            corr = torch.corrcoef(torch.stack([on_gpu.self_influence, on_cpu.self_influence]))[
                0, 1
            ].item()
            check(
                "analyze_checkpoint cuda == cpu",
                rel < 1e-3 and corr > 0.999,
                f"top-3 rel {rel:.2e}, pearson {corr:.6f}",
            )
    try:
        from lightning_influence import InfluenceDataModule  # noqa: F401
    except ImportError:
        print("SKIP InfluenceDataModule not in this tree")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=".")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, for a syntax check on CPU"
    )
    args = parser.parse_args()
    RESULTS["figures"]["device_name"] = (
        torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    )
    RESULTS["figures"]["torch"] = torch.__version__
    steps = [
        ("engine", lambda: engine_checks(args.device)),
        (
            "throughput",
            lambda: throughput(args.device, *((64, 128, 5) if args.quick else (4096, 20000, 200))),
        ),
    ]
    if args.device == "cuda":
        steps.append(("lightning", lambda: lightning_checks(args.device)))
    for name, step in steps:
        start = time.perf_counter()
        try:
            step()
        except Exception:
            check(f"{name} ran", False, traceback.format_exc(limit=5))
        print(f"-- {name}: {time.perf_counter() - start:.1f}s", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as handle:
        json.dump(RESULTS, handle, indent=2, default=str)
    print(json.dumps(RESULTS["figures"], indent=2, default=str))
    return 0 if all(c["ok"] for c in RESULTS["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
