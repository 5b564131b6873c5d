"""The run lock of the file state store: an OS file lock (``flock``) held for a whole run,
with a sidecar JSON file that names its holder for a refused run's message.

The kernel releases a ``flock`` when its process dies, so a run killed with SIGKILL never
leaves a stale lock behind. (With ``stores.state_database_url`` the lock is PostgreSQL's:
:mod:`retrain_pipeline.state_stores`.)
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from retrain_pipeline.errors import PipelineBusyError
from retrain_pipeline.fileio import write_text_atomic
from retrain_pipeline.state import utc_now


@contextmanager
def pipeline_lock(lock_file: Path, holder: dict[str, object]) -> Iterator[Path]:
    """Hold the cross-process pipeline lock for the whole run, or raise PipelineBusyError.

    The lock is an OS file lock (``flock``): the kernel releases it when its process dies,
    so a run killed with SIGKILL never leaves a stale lock behind. A sidecar JSON file
    names the holder so that a refused run can say who is busy with what; it yields that
    path so the holder can add the batch it picks.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lock_file, timeout=0, thread_local=False)
    info_file = lock_file.with_name(lock_file.name + ".holder.json")
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise PipelineBusyError(f"another run is in progress: {describe_holder(info_file)}") from exc
    try:
        # Written fresh: a killed run's leftover sidecar must not leak into this one.
        holder_info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), **holder}
        write_text_atomic(info_file, json.dumps(holder_info))
        yield info_file
    finally:
        info_file.unlink(missing_ok=True)
        lock.release()


def update_holder(info_file: Path, info: dict[str, object]) -> None:
    """Merge ``info`` into the lock holder's sidecar file."""
    current = _read_holder(info_file) or {}
    write_text_atomic(info_file, json.dumps({**current, **info}))


def describe_holder(info_file: Path) -> str:
    info = _read_holder(info_file)
    if not info:
        return "holder unknown (it is starting or finishing)"
    parts = [f"pid {info.get('pid')}"]
    if info.get("flow_run_id"):
        parts.append(f"flow run {info['flow_run_id']}")
    if info.get("batch") is not None:
        parts.append(f"batch {info['batch']}")
    parts.append(f"since {info.get('since')}")
    return ", ".join(parts)


def _read_holder(info_file: Path) -> dict[str, object] | None:
    try:
        data = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
