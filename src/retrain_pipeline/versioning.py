"""DVC I/O, the only DVC importer: the project's DVC repository, its tracked files, its cache,
the shared DVC remote (pushed to in the run that made an object, fetched from by md5)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrain_pipeline.errors import StateError, VersioningError
from retrain_pipeline.fileio import md5_file
from retrain_pipeline.urls import redact_url

logger = logging.getLogger(__name__)

#: Name of the remote ``stores.dvc_remote`` configures (in ``.dvc/config.local``).
SHARED_REMOTE = "shared"


@contextlib.contextmanager
def _quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Keep DVC's CLI hints ("To track the changes with git, run ...") out of the run log.

    DVC's Python API prints them to stdout and logs them at INFO; records at ``level`` and
    above (warnings, by default) still pass.
    """
    buffer = io.StringIO()
    dvc_logger = logging.getLogger("dvc")
    previous = dvc_logger.level
    dvc_logger.setLevel(level)
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        dvc_logger.setLevel(previous)
    if buffer.getvalue().strip():
        logger.debug("dvc: %s", buffer.getvalue().strip())


@contextlib.contextmanager
def _open(root: Path, level: int = logging.WARNING) -> Iterator[Any]:
    """DVC's ``Repo`` at ``root``, quiet (:func:`_quiet`), after :func:`repair_rwlock`."""
    from dvc.repo import Repo

    repair_rwlock(root)
    with _quiet(level), Repo(str(root)) as repo:
        yield repo


def repair_rwlock(root: Path) -> bool:
    """Remove DVC's lock table ``.dvc/tmp/rwlock`` when it is not valid JSON; True if removed.

    DVC rewrites that file in place (truncate, then write), so a run killed at that moment
    leaves it empty or cut short, and every later DVC command fails with "Unable to read
    RWLock-file ... JSON structure is corrupted". A corrupt table holds no lock anyone can use
    (DVC itself drops the entries of dead processes), so it goes, under DVC's own guard
    ``rwlock.lock``; when another DVC process holds the guard the file is left to it.
    """
    from dvc.lock import LockError, make_lock

    folder = root / ".dvc" / "tmp"
    path = folder / "rwlock"
    if not path.is_file():
        return False
    try:
        with make_lock(str(folder / "rwlock.lock"), tmp_dir=str(folder), hardlink_lock=False):
            try:
                json.loads(path.read_text(encoding="utf-8"))
                return False
            except (ValueError, UnicodeDecodeError):
                path.unlink(missing_ok=True)
    except LockError:
        return False
    logger.warning("Removed DVC's lock table %s: a killed run had left it half-written", path)
    return True


def _git_toplevel(folder: Path) -> Path | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(result.stdout.strip()).resolve() if result.returncode == 0 else None


#: What DVC 3.67 imports on a repository's first ``add`` beyond ``dvc.repo`` (``-X importtime``):
#: about 2 s on 2 cores, networkx alone 0.9 s. Only a hint: a name a later DVC drops is skipped.
_DVC_LAZY_IMPORTS = (
    "dvc.repo",
    "networkx",
    "dvc.scm",
    "ruamel.yaml",
    "dvc.lock",
    "rich.console",
    "dvc.repo.plots",
    "dvc.repo.index",
    "dvc.dirs",
    "configobj",
)


def import_dvc() -> None:
    """Import what DVC needs for its first ``add`` ahead of time; see the flow's warm start."""
    import importlib

    for name in _DVC_LAZY_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def ensure_repo(root: Path) -> bool:
    """Initialise a DVC repository in ``root`` unless one exists; True when it was created.

    Inside a Git work tree DVC uses Git (``--subdir`` when ``root`` is below the top
    level); elsewhere it runs without SCM.
    """
    if (root / ".dvc").is_dir():
        return False
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    git_top = _git_toplevel(root)
    try:
        with _quiet():
            repo = Repo.init(
                str(root), no_scm=git_top is None, subdir=git_top is not None and git_top != root.resolve()
            )
            with repo.config.edit() as config:
                config["core"]["analytics"] = False
            repo.close()
    except DvcException as exc:
        raise VersioningError(f"cannot initialise DVC in {root}: {exc}") from exc
    logger.info("Initialised DVC repository in %s (%s)", root, "git" if git_top else "no SCM")
    return True


def track(root: Path, paths: Sequence[Path]) -> dict[Path, str]:
    """``dvc add`` the files and return each file's md5 as recorded in its ``.dvc`` file."""
    from dvc.exceptions import DvcException

    targets = [str(path) for path in paths]
    try:
        with _open(root) as repo:
            stages = repo.add(targets)
    except DvcException as exc:
        raise VersioningError(f"dvc add {' '.join(targets)} failed in {root}: {exc}") from exc
    hashes: dict[Path, str] = {}
    for path, stage in zip(paths, stages, strict=True):
        hashes[path] = str(stage.outs[0].hash_info.value)
    return hashes


