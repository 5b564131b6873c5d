"""Run a Python script as ``__main__`` in this process, then record this process's peak RSS.

    python -m benchmarks.peak_rss OUT_FILE SCRIPT [ARGS...]

The benchmark runs the flow's command line through this so that the peak it reports is
the flow process's own (``RUSAGE_SELF``), without the helper processes it starts (Prefect's
ephemeral API server), which ``wait4`` on the parent side would fold in. The script's exit
code is kept.
"""

from __future__ import annotations

import resource
import runpy
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m benchmarks.peak_rss OUT_FILE SCRIPT [ARGS...]")
    out, script = Path(sys.argv[1]), sys.argv[2]
    sys.argv = sys.argv[2:]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.write_text(f"{peak_kib * 1024}\n", encoding="utf-8")


if __name__ == "__main__":
    main()
