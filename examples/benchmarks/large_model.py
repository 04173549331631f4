"""A model of 10M+ parameters on this CPU: InfluenceCallback with n_iters >= 100, the Krylov basis
in a file (numpy memmap, float16) and the scores streamed in shards (issue 12, item 3).

An MLP (784 -> 2048 -> 4096 -> 10: 10,041,354 parameters) trains one epoch on synthetic data
(Gaussian inputs, labels from a fixed random linear rule, 10% flipped), then the callback fits
n=100 Arnoldi iterations on a 64-example HVP sample and scores every training example. Printed:
the fit and scoring times, examples per hour, the basis file's size, and the process's peak RSS
beside the bound

    peak RSS  <~  base + resident basis pages (at most (n + 1) * P * basis bytes; file-backed,
                  the operating system may drop them) + k * P * 4 B (eigenvectors)
                  + 2 conversion chunks of ~32 MiB + a per-example-gradient chunk (256 MiB)
                  + a few P * 4 B vectors (HVP tangents, Gram-Schmidt work)

Run: ``PYTHONPATH=. python examples/benchmarks/large_model.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import tempfile
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import DEFAULT_OUT, machine_info, markdown_table, set_threads, write_results

from lightning_influence import InfluenceCallback
from lightning_influence.losses import cross_entropy_loss


class MLP(pl.LightningModule):
    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 0.3M-parameter model, n=20")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    widths = (784, 256, 256, 10) if args.quick else (784, 2048, 4096, 10)
    n_iters, top_k, num_train = (20, 5, 256) if args.quick else (100, 20, 2000)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(num_train, 784, generator=g)
    y = (x @ torch.randn(784, 10, generator=g)).argmax(1)
    flip = torch.rand(num_train, generator=g) < 0.1
    y = torch.where(flip, (y + 1) % 10, y)
    model = MLP(widths)
    num_params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        basis_file = os.path.join(tmp, "basis.f16")
        callback = InfluenceCallback(
            cross_entropy_loss,
            every_n_epochs=0,
            n_iters=n_iters,
            top_k=top_k,
            hvp_samples=64,
            batch_size=64,
            projection="grad",
            basis_device="cpu",
            basis_dtype="float16",
            basis_file=basis_file,
            shard_batches=4,
            dirpath=os.path.join(tmp, "influence"),
            on_error="raise",
            log_top_n=0,
            progress=False,
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=1,
            callbacks=[callback],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        rss_before = peak_rss_mib()
        start = time.perf_counter()
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
        wall = time.perf_counter() - start
        basis_bytes = os.path.getsize(basis_file)
        event = callback.latest_event
        timings = event.manifest["timings"]
        residuals = (event.residuals / event.eigenvalues.abs()).max().item()
    scored_per_hour = num_train / timings["scoring_seconds"] * 3600
    row = {
        "parameters": num_params,
        "n_iters": n_iters,
        "top_k": top_k,
        "examples": num_train,
        "fit_s": round(timings["fit_seconds"], 1),
        "hvp_s": round(timings["hvp_seconds"], 1),
        "scoring_s": round(timings["scoring_seconds"], 1),
        "examples_per_hour": round(scored_per_hour),
        "basis_file_MiB": round(basis_bytes / 2**20),
        "basis_in_RAM_fp32_MiB": round((n_iters + 1) * num_params * 4 / 2**20),
        "peak_rss_MiB": round(peak_rss_mib()),
        "peak_rss_before_fit_MiB": round(rss_before),
        "bound_MiB": round(
            rss_before + basis_bytes / 2**20 + (top_k + 4) * num_params * 4 / 2**20 + 2 * 32 + 256
        ),
        "max_relative_residual": f"{residuals:.2e}",
        "run_wall_s": round(wall, 1),
    }
    name = "large_model_quick" if args.quick else "large_model"
    table = markdown_table([row], list(row))
    text = (
        f"# InfluenceCallback on a {num_params:,}-parameter MLP\n\n{table}\n\n"
        "basis on disk as float16 (numpy memmap); scores streamed in shards of 4 batches; "
        "bound = peak RSS before the fit + the basis file (if all resident) + (top_k + 4) x P x "
        "4 B + two 32 MiB conversion chunks + a 256 MiB gradient chunk.\n"
    )
    write_results(args.out, name, text, {"rows": [row], "machine": machine_info()})
    return row


if __name__ == "__main__":
    main()