def recorded_md5(path: Path) -> str | None:
    """The md5 that ``<path>.dvc`` records for ``path``, if it still describes the file.

    None when there is no ``.dvc`` file, it cannot be read, or the file changed after it
    was tracked (its size differs from the recorded one, or it is newer than its ``.dvc``
    file, which DVC writes last): then it must be hashed again.
    """
    import yaml

    meta_file = path.with_name(path.name + ".dvc")
    try:
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
        out = meta["outs"][0]
        md5, size = str(out["md5"]), int(out["size"])
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return None
    try:
        stat = path.stat()
        if stat.st_size != size or stat.st_mtime_ns > meta_file.stat().st_mtime_ns:
            return None
    except OSError:
        return None
    return md5


def cached_file(root: Path, md5: str) -> Path:
    """Where DVC keeps the content with this md5 in the project's local cache: DVC's own
    answer, so a configured ``cache.dir`` (a shared cache) is honoured. Without a DVC
    repository in ``root`` (yet), DVC's default cache in ``root/.dvc/cache``."""
    root = root.resolve()
    cache = _local_caches.get(root)
    if cache is None:
        from dvc.exceptions import NotDvcRepoError

        try:
            with _open(root) as repo:
                cache = _local_caches[root] = repo.cache.local
        except NotDvcRepoError:
            return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return Path(cache.oid_to_path(md5))


#: The local DVC cache of each project folder this process looked in (opened once).
_local_caches: dict[Path, Any] = {}


@dataclass(frozen=True)
class CachedObjects:
    """Objects of the local DVC cache, found by md5 (:func:`cached_objects`)."""

    files: dict[str, Path]  # md5 -> its cached file, whose content has that md5
    absent: dict[str, Path]  # md5 -> where the cache would keep it: neither it nor the remote has it


def cached_objects(root: Path, remote: str | None, wanted: Mapping[str, str]) -> CachedObjects:
    """The local cache's files of the objects ``wanted`` (md5 -> what it is, for messages).

    Those the cache lacks are fetched from the DVC remote ``remote`` first, all in one
    transfer (:func:`fetch`; without a remote they are absent). Every object found is checked
    against its md5: StateError naming what it is when its content is not what it should be.
    """
    absent = fetch(root, remote, wanted) if remote is not None else set()
    found = CachedObjects({}, {})
    for md5, what in wanted.items():
        path = cached_file(root, md5)
        if md5 in absent or not path.is_file():
            found.absent[md5] = path
            continue
        digest = md5_file(path)
        if digest != md5:
            raise StateError(
                f"DVC cache object {path} for {what} is corrupt: md5 {digest} != {md5}; "
                "delete it and run again"
            )
        found.files[md5] = path
    return found


# --------------------------------------------------------------------------- the shared remote

_MD5 = re.compile(r"[0-9a-f]{32}")
#: What a remote operation can raise besides DvcException: I/O errors of the remote's file
#: system, and ImportError when its scheme needs a plugin that is not installed (dvc-s3, ...).
_REMOTE_ERRORS: tuple[type[BaseException], ...] = (OSError, ImportError)


def use_remote(root: Path, url: str) -> bool:
    """Make ``url`` the default DVC remote of the repository in ``root``, named ``shared``.

    Written to the repository's local config (``.dvc/config.local``, which DVC keeps out of
    Git), so nothing committed changes; rewritten only when the URL (or the default) differs.
    Other options of the ``shared`` section (credentials an operator added with
    ``dvc remote modify --local shared ...``) are kept. True when the config changed.
    """
    from dvc.exceptions import DvcException

    try:
        with _open(root) as repo:
            local = repo.config.read("local")
            section = local.get("remote", {}).get(SHARED_REMOTE, {})
            if str(section.get("url", "")) == url and local.get("core", {}).get("remote") == SHARED_REMOTE:
                return False
            with repo.config.edit("local") as conf:
                conf["remote"].setdefault(SHARED_REMOTE, {})["url"] = url
                conf["core"]["remote"] = SHARED_REMOTE
    except (DvcException, OSError) as exc:
        raise VersioningError(f"cannot set DVC remote {redact_url(url)} in {root}: {exc}") from exc
    logger.info(
        "DVC remote %r is %s (the default remote, in %s)",
        SHARED_REMOTE,
        redact_url(url),
        root / ".dvc" / "config.local",
    )
    return True


