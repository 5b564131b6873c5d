"""Unit tests for the DVC helpers that need no DVC repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from retrain_pipeline.fileio import md5_file
from retrain_pipeline.versioning import cached_file, recorded_md5


def _tracked(tmp_path: Path, content: bytes, recorded_size: int | None = None) -> Path:
    path = tmp_path / "batch_1.parquet"
    path.write_bytes(content)
    out = {"md5": md5_file(path), "size": len(content) if recorded_size is None else recorded_size}
    out["path"] = path.name
    path.with_name(path.name + ".dvc").write_text(yaml.safe_dump({"outs": [out]}))
    return path


def _rewrite_later(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    meta = path.with_name(path.name + ".dvc").stat()
    os.utime(path, ns=(meta.st_atime_ns, meta.st_mtime_ns + 1_000_000))


def test_recorded_md5_reads_the_dvc_file(tmp_path: Path) -> None:
    path = _tracked(tmp_path, b"abc")
    assert recorded_md5(path) == "900150983cd24fb0d6963f7d28e17f72"  # md5("abc")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda p: p.write_bytes(b"abcd"), "file grew after tracking"),
        (lambda p: _rewrite_later(p, b"xyz"), "same size, rewritten after tracking"),
        (lambda p: p.with_name(p.name + ".dvc").unlink(), "no .dvc file"),
        (lambda p: p.with_name(p.name + ".dvc").write_text("outs: [{}]"), ".dvc file without md5"),
        (lambda p: p.with_name(p.name + ".dvc").write_text(": not yaml ["), "broken .dvc file"),
        (lambda p: p.unlink(), "data file gone"),
    ],
)
def test_recorded_md5_is_none_when_the_record_cannot_be_trusted(tmp_path: Path, change, why: str) -> None:
    path = _tracked(tmp_path, b"abc")
    change(path)
    assert recorded_md5(path) is None, why


def test_cached_file_layout(tmp_path: Path) -> None:
    assert cached_file(tmp_path, "ab" + "c" * 30) == tmp_path / ".dvc/cache/files/md5/ab" / ("c" * 30)
