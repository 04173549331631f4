"""Atomic writes: all or nothing, with the mode a plain open() would give."""

import os
import stat

import pytest

from lightning_influence.io.atomic import atomic_write, atomic_write_bytes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_of_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"x")
        text = atomic_write(tmp_path / "f.csv", lambda h: h.write("a\n"))
    finally:
        os.umask(previous)
    for p in (path, text):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = atomic_write(tmp_path / "scores.csv", lambda h: h.write("old\n"))

    def fail(handle):
        handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
