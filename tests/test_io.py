"""Atomic writes leave either the old file or the new one, never a partial file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imageflows._io import atomic_write, atomic_write_text


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def fail(f: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"] and target.read_bytes() == b"old"


def test_write_replaces_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["b.txt"]


@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")
def test_written_files_keep_the_users_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not tempfile's private 0o600
