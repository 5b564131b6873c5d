"""DVC I/O: initialise the project's DVC repository and track files. The only DVC importer."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from retrain_pipeline.errors import VersioningError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep DVC's CLI hints ("To track the changes with git, run ...") out of the run log.

    DVC's Python API prints them to stdout and logs them at INFO; warnings still pass.
    """
    buffer = io.StringIO()
    dvc_logger = logging.getLogger("dvc")
    level = dvc_logger.level
    dvc_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        dvc_logger.setLevel(level)
    if buffer.getvalue().strip():
        logger.debug("dvc: %s", buffer.getvalue().strip())


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
    from dvc.repo import Repo

    targets = [str(path) for path in paths]
    try:
        with _quiet(), Repo(str(root)) as repo:
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
    """Where DVC 3 keeps the content with this md5 in the local cache."""
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
