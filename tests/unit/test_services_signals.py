"""A service started from a shell that ignores SIGINT (a background job) still stops on SIGINT."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from retrain_pipeline import service_specs, services
from retrain_pipeline.params import settings_from_mapping

MARKER = "retrain-test-sigint-service"


def test_a_service_started_with_sigint_ignored_stops_on_sigint(tmp_path: Path) -> None:
    settings = settings_from_mapping({}, tmp_path)
    spec = service_specs.ServiceSpec(
        "worker",
        [sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)", MARKER],
        {},
        "-",
        lambda _log: True,
        signal.SIGINT,
        MARKER,
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `make start-cluster &` has it
    try:
        started = services.start(spec, settings, timeout=30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "started" in started
    stopped = services.stop(settings, "worker", timeout=15)
    assert stopped.endswith("SIGINT)"), stopped  # not "SIGKILL after SIGINT timed out"
