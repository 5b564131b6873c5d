"""Latency of the scoring server (``make serve``): sequential single-row JSON requests on one
keep-alive connection, as a client in a loop sends them.

    python -m benchmarks.serving_latency [--url http://127.0.0.1:5050] [--rows FILE.csv] [-n 1000]

:func:`measure` is what the benchmark calls; it needs a running server (``make serve``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd

WARMUP = 20  # requests before the measured ones (connection, first-call caches)


def single_row_bodies(rows: pd.DataFrame) -> list[bytes]:
    """One ``dataframe_split`` JSON body per row."""
    return [
        json.dumps(
            {"dataframe_split": json.loads(rows.iloc[[i]].to_json(orient="split", index=False))}
        ).encode()
        for i in range(len(rows))
    ]


def measure(url: str, rows: pd.DataFrame, n: int) -> dict[str, float | int | str | None]:
    """Send ``n`` single-row requests (cycling over ``rows``) one after another; latency figures
    in milliseconds. Any answer other than 200 counts as a failure (and is not timed)."""
    if n < 1 or rows.empty:
        raise ValueError("need at least one request and one row")
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    bodies = single_row_bodies(rows)
    headers = {"Content-Type": "application/json"}
    timings: list[float] = []
    failures = 0
    version = None
    try:
        for i in range(WARMUP + n):
            started = time.perf_counter()
            connection.request("POST", "/invocations", body=bodies[i % len(bodies)], headers=headers)
            response = connection.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if i < WARMUP:
                continue
            if response.status != 200:
                failures += 1
                continue
            timings.append(elapsed)
            version = response.getheader("X-Model-Version")
    finally:
        connection.close()
    ordered = sorted(timings)

    def percentile(p: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2) if ordered else None

    return {
        "requests": n,
        "failures": failures,
        "model_version": version,
        "median_ms": round(statistics.median(ordered), 2) if ordered else None,
        "p90_ms": percentile(0.90),
        "p99_ms": percentile(0.99),
        "max_ms": round(ordered[-1], 2) if ordered else None,
        "requests_per_s": round(len(ordered) / (sum(ordered) / 1000), 1) if ordered else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_latency", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:5050")
    parser.add_argument("--rows", type=Path, default=Path("data/raw/breast_cancer.csv"))
    parser.add_argument("--target", default="target", help="column dropped from the rows if present")
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args(argv)
    rows = pd.read_csv(args.rows).head(200)
    rows = rows.drop(columns=[args.target]) if args.target in rows.columns else rows
    sys.stdout.write(json.dumps(measure(args.url, rows, args.n)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
