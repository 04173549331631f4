"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_write_bytes"]


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[str]], None] | Callable[[IO[bytes]], None],
    *,
    binary: bool = False,
) -> Path:
    """Write a file through ``write(handle)`` to a temporary name, fsync, rename into place.

    ``binary=True`` opens the handle in bytes mode (a PNG, say); else it is text.

    A crash (or an error inside ``write``) never leaves a half-written ``path``: the old file
    stays as it was and the temporary file is removed. The file gets the mode a plain ``open``
    would give it (0666 less the umask: 0644 under the usual 022). Returns the path.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "scores.csv"
        >>> atomic_write(target, lambda h: h.write("index,score\\n")).read_text()
        'index,score\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; a file written in place would get 0666 less the umask,
        # as Lightning's own files beside ours do (teammates and a TensorBoard server read them)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    # The process umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``atomic_write`` of ``data`` as the whole content of ``path`` (bytes)."""
    return atomic_write(path, lambda handle: handle.write(data), binary=True)
