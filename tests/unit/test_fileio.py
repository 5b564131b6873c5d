"""Unit tests for retrain_pipeline.fileio: atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from retrain_pipeline.fileio import atomic_path, write_text_atomic


def test_write_text_atomic_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.json"
    write_text_atomic(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    assert os.listdir(path.parent) == ["out.json"]


def test_write_text_atomic_replaces(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old", encoding="utf-8")
    write_text_atomic(path, "new")
    assert path.read_text(encoding="utf-8") == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_is_a_hidden_temp_next_to_the_target(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with atomic_path(path) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".out.txt.")
        assert tmp.name.endswith(".tmp")
        assert tmp != path
        tmp.write_text("done", encoding="utf-8")
        assert not path.exists()  # nothing visible before the body finishes
    assert path.read_text(encoding="utf-8") == "done"
    assert not tmp.exists()


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old", encoding="utf-8")

    with pytest.raises(RuntimeError, match="half way"), atomic_path(path) as tmp:
        tmp.write_text("partial", encoding="utf-8")
        raise RuntimeError("half way")

    assert path.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_failure_without_previous_file_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(path):
        raise RuntimeError("no")
    assert os.listdir(tmp_path) == []


def test_concurrent_temp_files_do_not_collide(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second
        first.write_text("1", encoding="utf-8")
        second.write_text("2", encoding="utf-8")
    assert path.read_text(encoding="utf-8") == "1"  # the outer one finishes last
    assert os.listdir(tmp_path) == ["out.txt"]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_atomic_write_keeps_normal_file_permissions(tmp_path: Path, umask_022, existing: bool) -> None:
    path = tmp_path / "metrics.json"
    if existing:
        path.write_text("{}", encoding="utf-8")
        path.chmod(0o644)
    write_text_atomic(path, "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
