"""torch-xla's PJRT CPU device: the CPU's numbers, one compiled graph per Arnoldi iteration, and
``InfluenceCallback`` in ``Trainer(accelerator="tpu")`` writing and logging what it does on the CPU.

Needs torch-xla, which cannot share the main environment: ``scripts/test_xla.sh`` (``make
test-xla``) builds its own and runs ``pytest -m xla`` there. Elsewhere this module is skipped.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytestmark = pytest.mark.xla

os.environ.setdefault("PJRT_DEVICE", "CPU")
if os.environ.get("LI_REQUIRE_XLA"):
    import torch_xla  # scripts/test_xla.sh: a missing torch-xla is a failure, not a skip
else:
    torch_xla = pytest.importorskip(
        "torch_xla", reason="torch-xla is not installed: run scripts/test_xla.sh (make test-xla)"
    )
import pytorch_lightning as pl  # noqa: E402
import torch_xla._internal.tpu as tpu  # noqa: E402
import torch_xla.debug.metrics as met  # noqa: E402
from lightning_fabric.accelerators.xla import XLAAccelerator  # noqa: E402
from pytorch_lightning.loggers import TensorBoardLogger  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from lightning_influence import ArnoldiInfluence, InfluenceCallback  # noqa: E402
from lightning_influence.core.arnoldi import arnoldi  # noqa: E402
from lightning_influence.core.functional_loss import make_functional_loss  # noqa: E402
from lightning_influence.core.hvp import DatasetHessian, hvp, resolve_hvp_mode  # noqa: E402
from lightning_influence.core.parameters import ParameterSpace  # noqa: E402
from lightning_influence.core.projection import project_grad, project_jvp  # noqa: E402
from lightning_influence.core.xla import graph_cut  # noqa: E402
from lightning_influence.io.events import read_event  # noqa: E402
from lightning_influence.lightning.analysis import hvp_indices  # noqa: E402

XLA = torch_xla.device()
# The autograd engine sizes its device threads at the first backward of the process: an XLA
# backward after a CPU-only one fails an engine assert unless the XLA device existed by then.
torch.zeros(1, device=XLA).cpu()


def cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def mean_cross_entropy(model: nn.Module, batch) -> torch.Tensor:
    # reduction="mean" inside: forward-over-reverse HVPs of it are wrong on torch-xla 2.9.
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="mean").expand(len(x)) / len(x)


def make_model(seed: int = 0, d_in: int = 8, hidden: int = 16, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def make_loader(n: int = 96, d_in: int = 8, classes: int = 3, batch: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def on(device, model: nn.Module, loader):
    model = copy.deepcopy(model).to(device)
    f = make_functional_loss(model, cross_entropy)
    params = {n: p.detach() for n, p in model.named_parameters()}
    batches = [(x.to(device), y.to(device)) for x, y in loader]
    return model, f, params, batches


def test_engine_matches_cpu():
    model, loader = make_model(), make_loader()
    engines = {}
    for device in ("cpu", XLA):
        engine = ArnoldiInfluence(
            copy.deepcopy(model).to(device), cross_entropy, n_iters=20, top_k=6, progress=False
        )
        engine.fit(loader)
        engines[torch.device(device).type] = (engine, engine.self_influence(loader))
    (cpu, cpu_scores), (xla, xla_scores) = engines["cpu"], engines["xla"]

    assert xla.fit_stats["hvp_mode"] == "rev-rev"
    assert xla.projection_mode_ == "grad"
    assert xla.eigenvectors.device.type == "xla"
    torch.testing.assert_close(xla.eigenvalues, cpu.eigenvalues, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(xla.relative_residuals, cpu.relative_residuals, rtol=0.05, atol=1e-6)
    # Eigenvector signs are fixed by distill, so the vectors themselves agree.
    torch.testing.assert_close(xla.eigenvectors.cpu(), cpu.eigenvectors, rtol=0, atol=1e-4)
    assert xla_scores.device.type == "cpu" and xla_scores.shape == (96,)
    torch.testing.assert_close(xla_scores, cpu_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss_fn", [cross_entropy, mean_cross_entropy])
def test_auto_hvp_mode_is_right_on_xla(loss_fn):
    model, loader = make_model(), make_loader()
    mode = resolve_hvp_mode("auto", XLA)
    assert mode == "rev-rev"
    out = {}
    for device in ("cpu", XLA):
        m, _, params, batches = on(device, model, loader)
        f = make_functional_loss(m, loss_fn)
        space = ParameterSpace.of(params)
        v = torch.randn(space.dim, generator=torch.Generator().manual_seed(2)).to(device)
        out[str(device)] = space.flatten(hvp(f, params, batches[0], space.unflatten(v), mode))
    torch.testing.assert_close(out[str(XLA)].cpu(), out["cpu"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("route", ["grad", "jvp"])
def test_projections_match_cpu(route):
    # Both routes are right on XLA for per-example losses; the engine's 'auto' takes 'grad'
    # there without timing (lazy tensors time the tracing, not the work).
    model, loader = make_model(), make_loader()
    directions = torch.randn(5, ParameterSpace.of(dict(model.named_parameters())).dim)
    out = {}
    for device in ("cpu", XLA):
        _, f, params, batches = on(device, model, loader)
        space = ParameterSpace.of(params)
        d = directions.to(device)
        if route == "grad":
            out[str(device)] = project_grad(f, params, batches[0], d, space, chunk_size=16)
        else:
            out[str(device)] = project_jvp(f, params, batches[0], d, space, chunk_size=2)
    torch.testing.assert_close(out[str(XLA)].cpu(), out["cpu"], rtol=1e-4, atol=1e-5)


def _counts() -> dict[str, int]:
    def samples(name: str) -> int:
        data = met.metric_data(name)
        return data[0] if data else 0

    fallbacks = sum(
        met.counter_value(n) or 0 for n in met.counter_names() if n.startswith("aten::")
    )
    return {
        "compiles": samples("CompileTime"),
        "executions": samples("ExecuteTime"),
        "to_host": samples("TransferFromDeviceTime"),
        "cpu_fallbacks": fallbacks,
    }


@pytest.mark.parametrize("basis_device", [None, "cpu"])
def test_arnoldi_runs_one_cached_graph_per_iteration(basis_device):
    model, loader = make_model(seed=3, hidden=12), make_loader(n=64)
    _, f, params, batches = on(XLA, model, loader)
    space = ParameterSpace.of(params)
    hessian = DatasetHessian(f, params, space, batches, "rev-rev", num_examples=64)
    start = torch.randn(space.dim, generator=torch.Generator().manual_seed(0)).to(XLA)
    warmup, n_iters = 2, 14  # iteration 0 traces the start vector; 1 compiles the steady graph
    snapshots: dict[int, dict[str, int]] = {}

    def record(k: int) -> None:
        if k in (warmup - 1, n_iters - 1):
            snapshots[k] = _counts()

    result = arnoldi(
        hessian,
        start,
        n_iters,
        basis_device=basis_device,
        on_iteration=record,
        graph_cut=graph_cut(XLA),
    )
    assert result.iterations == n_iters and not result.breakdown
    before, after = snapshots[warmup - 1], snapshots[n_iters - 1]
    steady = n_iters - warmup
    delta = {name: after[name] - before[name] for name in before}
    assert delta["compiles"] == 0, delta
    # one graph per iteration, plus one for each second Gram-Schmidt pass the DGKS test asked
    # for (data-dependent: rounding that earlier tests' global settings can move)
    assert delta["executions"] <= steady + result.reorthogonalized, delta
    assert delta["to_host"] <= steady, delta  # one host sync per iteration
    assert delta["cpu_fallbacks"] == 0, delta


# -- the callback in a Trainer on the XLA device ------------------------------------------------
class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, d_in: int = 6, classes: int = 3) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, d_in, generator=g)
        self.y = (self.x @ torch.randn(d_in, classes, generator=g)).argmax(1)
        self.y[:3] = (self.y[:3] + 1) % classes  # a few flipped labels

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def _tags(log_dir: Path) -> dict[str, list[str]]:
    tags: dict[str, set[str]] = {}
    for events in log_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
        accumulator.Reload()
        for kind, names in accumulator.Tags().items():
            if isinstance(names, list):
                tags.setdefault(kind, set()).update(names)
    return {kind: sorted(names) for kind, names in tags.items() if names}


def _files(root: Path) -> dict[str, list[str]]:
    return {d.name: sorted(p.name for p in d.iterdir()) for d in sorted(root.iterdir())}


def _fit_with_callback(tmp_path: Path, accelerator: str):
    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    pl.seed_everything(0, verbose=False)
    model = Module()
    callback = InfluenceCallback(
        cross_entropy, n_iters=10, top_k=4, restart_tol=None, hvp_samples=16, progress=False
    )  # Arnoldi on both devices (the default, thick restart, is not run on XLA)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=2,
        callbacks=[callback],
        logger=TensorBoardLogger(tmp_path, name=accelerator, version=0),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    data = torch.utils.data.DataLoader(_Data(), batch_size=8, shuffle=True)
    trainer.fit(model, train_dataloaders=data)
    return trainer, callback, model


@pytest.fixture
def pjrt_cpu_as_tpu(monkeypatch):
    """Lightning accepts ``accelerator="tpu"`` only where it counts TPU chips; PJRT's CPU device
    stands in for one here (tests only). Lightning caches the count, so the cache is cleared."""

    def clear() -> None:
        for cached in (XLAAccelerator.auto_device_count, XLAAccelerator.is_available):
            getattr(cached, "cache_clear", lambda: None)()

    monkeypatch.setattr(tpu, "num_available_devices", lambda: 1)
    clear()
    yield
    monkeypatch.undo()
    clear()


def test_callback_on_tpu_accelerator_matches_cpu(tmp_path, pjrt_cpu_as_tpu):
    runs = {name: _fit_with_callback(tmp_path, name) for name in ("cpu", "tpu")}
    (cpu_trainer, cpu_cb, _), (xla_trainer, xla_cb, xla_model) = runs["cpu"], runs["tpu"]

    assert type(xla_trainer.strategy).__name__ == "SingleDeviceXLAStrategy"
    assert xla_trainer.strategy.root_device.type == "xla"
    assert [e.name for e in xla_cb.events] == [e.name for e in cpu_cb.events] != []
    assert xla_cb.name == cpu_cb.name  # the accelerator is not an argument of the analysis
    cpu_root = Path(cpu_trainer.log_dir) / "influence" / cpu_cb.name
    xla_root = Path(xla_trainer.log_dir) / "influence" / xla_cb.name
    assert _files(xla_root) == _files(cpu_root)
    tags = _tags(Path(xla_trainer.log_dir))
    assert tags == _tags(Path(cpu_trainer.log_dir))
    assert {"influence/eigenvalue_0", "influence/self_influence_max"} <= set(tags["scalars"])
    assert "influence/self_influence" in tags["histograms"]
    for cpu_event, xla_event in zip(cpu_cb.events, xla_cb.events, strict=True):
        manifest = json.loads((Path(xla_event.directory) / "manifest.json").read_text())
        assert manifest["num_examples"] == 32 and manifest["hvp_examples"] == 16
        on_disk = read_event(xla_event.directory)
        torch.testing.assert_close(on_disk.self_influence, xla_event.self_influence)
        # Training on XLA rounds differently from training on the CPU: close, not equal.
        torch.testing.assert_close(xla_event.eigenvalues, cpu_event.eigenvalues, rtol=1e-2, atol=0)

    # The last event saw the final weights: the CPU engine on those weights gives its numbers.
    event, model = xla_cb.latest_event, copy.deepcopy(xla_model).cpu()
    engine = ArnoldiInfluence(model, cross_entropy, n_iters=10, top_k=4, progress=False)
    hvp_sample = torch.utils.data.Subset(
        _Data(), hvp_indices(32, xla_cb.config.hvp_samples, xla_cb.config.seed).tolist()
    )
    engine.fit(torch.utils.data.DataLoader(hvp_sample, batch_size=8))
    torch.testing.assert_close(engine.eigenvalues, event.eigenvalues, rtol=1e-4, atol=1e-7)
    scores = engine.self_influence(torch.utils.data.DataLoader(_Data(), batch_size=8)).double()
    torch.testing.assert_close(event.self_influence, scores, rtol=1e-3, atol=1e-6)
