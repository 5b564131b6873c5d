"""prefect_runtime.exit_without_teardown: a process exits with the code, after what a normal exit does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from retrain_pipeline.prefect_runtime import exit_without_teardown

folder = Path(sys.argv[1])


def at_exit():
    # A normal exit joins the threads first: the thread's file is there by now.
    (folder / "atexit.txt").write_text(str((folder / "thread.txt").exists()))


def late_writer():
    time.sleep(0.3)
    (folder / "thread.txt").write_text("written")


atexit.register(at_exit)
threading.Thread(target=late_writer).start()
print("done", end="")
exit_without_teardown(3)
print("after the exit")
"""


def test_exit_runs_threads_atexit_handlers_and_flushes_stdout(tmp_path: Path) -> None:
    # Without PYTHONUNBUFFERED stdout is a buffered pipe: "done" shows only if it is flushed.
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )

    assert result.returncode == 3, result.stderr
    assert result.stdout == "done"
    assert (tmp_path / "thread.txt").read_text() == "written"
    assert (tmp_path / "atexit.txt").read_text() == "True"
