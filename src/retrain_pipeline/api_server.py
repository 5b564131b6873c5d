"""Prefect's temporary API server for a command-line run, started before the heavy imports.

With no Prefect server running, Prefect starts a temporary ("ephemeral") API server for the
run: a ``uvicorn`` subprocess over the project's Prefect database. Prefect starts it when the
flow is first called, after this process has imported pandas, scikit-learn, MLflow and DVC, and
the main process first imports Prefect's whole server package (about 3 s) just to launch it.
The run then waits for the server to boot (about 7 s on 2 cores).

:func:`start_for_command_line` starts the very same command (Prefect's own
``SubprocessASGIServer`` arguments and environment) as the first thing the command line does,
so the server boots on the other core while this process imports; :func:`started` hands it
to the run, which then talks to it as to any server. It is stopped when the process exits.

Only the standard library is imported here: the point is to be early.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from retrain_pipeline.errors import TemporaryApiTimeoutError
from retrain_pipeline.prefect_runtime import EPHEMERAL_STARTUP_TIMEOUT_S, STARTUP_TIMEOUT_ENV

#: Exit code of uvicorn when its port is taken (Prefect retries on another port then too).
_PORT_IN_USE = 3
_server: TemporaryApiServer | None = None


class TemporaryApiServer:
    """One temporary Prefect API server on 127.0.0.1 over the database in ``prefect_home``."""

    def __init__(self, prefect_home: Path) -> None:
        self.prefect_home = prefect_home
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        self.port = _free_port()
        prefect_dir = Path(_package_dir("prefect"))
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
            # What Prefect's SubprocessASGIServer sets: no UI, an ephemeral server.
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent)]
        argv += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--log-level", "error", "--lifespan", "on"]
        self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)

    def wait(self, timeout_s: float | None = None) -> str:
        """Wait until the API answers; returns its URL. Raises :class:`TemporaryApiTimeoutError`."""
        if timeout_s is None:
            timeout_s = float(os.environ.get(STARTUP_TIMEOUT_ENV) or EPHEMERAL_STARTUP_TIMEOUT_S)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None, "start() first"
            code = self.process.poll()
            if code == _PORT_IN_USE:  # another process took the port meanwhile
                self.start()
            elif code is not None:
                raise TemporaryApiTimeoutError(timeout_s, f"its process exited with code {code}", code)
            elif _healthy(self.api_url):
                return self.api_url
            time.sleep(0.1)
        raise TemporaryApiTimeoutError(timeout_s, f"no answer from {self.api_url}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def start_for_command_line(argv: list[str], default_params: Path) -> TemporaryApiServer | None:
    """Start the temporary API server if the run about to start will need one.

    It is not needed when ``PREFECT_API_URL`` is set, when the project's Prefect server runs
    (``make start-services``) or when a Prefect profile may name a server; nor for ``--help``.
    Never fails: if anything here goes wrong the run starts Prefect's own temporary server.
    """
    global _server
    if _server is not None or {"-h", "--help"} & set(argv) or os.environ.get("PREFECT_API_URL"):
        return _server
    try:
        from retrain_pipeline.params import load_settings, params_for_command
        from retrain_pipeline.service_records import prefect_home, running_urls

        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--params")
        known, _ = parser.parse_known_args(argv)
        params_file = params_for_command(known.params, default_params)  # as the flow's main()
        if params_file is not None and not params_file.is_file():
            return None  # the run will report the missing params file
        settings = load_settings(params_file, default_root=default_params.parent, light=True)
        if "prefect" in running_urls(settings):
            return None
        home = Path(os.environ.get("PREFECT_HOME") or prefect_home(settings))
        if _prefect_may_be_configured(home):
            return None
        server = TemporaryApiServer(home)
        server.start()
    except Exception:
        return None
    atexit.register(server.stop)
    _server = server
    return server


def started() -> TemporaryApiServer | None:
    """The server :func:`start_for_command_line` started in this process, if any."""
    return _server


def _prefect_may_be_configured(prefect_home: Path) -> bool:
    """Whether Prefect's own settings may name a server: then Prefect decides, as before.

    Prefect reads ``PREFECT_API_URL`` from the environment (checked by the caller), a chosen
    profile, the profiles file, and ``prefect.toml``, ``.env`` and ``[tool.prefect]`` in
    ``pyproject.toml`` of the current folder.
    """
    if os.environ.get("PREFECT_PROFILE") or os.environ.get("PREFECT_PROFILES_PATH"):
        return True
    if Path("prefect.toml").exists():
        return True
    mentions = (
        (prefect_home / "profiles.toml", "PREFECT_API_URL"),
        (Path(".env"), "PREFECT_API_URL"),
        (Path("pyproject.toml"), "[tool.prefect"),
    )
    for path, text in mentions:
        try:
            if text in path.read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False


def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(name)
    return next(iter(spec.submodule_search_locations))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:  # a loopback URL
            return bool(response.status == 200)
    except OSError:  # URLError, refused, reset, timeout
        return False