def _default_remote(repo: Any, root: Path) -> str:
    """``DVC remote 'name' (url)`` for messages; VersioningError when there is none."""
    name = repo.config["core"].get("remote")
    if not name:
        raise VersioningError(f"no default DVC remote is configured in {root} (stores.dvc_remote)")
    url = repo.config["remote"].get(name, {}).get("url", "?")
    return f"DVC remote {name!r} ({redact_url(str(url))})"


def push(root: Path, paths: Sequence[Path]) -> int:
    """Push the tracked files (each has a ``.dvc`` file) to the default DVC remote.

    Objects the remote already holds are skipped. Returns how many objects were uploaded;
    raises VersioningError naming the remote when there is none or the push fails.
    """
    if not paths:
        return 0
    from dvc.exceptions import DvcException

    started = time.perf_counter()
    remote = "the default DVC remote"
    try:
        with _open(root) as repo:
            remote = _default_remote(repo, root)
            pushed = int(repo.push(targets=[str(path) for path in paths]))
    except (DvcException, *_REMOTE_ERRORS) as exc:
        raise VersioningError(f"dvc push of {len(paths)} file(s) to {remote} failed ({root}): {exc}") from exc
    logger.info(
        "Pushed %d new object(s) for %d file(s) to %s in %.2f s",
        pushed,
        len(paths),
        remote,
        time.perf_counter() - started,
    )
    return pushed


def fetch(root: Path, remote: str, md5s: Iterable[str]) -> set[str]:
    """Bring the objects with these md5s from the DVC remote ``remote`` into the local cache.

    Objects already in the local cache (:func:`cached_file`) are not fetched; the others come
    in one DVC transfer. ``remote`` is made the default remote first (:func:`use_remote`), and
    the repository is created when ``root`` has none, so this works in a folder where the
    project was never set up. DVC does not re-hash what it fetches: callers check the md5s.
    Returns the md5s still missing from the cache afterwards (the remote lacks them); raises
    VersioningError naming the remote when it cannot be read.
    """
    wanted = sorted(set(md5s))
    bad = [md5 for md5 in wanted if not _MD5.fullmatch(md5)]
    if bad:
        raise VersioningError(f"not md5 hashes, cannot fetch them from a DVC remote: {bad}")
    wanted = [md5 for md5 in wanted if not cached_file(root, md5).is_file()]
    if not wanted:
        return set()
    from dvc.exceptions import DvcException
    from dvc_data.hashfile.hash_info import HashInfo

    ensure_repo(root)
    use_remote(root, remote)
    label = f"DVC remote {SHARED_REMOTE!r} ({redact_url(remote)})"
    started = time.perf_counter()
    try:
        # ERROR: DVC warns about every object the remote lacks; the caller's error names them.
        with _open(root, logging.ERROR) as repo:
            result = repo.cloud.pull([HashInfo("md5", md5) for md5 in wanted], remote=SHARED_REMOTE)
    except (DvcException, *_REMOTE_ERRORS) as exc:
        raise VersioningError(f"cannot fetch {len(wanted)} object(s) from {label}: {exc}") from exc
    if result.failed:
        failed = sorted(str(info.value) for info in result.failed)
        raise VersioningError(f"fetching object(s) {failed} from {label} failed (see the log above)")
    missing = {md5 for md5 in wanted if not cached_file(root, md5).is_file()}
    logger.info(
        "Fetched %d object(s) from %s into %s in %.2f s%s",
        len(wanted) - len(missing),
        label,
        root / ".dvc" / "cache",
        time.perf_counter() - started,
        f"; it lacks {sorted(missing)}" if missing else "",
    )
    return missing


def remote_has(root: Path, remote: str, md5: str) -> bool | None:
    """Whether the DVC remote ``remote`` holds the object ``md5`` (one existence check).

    None when it cannot be told without changing anything: no repository in ``root``, its
    ``shared`` remote is not (yet) ``remote``, or the remote cannot be reached.
    """
    if not _MD5.fullmatch(md5) or not (root / ".dvc").is_dir():
        return None
    from dvc.exceptions import DvcException

    try:
        with _open(root, logging.ERROR) as repo:
            if str(repo.config["remote"].get(SHARED_REMOTE, {}).get("url", "")) != remote:
                return None
            odb = repo.cloud.get_remote_odb(SHARED_REMOTE, "status")
            return bool(odb.exists(md5))
    except (DvcException, *_REMOTE_ERRORS) as exc:
        logger.debug("cannot tell whether %s holds %s: %s", redact_url(remote), md5, exc)
        return None
