"""Unit tests for retrain_pipeline.api_server: when the CLI starts Prefect's temporary API server early.

``start_for_command_line`` is called with ``TemporaryApiServer.start`` replaced by a recorder (the
:func:`starts` fixture), so a test sees whether a server would have been started and for which
Prefect home, without booting one; a single test boots Prefect's real temporary API server.
"""

from __future__ import annotations

import atexit
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retrain_pipeline import api_server
from retrain_pipeline.api_server import TemporaryApiServer, start_for_command_line
from retrain_pipeline.errors import TemporaryApiTimeoutError
from retrain_pipeline.prefect_runtime import STARTUP_TIMEOUT_ENV

ParamsWriter = Callable[..., Path]

#: Appears in the command line of the process a test records as the project's Prefect server.
MARKER = "retrain-test-recorded-prefect-server"

#: A tiny HTTP server answering 200 on /api/health (what TemporaryApiServer.wait polls).
HEALTH_SERVER = """
import http.server, sys

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


@pytest.fixture(autouse=True)
def _no_server_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_HOME", "RETRAIN_PARAMS", STARTUP_TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(api_server, "_server", None)


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[TemporaryApiServer]]:
    """The servers ``start_for_command_line`` starts; ``start`` records them instead of running uvicorn."""
    started: list[TemporaryApiServer] = []

    def record(self: TemporaryApiServer) -> None:
        started.append(self)

    monkeypatch.setattr(TemporaryApiServer, "start", record)
    yield started
    for server in started:
        atexit.unregister(server.stop)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a Python process running ``code`` with ``args``; every one is killed afterwards."""
    processes: list[subprocess.Popen[bytes]] = []

    def _spawn(code: str, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL)
        processes.append(process)
        return process

    yield _spawn
    for process in processes:
        process.kill()
        process.wait()


def home_of(folder: Path) -> Path:
    """The Prefect home of the project whose params file is in ``folder``."""
    return folder.resolve() / ".prefect"


def record_prefect_server(project: Path, pid: int) -> Path:
    """Write the pid file ``make start-services`` leaves for a running Prefect server."""
    pid_file = project / ".services" / "prefect.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "marker": MARKER, "url": "http://127.0.0.1:4200/api", "argv": []}
    pid_file.write_text(json.dumps(record), encoding="utf-8")
    return pid_file


def wait_for_exec(process: subprocess.Popen[bytes]) -> None:
    """Until the process's command line is its own (just after ``Popen`` it can still be empty)."""
    deadline = time.monotonic() + 10
    while MARKER.encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline, "the process never showed its command line"
        time.sleep(0.01)


def server_with_process(tmp_path: Path, process: subprocess.Popen[bytes]) -> TemporaryApiServer:
    server = TemporaryApiServer(tmp_path / ".prefect")
    server.port = api_server._free_port()
    server.process = process
    return server


# --------------------------------------------------------------------------- when a server is started


def test_a_project_without_a_prefect_server_gets_a_temporary_one(
    tmp_path: Path, params_writer: ParamsWriter, starts: list[TemporaryApiServer]
) -> None:
    params = params_writer(tmp_path / "project", {"automation": {"max_batches": 3}})

    server = start_for_command_line(["2", "--force"], default_params=params)

    assert server is not None
    assert starts == [server]
    assert server.prefect_home == home_of(tmp_path / "project")
    assert api_server.started() is server
    # Once started, later calls hand back the same server and start no other.
    assert start_for_command_line([], default_params=params) is server
    assert starts == [server]


def test_a_missing_default_params_file_means_the_defaults_under_its_folder(
    tmp_path: Path, starts: list[TemporaryApiServer]
) -> None:
    server = start_for_command_line([], default_params=tmp_path / "project" / "params.yaml")

    assert server is not None
    assert starts == [server]
    assert server.prefect_home == home_of(tmp_path / "project")


def test_prefect_home_from_the_environment_wins(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
) -> None:
    params = params_writer(tmp_path / "project", {})
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))

    server = start_for_command_line([], default_params=params)

    assert server is not None
    assert server.prefect_home == tmp_path / "mine"


def test_a_profiles_file_that_names_no_server_does_not_stop_the_start(
    tmp_path: Path, params_writer: ParamsWriter, starts: list[TemporaryApiServer]
) -> None:
    params = params_writer(tmp_path / "project", {})
    home = home_of(tmp_path / "project")
    home.mkdir()
    (home / "profiles.toml").write_text(
        '[profiles.local]\nPREFECT_LOGGING_LEVEL = "INFO"\n', encoding="utf-8"
    )

    assert start_for_command_line([], default_params=params) is not None
    assert len(starts) == 1


