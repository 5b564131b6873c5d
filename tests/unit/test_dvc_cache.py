"""DVC's lock table after a killed run, and where DVC's cache keeps a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrain_pipeline import versioning


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    versioning.ensure_repo(root)
    return root


@pytest.mark.parametrize("left", ["", '{"read": {}, "wri'])
def test_a_half_written_rwlock_is_removed_and_dvc_works_again(repo: Path, left: str) -> None:
    rwlock = repo / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text(left, encoding="utf-8")
    data = repo / "data.csv"
    data.write_text("a,b\n1,2\n", encoding="utf-8")

    hashes = versioning.track(repo, [data])

    assert hashes[data] == versioning.recorded_md5(data)
    if rwlock.exists():  # DVC wrote a fresh one while adding
        json.loads(rwlock.read_text(encoding="utf-8"))


def test_a_valid_rwlock_is_left_alone(repo: Path) -> None:
    rwlock = repo / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps({"read": {}, "write": {}})
    rwlock.write_text(content, encoding="utf-8")

    assert versioning.repair_rwlock(repo) is False
    assert rwlock.read_text(encoding="utf-8") == content
    rwlock.write_text("", encoding="utf-8")
    assert versioning.repair_rwlock(repo) is True
    assert not rwlock.exists()


def test_cached_file_honours_a_configured_cache_dir(tmp_path: Path) -> None:
    from dvc.repo import Repo

    root = tmp_path / "project"
    root.mkdir()
    versioning.ensure_repo(root)
    shared = tmp_path / "shared-cache"
    with Repo(str(root)) as repo, repo.config.edit() as config:
        config["cache"]["dir"] = str(shared)
    data = root / "data.csv"
    data.write_text("a,b\n1,2\n", encoding="utf-8")

    md5 = versioning.track(root, [data])[data]

    cached = versioning.cached_file(root, md5)
    assert cached.is_relative_to(shared) and cached.is_file()
    assert not (root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).exists()
