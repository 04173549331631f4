"""The eigenpairs of an analysis, kept beside its signals: ``eigenpairs.safetensors``.

The fit is the expensive part of an analysis; its result (``[k]`` eigenvalues, ``[k, P]``
eigenvectors, residuals, with the parameter layout, the engine's config and projection route)
is saved in the event folder in safetensors (no pickle: safe to load from anywhere), so that
scoring other data, ``lightning-influence explain`` and an interrupted streamed analysis
(``score --resume``) reuse it instead of refitting. The metadata also holds the SHA-256 of the
analysed weights: eigenpairs are never applied to other weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lightning_influence.io.atomic import _umask

__all__ = ["EIGENPAIRS_FILE", "eigenpairs_bytes", "load_eigenpairs", "save_eigenpairs"]

EIGENPAIRS_FILE = "eigenpairs.safetensors"


def eigenpairs_bytes(state: dict[str, Any]) -> int:
    """What ``save_eigenpairs`` would write for an engine ``state_dict`` (bytes, about)."""
    directions = state["directions"]
    return int(directions.numel() * directions.element_size())


def save_eigenpairs(
    path: str | os.PathLike, state: dict[str, Any], *, weights_sha256: str | None = None
) -> Path:
    """Write an engine's ``state_dict`` (``ArnoldiInfluence.state_dict()``) as safetensors,
    atomically (a temporary file renamed into place).

    Example:
        >>> import tempfile
        >>> import torch
        >>> from lightning_influence import ArnoldiInfluence
        >>> model = torch.nn.Linear(3, 2)
        >>> data = [(torch.randn(6, 3), torch.randint(0, 2, (6,)))]
        >>> loss = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
        >>> engine = ArnoldiInfluence(model, loss, n_iters=6, top_k=3, progress=False).fit(data)
        >>> path = save_eigenpairs(tempfile.mkdtemp() + "/e.safetensors", engine.state_dict())
        >>> state, _ = load_eigenpairs(path)
        >>> torch.equal(state["eigenvalues"], engine.eigenvalues)
        True
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {
        "eigenvalues": state["eigenvalues"].detach().cpu().contiguous(),
        "directions": state["directions"].detach().cpu().contiguous(),
    }
    if state.get("residuals") is not None:
        tensors["residuals"] = state["residuals"].detach().cpu().contiguous()
    meta = {k: v for k, v in state.items() if k not in ("eigenvalues", "directions", "residuals")}
    metadata = {"state": json.dumps(meta, default=str), "weights_sha256": weights_sha256 or ""}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_eigenpairs(path: str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """The engine ``state_dict`` saved by ``save_eigenpairs`` and the analysed weights' SHA-256
    (None when unknown); ``engine.load_state_dict(state)`` restores it."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state: dict[str, Any] = json.loads(metadata.get("state", "{}"))
        for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            state[key] = handle.get_tensor(key)
    state.setdefault("residuals", None)
    return state, metadata.get("weights_sha256") or None