def test_a_stale_prefect_pid_file_does_not_count_as_a_running_server(
    tmp_path: Path,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    params = params_writer(tmp_path / "project", {})
    gone = spawn("pass", MARKER)
    gone.wait()
    pid_file = record_prefect_server(tmp_path / "project", gone.pid)

    assert start_for_command_line([], default_params=params) is not None
    assert len(starts) == 1
    assert not pid_file.exists()  # removed as stale


# --------------------------------------------------------------------------- when none is started


def test_nothing_starts_when_prefect_api_url_is_set(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
) -> None:
    params = params_writer(tmp_path / "project", {})
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")

    assert start_for_command_line([], default_params=params) is None
    assert starts == []
    assert api_server.started() is None


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["3", "--force", "--help"]])
def test_nothing_starts_for_help(
    tmp_path: Path, params_writer: ParamsWriter, starts: list[TemporaryApiServer], argv: list[str]
) -> None:
    params = params_writer(tmp_path / "project", {})

    assert start_for_command_line(argv, default_params=params) is None
    assert starts == []


@pytest.mark.parametrize("form", ["absolute", "relative"])
def test_nothing_starts_when_params_names_a_missing_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
    form: str,
) -> None:
    params = params_writer(tmp_path / "project", {})
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "missing.yaml") if form == "absolute" else "missing.yaml"

    assert start_for_command_line(["--params", missing], default_params=params) is None
    assert starts == []


def test_nothing_starts_when_retrain_params_names_a_missing_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
) -> None:
    params = params_writer(tmp_path / "project", {})
    monkeypatch.setenv("RETRAIN_PARAMS", "missing.yaml")

    assert start_for_command_line([], default_params=params) is None
    assert starts == []


def test_nothing_starts_when_a_prefect_profile_is_chosen(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
) -> None:
    params = params_writer(tmp_path / "project", {})
    monkeypatch.setenv("PREFECT_PROFILE", "team")

    assert start_for_command_line([], default_params=params) is None
    assert starts == []


@pytest.mark.parametrize("home_from_environment", [False, True], ids=["project-home", "PREFECT_HOME"])
def test_nothing_starts_when_the_profiles_file_may_name_a_server(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
    home_from_environment: bool,
) -> None:
    params = params_writer(tmp_path / "project", {})
    home = tmp_path / "mine" if home_from_environment else home_of(tmp_path / "project")
    if home_from_environment:
        monkeypatch.setenv("PREFECT_HOME", str(home))
    home.mkdir()
    (home / "profiles.toml").write_text(
        '[profiles.team]\nPREFECT_API_URL = "http://prefect.example.com/api"\n', encoding="utf-8"
    )

    assert start_for_command_line([], default_params=params) is None
    assert starts == []


@pytest.mark.parametrize(
    ("file_name", "text"),
    [
        ("prefect.toml", '[api]\nurl = "http://prefect.example.com:4200/api"\n'),
        (".env", "PREFECT_API_URL=http://prefect.example.com:4200/api\n"),
        ("pyproject.toml", '[tool.prefect.api]\nurl = "http://prefect.example.com:4200/api"\n'),
    ],
)
def test_nothing_starts_when_prefect_settings_files_in_the_current_folder_may_name_a_server(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
    file_name: str,
    text: str,
) -> None:
    params = params_writer(tmp_path / "project", {})
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    assert start_for_command_line([], default_params=params) is not None  # the control
    monkeypatch.setattr(api_server, "_server", None)
    starts.clear()
    (here / file_name).write_text(text, encoding="utf-8")

    assert start_for_command_line([], default_params=params) is None
    assert starts == []


def test_nothing_starts_when_the_projects_prefect_server_is_recorded_as_running(
    tmp_path: Path,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    params = params_writer(tmp_path / "project", {})
    running = spawn("import time; time.sleep(120)", MARKER)
    wait_for_exec(running)
    pid_file = record_prefect_server(tmp_path / "project", running.pid)

    assert start_for_command_line([], default_params=params) is None
    assert starts == []
    assert pid_file.exists()


# --------------------------------------------------------------------------- which params file


@pytest.mark.parametrize("option", [["--params", "sub/params.yaml"], ["--params=sub/params.yaml"]])
def test_params_option_is_resolved_against_the_current_directory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
    option: list[str],
) -> None:
    default = params_writer(tmp_path / "project", {})
    params_writer(tmp_path / "project" / "sub", {})  # the same relative path from the project: not it
    params_writer(tmp_path / "cwd" / "sub", {})
    monkeypatch.chdir(tmp_path / "cwd")

    server = start_for_command_line(option, default_params=default)

    assert server is not None
    assert server.prefect_home == home_of(tmp_path / "cwd" / "sub")


