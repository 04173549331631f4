"""The wheel users install: only the package, and only the dependencies the library needs."""

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_holds_the_package_and_declares_lean_dependencies(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("lightning_influence-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"lightning_influence", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for part in ("lightning_influence/py.typed", "lightning_influence/core/arnoldi.py",
                 "lightning_influence/lightning/analysis.py", "lightning_influence/cli/parser.py"):  # fmt: skip
        assert part in names
    assert not [n for n in names if n.endswith((".csv", ".json", ".log", ".ckpt", ".pyc"))]

    metadata = email.message_from_string(
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    )
    required = [r for r in metadata.get_all("Requires-Dist") if "extra ==" not in r]
    names_required = {r.split(">")[0].split("<")[0].split("=")[0].strip().lower() for r in required}
    assert names_required == {
        "torch",
        "pytorch-lightning",
        "numpy",
        "tensorboard",
        "tqdm",
        "pyyaml",
        "lightning-utilities",
        "typing-extensions",
        "safetensors",
    }
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"demo", "bench", "plot", "pandas", "dev", "xla"} <= extras
