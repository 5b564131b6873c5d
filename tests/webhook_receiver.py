"""A real webhook on loopback for the alert tests: records each POST's JSON body.

    with WebhookReceiver() as hook:          # a free port; hook.url has a secret path
        ...                                  # POST to hook.url
        hook.wait_for(1)                     # the bodies received, in order

``statuses`` answers the first requests with those codes (then 200); ``hang_s`` makes every
request wait that long before answering (a webhook that hangs).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

SECRET_PATH = "/services/T0000/B0000/s3cr3t-token"


@dataclass(frozen=True)
class Received:
    body: dict[str, Any]
    at: float  # time.monotonic() when it arrived
    wall: float  # time.time() when it arrived
    status: int  # what the receiver answered


class WebhookReceiver:
    def __init__(self, statuses: list[int] | None = None, hang_s: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.hang_s = hang_s
        self.received: list[Received] = []  # every request, answered 2xx or not
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if receiver.hang_s:
                    time.sleep(receiver.hang_s)
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.received.append(Received(json.loads(raw), time.monotonic(), time.time(), status))
                try:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up (its timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{SECRET_PATH}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies answered 2xx, in arrival order."""
        with self._lock:
            return [r.body for r in self.received if 200 <= r.status < 300]

    def events(self) -> list[str]:
        return [body["event"] for body in self.delivered()]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At least ``count`` delivered bodies (AssertionError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count:
            assert time.monotonic() < deadline, f"{len(self.delivered())} of {count} webhook posts arrived"
            time.sleep(0.05)
        return self.delivered()


def refused_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}{SECRET_PATH}"