def test_params_option_relative_to_the_project_only_is_missing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
) -> None:
    default = params_writer(tmp_path / "project", {})
    params_writer(tmp_path / "project" / "sub", {})
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")

    assert start_for_command_line(["--params", "sub/params.yaml"], default_params=default) is None
    assert starts == []


def test_relative_retrain_params_is_resolved_against_the_default_params_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
) -> None:
    default = params_writer(tmp_path / "project", {})
    params_writer(tmp_path / "project" / "sub", {})
    params_writer(tmp_path / "cwd" / "sub", {})  # the same relative path from the current directory: not it
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("RETRAIN_PARAMS", "sub/params.yaml")

    server = start_for_command_line([], default_params=default)

    assert server is not None
    assert server.prefect_home == home_of(tmp_path / "project" / "sub")


def test_params_option_wins_over_retrain_params(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params_writer: ParamsWriter,
    starts: list[TemporaryApiServer],
) -> None:
    default = params_writer(tmp_path / "project", {})
    params_writer(tmp_path / "project" / "worker", {})
    chosen = params_writer(tmp_path / "chosen", {})
    monkeypatch.setenv("RETRAIN_PARAMS", "worker/params.yaml")

    server = start_for_command_line(["--params", str(chosen)], default_params=default)

    assert server is not None
    assert server.prefect_home == home_of(tmp_path / "chosen")


# --------------------------------------------------------------------------- the server itself


def test_prefects_temporary_api_server_starts_answers_and_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        monkeypatch.delenv(name, raising=False)
    server = TemporaryApiServer(tmp_path / ".prefect")
    server.start()
    process = server.process
    assert process is not None
    try:
        url = server.wait(timeout_s=120)
        assert url == f"http://127.0.0.1:{server.port}/api"
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/api", url)
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert response.status == 200
    finally:
        server.stop()

    assert server.process is None
    assert process.poll() is not None
    assert not Path(f"/proc/{process.pid}").exists()
    assert not api_server._healthy(url)
    assert (tmp_path / ".prefect" / "prefect.db").is_file()  # its database is in the given home


def test_wait_fails_at_once_when_the_server_exits(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    server = server_with_process(tmp_path, spawn("raise SystemExit(5)"))
    began = time.monotonic()

    with pytest.raises(TemporaryApiTimeoutError) as excinfo:
        server.wait(timeout_s=60)

    assert time.monotonic() - began < 30  # not the whole timeout
    assert excinfo.value.waited_s == 60
    assert "within 60 s" in str(excinfo.value)
    assert "its process exited with code 5" in str(excinfo.value)


def test_wait_times_out_when_nothing_answers(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    server = server_with_process(tmp_path, spawn("import time; time.sleep(120)"))

    with pytest.raises(TemporaryApiTimeoutError) as excinfo:
        server.wait(timeout_s=0.5)

    assert excinfo.value.waited_s == 0.5
    message = str(excinfo.value)
    assert "did not answer within 0.5 s" in message
    assert f"no answer from http://127.0.0.1:{server.port}/api" in message


def test_wait_takes_its_default_timeout_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    monkeypatch.setenv(STARTUP_TIMEOUT_ENV, "0.3")
    server = server_with_process(tmp_path, spawn("import time; time.sleep(120)"))

    with pytest.raises(TemporaryApiTimeoutError, match=r"within 0\.3 s") as excinfo:
        server.wait()

    assert excinfo.value.waited_s == 0.3


def test_a_port_taken_meanwhile_starts_the_server_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    server = server_with_process(tmp_path, spawn("raise SystemExit(3)"))  # uvicorn: port in use
    ports_given_up: list[int] = []

    def start_again(self: TemporaryApiServer) -> None:
        ports_given_up.append(self.port)
        self.port = api_server._free_port()
        self.process = spawn(HEALTH_SERVER, str(self.port))

    first_port = server.port
    monkeypatch.setattr(TemporaryApiServer, "start", start_again)

    url = server.wait(timeout_s=60)

    assert ports_given_up == [first_port]
    assert url == f"http://127.0.0.1:{server.port}/api"
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert response.status == 200


def test_stop_without_a_process_does_nothing(tmp_path: Path) -> None:
    server = TemporaryApiServer(tmp_path / ".prefect")
    server.stop()
    assert server.process is None
