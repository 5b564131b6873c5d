"""How long the scoring server (``make serve``) takes to answer with a moved champion, and
whether a client in a loop sees a failure meanwhile.

    python -m benchmarks.serving_switch --params PATH --url http://127.0.0.1:5050 --versions 1 2 [--rounds 5]

Moves the ``champion`` alias (as a promotion or ``make rollback`` does: ``tracking.set_champion``)
to each version in turn and times the first answer whose ``X-Model-Version`` is that version,
while single-row requests go back to back. It needs a running server over the same store and a
project with the given versions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from urllib.parse import urlsplit

from benchmarks.serving_latency import single_row_bodies
from retrain_pipeline import tracking
from retrain_pipeline.config import MlflowConfig
from retrain_pipeline.params import load_settings
from retrain_pipeline.sources import breast_cancer_dataset

TIMEOUT_S = 30.0


def switch(url: str, config: MlflowConfig, version: str, body: bytes) -> tuple[float, int, int]:
    """Move the alias to ``version``; seconds until it answers, requests sent, failures seen."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=10)
    tracking.set_champion(config, version)
    moved, sent, failures = time.monotonic(), 0, 0
    while time.monotonic() - moved < TIMEOUT_S:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        payload = answer.read()
        sent += 1
        if answer.status != 200 or len(json.loads(payload)["predictions"]) != 1:
            failures += 1
        elif answer.getheader("X-Model-Version") == version:
            connection.close()
            return time.monotonic() - moved, sent, failures
    connection.close()
    raise TimeoutError(f"version {version} did not answer within {TIMEOUT_S:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving_switch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--params", required=True)
    parser.add_argument("--url", default="http://127.0.0.1:5050")
    parser.add_argument("--versions", nargs=2, required=True, metavar="V")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    config = load_settings(args.params, light=True).mlflow
    body = single_row_bodies(
        breast_cancer_dataset(seed=7, target_column="target").drop(columns="target").head(1)
    )[0]
    times, sent, failures = [], 0, 0
    for round_ in range(args.rounds):
        for version in args.versions:
            seconds, count, failed = switch(args.url, config, version, body)
            if round_ or version != args.versions[0]:  # the first move may find it there already
                times.append(seconds)
            sent, failures = sent + count, failures + failed
    sys.stdout.write(
        json.dumps(
            {
                "switches": len(times),
                "median_s": round(statistics.median(times), 2),
                "max_s": round(max(times), 2),
                "requests": sent,
                "failures": failures,
            }
        )
        + "\n"
    )
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
