"""Run a Python script as ``__main__`` in this process, then record this process's peak RSS.

    python -m benchmarks.peak_rss OUT_FILE SCRIPT [ARGS...]

The benchmark runs the flow's command line through this so that the peak it reports is
the flow process's own, without the helper processes it starts (Prefect's ephemeral API
server), which ``wait4`` on the parent side would fold in. The script's exit code is kept.

The peak is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` survives ``exec`` on Linux,
so a process started by a big parent would report the parent's size as its own peak.
"""

from __future__ import annotations

import atexit
import resource
import runpy
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m benchmarks.peak_rss OUT_FILE SCRIPT [ARGS...]")
    out, script = Path(sys.argv[1]), sys.argv[2]
    sys.argv = sys.argv[2:]
    # At exit, not after run_path: the flow's command line ends with os._exit after running
    # the atexit handlers (prefect_runtime.exit_without_teardown); registered first, this one runs last.
    atexit.register(lambda: out.write_text(f"{peak_rss_bytes()}\n", encoding="utf-8"))
    runpy.run_path(script, run_name="__main__")


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM, else ru_maxrss (both KiB on Linux)."""
    peak = proc_status_bytes("VmHWM")
    return peak if peak is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def proc_status_bytes(field: str) -> int | None:
    """A memory field (``VmRSS``, ``VmHWM``) of ``/proc/self/status`` in bytes; None without it."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


if __name__ == "__main__":
    main()
