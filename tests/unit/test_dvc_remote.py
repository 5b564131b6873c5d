"""The shared DVC remote (``stores.dvc_remote``): real DVC repositories in tmp_path and a
path remote, no mocks."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from dvc.repo import Repo

from retrain_pipeline import data, manifests, validation, versioning
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import StateError, VersioningError
from retrain_pipeline.fileio import md5_file, write_text_atomic
from retrain_pipeline.manifests import restore_processed_batches
from retrain_pipeline.params import load_settings
from retrain_pipeline.project import prepare_project
from retrain_pipeline.state import BatchRecord, PipelineState

MakeProject = Callable[..., Path]


def _settings(make_project: MakeProject, name: str, remote: Path | str | None) -> Settings:
    stores = {"dvc_remote": str(remote)} if remote is not None else {}
    return load_settings(make_project(name, stores=stores))


def _local_config(root: Path) -> dict:
    with Repo(str(root)) as repo:
        return repo.config.read("local")


def _remote_objects(remote: Path) -> set[str]:
    return {p.parent.name + p.name for p in (remote / "files" / "md5").glob("*/*")}


def test_prepare_project_sets_the_shared_remote_in_the_local_config(
    make_project: MakeProject, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    settings = _settings(make_project, "a", remote)
    prepare_project(settings)
    root = settings.root

    local = _local_config(root)
    assert local["core"]["remote"] == versioning.SHARED_REMOTE == "shared"
    assert local["remote"]["shared"]["url"] == str(remote)
    assert "shared" not in (root / ".dvc" / "config").read_text()  # nothing committed changes

    # Idempotent; a new URL is written over the old one, keeping the section's other options.
    before = (root / ".dvc" / "config.local").stat().st_mtime_ns
    prepare_project(settings)
    assert versioning.use_remote(root, str(remote)) is False
    assert (root / ".dvc" / "config.local").stat().st_mtime_ns == before
    with Repo(str(root)) as repo, repo.config.edit("local") as conf:
        conf["remote"]["shared"]["verify"] = True
    moved = tmp_path / "elsewhere"
    prepare_project(
        settings.model_copy(update={"stores": settings.stores.model_copy(update={"dvc_remote": str(moved)})})
    )
    local = _local_config(root)
    assert local["remote"]["shared"]["url"] == str(moved)
    assert str(local["remote"]["shared"]["verify"]).lower() == "true"  # read back unvalidated
    assert local["core"]["remote"] == "shared"


def test_in_a_git_work_tree_the_remote_is_not_a_change_to_commit(
    make_project: MakeProject, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    settings = _settings(make_project, "a", remote)
    subprocess.run(["git", "init", "-q", str(settings.root)], check=True)
    prepare_project(settings)
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", ".dvc"],
        cwd=settings.root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert ".dvc/config" in status and "config.local" not in status
    assert _local_config(settings.root)["remote"]["shared"]["url"] == str(remote)


def test_without_a_remote_the_dvc_config_is_left_alone(make_project: MakeProject) -> None:
    settings = _settings(make_project, "a", None)
    prepare_project(settings)
    assert not (settings.root / ".dvc" / "config.local").exists()
    assert _local_config(settings.root)["remote"] == {}


def _tracked_repo(root: Path, remote: Path, contents: dict[str, bytes]) -> dict[str, str]:
    """A DVC repository in ``root`` with the remote and these files tracked; name -> md5."""
    root.mkdir(parents=True, exist_ok=True)
    versioning.ensure_repo(root)
    versioning.use_remote(root, str(remote))
    for name, content in contents.items():
        (root / name).write_bytes(content)
    tracked = versioning.track(root, [root / name for name in contents])
    return {path.name: md5 for path, md5 in tracked.items()}


def test_push_then_fetch_by_md5_in_a_folder_that_has_no_repository(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    a = tmp_path / "a"
    md5s = _tracked_repo(a, remote, {"x.bin": b"x" * 10_000, "y.txt": b"hello"})

    assert versioning.push(a, [a / "x.bin", a / "y.txt"]) == 2
    assert _remote_objects(remote) == set(md5s.values())
    assert versioning.push(a, [a / "x.bin", a / "y.txt"]) == 0  # the remote has them

    b = tmp_path / "b"
    b.mkdir()
    absent = "0" * 32
    assert versioning.fetch(b, str(remote), [*md5s.values(), absent]) == {absent}
    assert versioning.cached_file(b, md5s["x.bin"]).read_bytes() == b"x" * 10_000
    assert versioning.cached_file(b, md5s["y.txt"]).read_bytes() == b"hello"
    assert _local_config(b)["core"]["remote"] == "shared"  # the repository was created for it
    # Objects already in the cache are not fetched again.
    assert versioning.fetch(b, str(tmp_path / "no-such-remote"), md5s.values()) == set()


def test_push_fails_with_an_error_naming_the_remote(tmp_path: Path) -> None:
    a = tmp_path / "a"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad_remote = blocker / "remote"
    _tracked_repo(a, bad_remote, {"x.bin": b"x"})
    with pytest.raises(VersioningError, match=f"dvc push of 1 file.*'shared' \\({bad_remote}\\)"):
        versioning.push(a, [a / "x.bin"])

    plain = tmp_path / "plain"
    plain.mkdir()
    versioning.ensure_repo(plain)
    (plain / "y.txt").write_text("y")
    versioning.track(plain, [plain / "y.txt"])
    with pytest.raises(VersioningError, match="no default DVC remote is configured"):
        versioning.push(plain, [plain / "y.txt"])


def test_fetch_refuses_what_is_not_an_md5(tmp_path: Path) -> None:
    with pytest.raises(VersioningError, match="not md5 hashes"):
        versioning.fetch(tmp_path, str(tmp_path / "remote"), ["../../etc/passwd"])
    assert not (tmp_path / ".dvc").exists()


def test_remote_has(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    a = tmp_path / "a"
    md5 = _tracked_repo(a, remote, {"x.bin": b"x"})["x.bin"]
    assert versioning.remote_has(a, str(remote), md5) is False
    versioning.push(a, [a / "x.bin"])
    assert versioning.remote_has(a, str(remote), md5) is True
    assert versioning.remote_has(a, str(tmp_path / "other"), md5) is None  # not this repo's remote
    assert versioning.remote_has(tmp_path / "none", str(remote), md5) is None  # no repository


# --------------------------------------------------------------------------- restoring batches


def _frame(batch: int) -> pd.DataFrame:
    frame = pd.DataFrame({"f": [float(batch), batch + 0.5, batch + 1.0], "target": [0, 1, batch % 2]})
    return frame.assign(**{data.SPLIT_COLUMN: [data.TRAIN, data.TRAIN, data.HOLDOUT]})


def _train_batches(settings: Settings, batches: list[int]) -> PipelineState:
    """What the flow leaves behind: processed files, a manifest per batch, all pushed; the state."""
    prepare_project(settings)
    state = PipelineState()
    files: list[manifests.BatchFile] = []
    for k in batches:
        path = settings.processed_batch_file(k)
        data.write_processed_batch(_frame(k), path, {"f": validation.FLOAT})
        relative = path.relative_to(settings.data.processed_dir).as_posix()
        files.append(manifests.BatchFile(k, relative, md5_file(path), 3))
        manifest = settings.training_manifest_file
        write_text_atomic(manifest, manifests.training_manifest(k, files, None))
        tracked = versioning.track(settings.root, [path, manifest])
        versioning.push(settings.root, [path, manifest])
        record = BatchRecord(status="completed", started_at="t", data_md5=tracked[manifest])
        state = state.with_batch(k, record, None)
    return state


def test_missing_processed_batches_come_from_the_remote_in_two_fetches(
    make_project: MakeProject, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = tmp_path / "remote"
    a = _settings(make_project, "a", remote)
    state = _train_batches(a, [1, 2, 3])

    b = _settings(make_project, "b", remote)  # a fresh clone: no .dvc, no processed files
    with caplog.at_level(logging.INFO, logger="retrain_pipeline.versioning"):
        assert restore_processed_batches(b, state, [1, 2, 3]) == [1, 2, 3]
    fetches = [r for r in caplog.records if r.getMessage().startswith("Fetched")]
    assert len(fetches) == 2  # the manifests, then the batch files
    for k in (1, 2, 3):
        assert b.processed_batch_file(k).read_bytes() == a.processed_batch_file(k).read_bytes()
    assert restore_processed_batches(b, state, [1, 2, 3]) == []  # nothing missing any more

    # Only the missing ones are fetched.
    b.processed_batch_file(2).unlink()
    assert restore_processed_batches(b, state, [1, 2, 3]) == [2]
    assert md5_file(b.processed_batch_file(2)) == md5_file(a.processed_batch_file(2))


def test_without_a_remote_missing_batches_stay_missing(make_project: MakeProject, tmp_path: Path) -> None:
    a = _settings(make_project, "a", tmp_path / "remote")
    state = _train_batches(a, [1])
    b = _settings(make_project, "b", None)
    assert restore_processed_batches(b, state, [1]) == []
    assert not b.processed_batch_file(1).exists()


def test_an_object_the_remote_lacks_is_named_with_the_remote(
    make_project: MakeProject, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    a = _settings(make_project, "a", remote)
    state = _train_batches(a, [1, 2])
    batch_md5 = md5_file(a.processed_batch_file(2))
    lost = remote / "files" / "md5" / batch_md5[:2] / batch_md5[2:]
    lost.unlink()

    b = _settings(make_project, "b", remote)
    with pytest.raises(StateError) as info:
        restore_processed_batches(b, state, [1, 2])
    message = str(info.value)
    assert f"DVC remote {remote} has no object {batch_md5} (its processed file)" in message
    assert "accepted batch 2 is missing" in message
    assert not b.processed_batch_file(2).exists()

    # A state record without a manifest cannot be fetched.
    bare = state.with_batch(2, BatchRecord(status="completed", started_at="t"), None)
    with pytest.raises(StateError, match="names no training-data manifest"):
        restore_processed_batches(b, bare, [2])


def test_a_corrupt_object_from_the_remote_is_refused(make_project: MakeProject, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    a = _settings(make_project, "a", remote)
    state = _train_batches(a, [1])
    batch_md5 = md5_file(a.processed_batch_file(1))
    stored = remote / "files" / "md5" / batch_md5[:2] / batch_md5[2:]
    stored.chmod(0o644)
    stored.write_bytes(stored.read_bytes()[:-1] + b"x")
    stored.chmod(0o444)  # as DVC left it: a path remote re-hashes writable objects, not these

    b = _settings(make_project, "b", remote)
    with pytest.raises(StateError, match=f"is corrupt: md5 [0-9a-f]{{32}} != {batch_md5}"):
        restore_processed_batches(b, state, [1])
    assert not b.processed_batch_file(1).exists()
    assert list(b.processed_batches_dir.glob(".*.tmp")) == []  # no temp file left behind
