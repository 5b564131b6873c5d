"""The scoring server of ``make serve``: the champion behind MLflow's scoring protocol,
following the ``champion`` alias.

    python -m retrain_pipeline.serving [--params PATH] [--host 127.0.0.1] [--port 5050]

Every request goes to MLflow's own scoring app (``mlflow.pyfunc.scoring_server``, what
``mlflow models serve`` runs) of the version currently loaded. MLflow's server loads one model
at start and never reloads, so :class:`AliasFollower` checks the alias every
``serving.poll_seconds``, loads a moved champion beside the current one, scores its input
example, and only then swaps it in; requests in flight finish on the old model.
:class:`ScoringApp` adds what the protocol lacks: ``X-Model-Version`` on every answer,
``GET /model``, a body size limit, and one-line JSON errors instead of MLflow's stack traces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from retrain_pipeline import scoring, tracking
from retrain_pipeline.arguments import DEFAULT_HOST, DEFAULT_SERVE_PORT, host_argument, port_argument
from retrain_pipeline.config import Settings
from retrain_pipeline.errors import PipelineError
from retrain_pipeline.params import PROJECT_PARAMS, load_settings, params_for_command
from retrain_pipeline.urls import redact_url

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

VERSION_HEADER = b"x-model-version"
QUIET_REPEATS_S = 60.0  # the same alias-check problem is logged again after this long
RETRY_BROKEN_S = (5.0, 60.0)  # a version that failed to load or answer: first retry, longest wait


class Champion:
    """The model that answers now (None before the first champion exists), and what went wrong
    last while following the alias."""

    def __init__(self) -> None:
        self.model: scoring.LoadedModel | None = None
        self.last_error: str | None = None

    def swap(self, model: scoring.LoadedModel) -> None:
        self.model = model  # one reference assignment: a request sees the old or the new model
        self.last_error = None


class AliasFollower:
    """Loads the champion, then every ``poll_seconds`` checks the alias and swaps a moved one in."""

    def __init__(self, settings: Settings, champion: Champion) -> None:
        self.config = settings.mlflow
        self.poll_seconds = settings.serving.poll_seconds
        self.champion = champion
        self._stop = threading.Event()
        self._logged: tuple[str, float] | None = None  # what kind of problem was logged last, when
        # A version that failed to load or to answer: (version, failures, next attempt at); it is
        # tried again after 5 s, 10 s, ... up to 60 s, not loaded every poll.
        self._broken: tuple[str, int, float] | None = None

    def check(self) -> bool:
        """One look at the alias; True when a new version was swapped in."""
        current = self.champion.model
        try:
            version = tracking.champion_version(self.config)
        except PipelineError as exc:
            self._problem("alias", f"cannot read the alias: {exc}")
            return False
        except Exception as exc:  # the follower must outlive any one failed check (logged, retried)
            logger.exception("Reading the champion alias failed unexpectedly")
            self._problem(
                "alias", f"cannot read the alias: {type(exc).__name__}: {scoring.one_line(str(exc))}"
            )
            return False
        if self._logged is not None and self._logged[0] == "alias":
            logger.info("The tracking store answers again (%s)", redact_url(self.config.tracking_uri))
            self._logged = None
        if version is None or (current is not None and current.version == version):
            if self._broken is None:
                self.champion.last_error = None  # in step with the alias: nothing is wrong now
            self._broken = None
            return False
        if self._broken and self._broken[0] == version and time.monotonic() < self._broken[2]:
            return False
        started = time.monotonic()
        try:
            model = scoring.load(self.config, version)
            scoring.self_check(model)
        except PipelineError as exc:
            self._failed(version, str(exc))
            return False
        except Exception as exc:  # a broken model must not stop the follower (logged, retried)
            logger.exception("Loading version %s failed unexpectedly", version)
            self._failed(version, f"version {version}: {type(exc).__name__}: {scoring.one_line(str(exc))}")
            return False
        self._broken = None
        before = current.version if current else None
        self.champion.swap(model)
        self._logged = None
        logger.info(
            "Serving version %s of %s (was %s), loaded and checked in %.1f s",
            model.version,
            model.name,
            before or "none",
            time.monotonic() - started,
        )
        return True

    def _failed(self, version: str, message: str) -> None:
        failures = self._broken[1] + 1 if self._broken and self._broken[0] == version else 1
        wait = min(RETRY_BROKEN_S[0] * 2 ** (failures - 1), RETRY_BROKEN_S[1])
        self._broken = (version, failures, time.monotonic() + wait)
        self._problem(f"version {version}", f"{message} (tried {failures} time(s); next try in {wait:g} s)")

    def _problem(self, kind: str, message: str) -> None:
        """Record ``message`` for /model; log it unless a problem of the same ``kind`` (the alias,
        or one version) was logged less than a minute ago: an outage is not a line every poll."""
        self.champion.last_error = message
        now = time.monotonic()
        if self._logged is None or self._logged[0] != kind or now - self._logged[1] > QUIET_REPEATS_S:
            logger.warning("Following the champion alias: %s (still serving %s)", message, self._serving())
            self._logged = (kind, now)

    def _serving(self) -> str:
        model = self.champion.model
        return f"version {model.version}" if model else "nothing"

    def run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="alias-follower", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


class ScoringApp:
    """The ASGI app: dispatches to the current model's MLflow app and keeps errors to one line."""

    def __init__(self, settings: Settings, champion: Champion) -> None:
        self.settings = settings
        self.champion = champion
        self.max_bytes = settings.serving.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        model = self.champion.model  # this request's model, even if a newer one is swapped in meanwhile
        headers = [(VERSION_HEADER, model.version.encode())] if model else []
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._route(scope, receive, tracked, model, headers)
        except Exception:  # a fault of this layer, never of the input: logged whole, answered in one line
            logger.exception("Request %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                body = scoring.error_body("INTERNAL_ERROR", "the server failed on this request; see its log")
                await _answer(send, 500, body, headers)

    async def _route(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        model: scoring.LoadedModel | None,
        headers: list[Any],
    ) -> None:
        path, method = scope["path"], scope["method"]
        routes = {
            "/invocations": "POST",
            "/ping": "GET",
            "/health": "GET",
            "/version": "GET",
            "/model": "GET",
        }
        if path not in routes:
            await _answer(send, 404, scoring.error_body("NOT_FOUND", f"no such path {path}"), headers)
        elif method != routes[path]:
            await _answer(
                send, 405, scoring.error_body("METHOD_NOT_ALLOWED", f"{path} takes {routes[path]}"), headers
            )
        elif path == "/model":
            await _answer(send, 200, json.dumps(self.model_document()).encode(), headers)
        elif model is None:
            await _answer(send, 503, scoring.error_body("NO_CHAMPION", self._no_champion()), headers)
        elif path == "/invocations":
            await self._invocations(scope, receive, send, model, headers)
        else:  # /ping, /health, /version: MLflow's own answers
            await _forward(model.app, scope, _replay(b""), send, headers)

    def model_document(self) -> dict[str, Any]:
        model = self.champion.model
        described = (
            model.describe() if model else dict.fromkeys(("version", "run_id", "batch_number", "loaded_at"))
        )
        return {
            "name": self.settings.mlflow.registered_model_name,
            "alias": tracking.CHAMPION_ALIAS,
            **described,
            "tracking_uri": redact_url(self.settings.mlflow.tracking_uri),
            "last_error": self.champion.last_error,
        }

    def _no_champion(self) -> str:
        name = self.settings.mlflow.registered_model_name
        return f"no champion yet for model {name!r}: the server serves it once the first batch is trained"

    async def _invocations(
        self, scope: Scope, receive: Receive, send: Send, model: scoring.LoadedModel, headers: list[Any]
    ) -> None:
        request_headers = dict(scope.get("headers") or [])
        if not request_headers.get(b"content-type", b"").strip():
            message = "no Content-Type: send application/json, text/csv or application/vnd.apache.parquet"
            await _answer(send, 415, scoring.error_body("UNSUPPORTED_MEDIA_TYPE", message), headers)
            return
        body = await _read_body(receive, request_headers, self.max_bytes)
        if body is None:
            message = f"the request body is larger than serving.max_request_bytes ({self.max_bytes} bytes)"
            await _answer(send, 413, scoring.error_body("REQUEST_TOO_LARGE", message), headers)
        elif not body.strip():
            await _answer(send, 400, scoring.error_body("BAD_REQUEST", "the request body is empty"), headers)
        else:
            content_type = request_headers[b"content-type"].decode("latin-1")
            columns = scoring.signature_columns(model)

            def reason() -> str | None:  # only when MLflow rejected the request
                return scoring.table_problem(body, content_type, columns)

            await _forward(model.app, scope, _replay(body), send, headers, reason)


DRAIN_FACTOR = 4  # a too-large body up to this many times the limit is read (and dropped) before the 413


async def _read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes | None:
    """The whole body, or None when it is (or its Content-Length says it is) larger than ``limit``.

    A too-large body is not kept, but read to its end when it is at most ``DRAIN_FACTOR`` times
    the limit: a client still sending when the server answers and closes gets a connection
    reset instead of the 413.
    """
    declared = headers.get(b"content-length", b"").strip()
    too_large = declared.isdigit() and int(declared) > limit
    if too_large and int(declared) > DRAIN_FACTOR * limit:
        return None
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        more = bool(message.get("more_body"))
        if size > DRAIN_FACTOR * limit:
            return None
        if too_large or size > limit:
            too_large = True
            chunks.clear()
            continue
        chunks.append(chunk)
    return None if too_large else b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _forward(
    app: Any,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: list[Any],
    reason: Callable[[], str | None] | None = None,
) -> None:
    """Run MLflow's app; its answer goes out with ``headers``, an error body made one line
    (``reason()``, when it finds one, names the problem instead of MLflow's message)."""
    start: Message = {}
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, receive, capture)
    except Exception:  # a fault of ours or MLflow's, not of the input: logged whole, answered short
        logger.exception("Scoring request failed")
        await _answer(
            send, 500, scoring.error_body("INTERNAL_ERROR", "the server failed; see its log"), headers
        )
        return
    status, body = int(start.get("status", 500)), b"".join(chunks)
    if status >= 400:
        status = 400 if status == 500 else status  # MLflow answers input it cannot parse with 500 at times
        found = await asyncio.to_thread(reason) if reason is not None and status < 500 else None
        await _answer(send, status, scoring.rewrite_error(status, body, found), headers)
        return
    kept = [
        (k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", VERSION_HEADER)
    ]
    await _answer(send, status, body, headers + kept, content_type=None)


async def _answer(
    send: Send, status: int, body: bytes, headers: list[Any], content_type: bytes | None = b"application/json"
) -> None:
    sent = [*headers, (b"content-length", str(len(body)).encode())]
    if content_type is not None:
        sent.append((b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": sent})
    await send({"type": "http.response.body", "body": body})


def serve(settings: Settings, host: str, port: int) -> None:
    """Load the champion (if there is one yet), then serve until SIGINT or SIGTERM."""
    import uvicorn

    scoring.use_store(settings.mlflow)
    # MLflow's scoring module warns about the `instances` key on every request that fails its
    # schema check; our one-line answer already says what is wrong.
    logging.getLogger("mlflow.pyfunc.scoring_server").setLevel(logging.ERROR)
    # urllib3 warns at every retry of every poll while a tracking server is down; the follower
    # says so itself, once a minute.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    champion = Champion()
    follower = AliasFollower(settings, champion)
    follower.check()
    if champion.model is None:
        logger.info(
            "No champion to serve yet (%s); checking every %g s",
            champion.last_error or "no alias",
            follower.poll_seconds,
        )
    follower.start()
    app = ScoringApp(settings, champion)
    config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="info", access_log=False)
    try:
        uvicorn.Server(config).run()
    finally:
        follower.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrain_pipeline.serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--params", help="params file (default: the project's params.yaml)")
    parser.add_argument("--host", type=host_argument, default=DEFAULT_HOST)
    parser.add_argument("--port", type=port_argument, default=DEFAULT_SERVE_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load_settings(
            params_for_command(args.params), default_root=PROJECT_PARAMS.parent, light=True
        )
        logger.info(
            "Serving %s@%s from %s on http://%s:%d",
            settings.mlflow.registered_model_name,
            tracking.CHAMPION_ALIAS,
            redact_url(settings.mlflow.tracking_uri),
            args.host,
            args.port,
        )
        serve(settings, args.host, args.port)
    except PipelineError as exc:
        logger.error("error: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
