"""Which of a project's background services run: their pid files in ``.services/``.

A record names the pid, the marker its command line must hold, the URL, the command and the
stop signal; one whose process is gone, or whose pid now belongs to another program, is
removed rather than trusted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import psutil

from retrain_pipeline.config import Settings

logger = logging.getLogger(__name__)


def run_dir(settings: Settings) -> Path:
    return settings.root / ".services"


def prefect_home(settings: Settings) -> Path:
    return settings.root / ".prefect"


def pid_file(settings: Settings, name: str, folder: Path | None = None) -> Path:
    return (folder or run_dir(settings)) / f"{name}.pid"


def log_file(settings: Settings, name: str, folder: Path | None = None) -> Path:
    return (folder or run_dir(settings)) / f"{name}.log"


def _alive(pid: int, marker: str) -> bool:
    """The process ``pid`` runs, is not a zombie, and its command line holds ``marker``."""
    try:
        process = psutil.Process(pid)
        return marker in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def recorded(settings: Settings, name: str, folder: Path | None = None) -> dict[str, object] | None:
    """The pid file's record if its process is alive; a stale pid file is removed.

    ``folder`` holds the pid and log files (default: the project's ``.services/``).
    """
    path = pid_file(settings, name, folder)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        pid, marker = int(record["pid"]), str(record["marker"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("Removing unreadable pid file %s", path)
        path.unlink(missing_ok=True)
        return None
    if not _alive(pid, marker):
        logger.info("Removing stale pid file %s (pid %d is not %s)", path, pid, name)
        path.unlink(missing_ok=True)
        return None
    return dict(record)


def running_urls(settings: Settings) -> dict[str, str]:
    urls = {}
    for name in ("prefect", "mlflow"):
        record = recorded(settings, name)
        if record is not None:
            urls[name] = str(record["url"])
    return urls
