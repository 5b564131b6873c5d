"""The state store, chosen by configuration: where the batch state lives, with its exactly-once run lock.

* :class:`FileStateStore` (the default): ``batch_state.json``, replaced atomically, and an OS
  file lock (``flock``) next to it, exactly as :mod:`retrain_pipeline.state` always did.
* :class:`PostgresStateStore` (``stores.state_database_url`` is set): the same JSON document in
  a PostgreSQL table, and a session-level advisory lock, so that several machines can share
  one pipeline.

The PostgreSQL store keeps **one document per pipeline**, keyed by the MLflow experiment name
(``mlflow.experiment_name``): projects that share a database must use different experiment
names, and projects that share an experiment name share their state and their lock.
Its table, created on the first save::

    retrain_pipeline_state(name text PRIMARY KEY, document jsonb NOT NULL,
                           updated_at timestamptz NOT NULL DEFAULT now())

The lock is ``pg_try_advisory_lock`` on a dedicated connection: PostgreSQL frees it the
moment that connection ends, so a holder killed with SIGKILL never leaves a stale lock (a
vanished machine is noticed by TCP keepalives within about 30 s). While the lock is held,
loads and saves go through the lock's own connection: if that connection is lost (the
server restarted, the network broke), a save fails rather than write without the lock.
The holder is described in the session's ``application_name``, which a refused run reads
from ``pg_locks`` and ``pg_stat_activity``.

    store = state_store(settings)
    with store.lock({"flow_run_id": run_id}) as handle:   # PipelineBusyError when held
        state = store.load()
        handle.update({"batch": 3})
        store.save(new_state, what="the state of batch 3")
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg2
import psycopg2.errors

from retrain_pipeline.config import Settings
from retrain_pipeline.errors import PipelineBusyError, StateError
from retrain_pipeline.run_lock import pipeline_lock, update_holder
from retrain_pipeline.state import (
    PipelineState,
    file_stamp,
    load_state,
    parse_state,
    save_state,
    timestamp,
    utc_now,
)
from retrain_pipeline.urls import redact_url

logger = logging.getLogger(__name__)

TABLE = "retrain_pipeline_state"
APPLICATION_NAME_BYTES = 63  # PostgreSQL truncates application_name to NAMEDATALEN - 1
CONNECT_TIMEOUT = 10  # seconds
# Client-side TCP keepalives: a lock connection whose server vanished fails within ~25 s.
CLIENT_KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
# Server-side, for the lock's session: the server notices a vanished client (and frees
# its lock) within about 30 s.
SERVER_KEEPALIVES = (
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 4"
)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# libpq adds these hints to a lost connection's message; they say nothing more.
_LIBPQ_HINTS = ("This probably means", "before or while processing")


class LockHandle(Protocol):
    """The held pipeline lock: lets its holder say what it is working on."""

    def update(self, info: dict[str, object]) -> None:
        """Merge ``info`` (e.g. ``{"batch": 3}``) into what a refused run is told about the holder."""


class StateStore(Protocol):
    """The batch state document and the run lock that serialises the runs that change it."""

    description: str  # for messages and logs; never holds a password

    def load(self) -> PipelineState:
        """The state; an empty PipelineState when none was saved yet; StateError when unreadable."""

    def save(self, state: PipelineState, *, what: str = "the state") -> None:
        """Replace the state atomically; ``what`` names it in an error message."""

    def lock(self, holder: dict[str, object]) -> AbstractContextManager[LockHandle]:
        """Hold the exclusive run lock for the ``with`` block, or raise PipelineBusyError."""

    def backup(self) -> str | None:
        """Keep the current state aside before it is replaced wholesale; where it went, or None."""


def state_store(settings: Settings) -> StateStore:
    """PostgreSQL when ``stores.state_database_url`` is set, else ``batch_state.json``."""
    url = settings.stores.state_database_url
    if url:
        return PostgresStateStore(url, settings.mlflow.experiment_name)
    return FileStateStore(settings)


def holder_info(holder: dict[str, object]) -> dict[str, object]:
    """Who holds the lock: this process, this host, and the caller's details (flow run id)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), **holder}


# --------------------------------------------------------------------------- the file


class _FileLockHandle:
    def __init__(self, info_file: Path) -> None:
        self.info_file = info_file

    def update(self, info: dict[str, object]) -> None:
        update_holder(self.info_file, info)


class FileStateStore:
    """``batch_state.json`` and its ``flock`` (the functions of :mod:`retrain_pipeline.state`)."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.paths.state_file
        self.lock_file = settings.lock_file
        self.description = f"{self.path.name} ({self.path})"

    def load(self) -> PipelineState:
        return load_state(self.path)

    def save(self, state: PipelineState, *, what: str = "the state") -> None:
        save_state(self.path, state)

    @contextmanager
    def lock(self, holder: dict[str, object]) -> Iterator[LockHandle]:
        with pipeline_lock(self.lock_file, holder) as info_file:
            yield _FileLockHandle(info_file)

    def backup(self) -> str | None:
        """Rename the file to ``batch_state.json.bak-<stamp>`` (it may be corrupt: kept as is)."""
        if not self.path.exists():
            return None
        stamp = file_stamp()
        target = self.path.with_name(f"{self.path.name}.bak-{stamp}")
        self.path.replace(target)
        return str(target)


# --------------------------------------------------------------------------- PostgreSQL


def advisory_key(name: str) -> int:
    """The advisory lock key of a pipeline: a stable positive 62-bit int from sha256(name)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") >> 2


def application_name(info: dict[str, object]) -> str:
    """``retrain pid <pid>@<host> batch <n> run <id>``: at most 63 ASCII bytes (the host is cut)."""
    tail = ""
    if info.get("batch") is not None:
        tail += f" batch {info['batch']}"
    run = info.get("flow_run_id")
    if run:
        run_text = str(run)
        tail += f" run {run_text[:8] if _UUID.match(run_text) else run_text[:16]}"
    head = f"retrain pid {info.get('pid')}@"
    host = str(info.get("host") or "?").encode("ascii", "replace").decode("ascii")
    room = max(APPLICATION_NAME_BYTES - len(head) - len(tail), 1)
    text = head + host[:room] + tail
    return text.encode("ascii", "replace").decode("ascii")[:APPLICATION_NAME_BYTES]


def _libpq_url(url: str) -> str:
    """libpq knows ``postgresql://`` and ``postgres://``, not SQLAlchemy's ``postgresql+psycopg2://``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql")) if "+" in parts.scheme else url


class _PostgresLockHandle:
    def __init__(self, store: PostgresStateStore, connection: Any, info: dict[str, object]) -> None:
        self._store = store
        self._connection = connection
        self.info = info

    def update(self, info: dict[str, object]) -> None:
        self.info = {**self.info, **info}
        self._store._execute(
            self._connection,
            "record the lock holder",
            "SELECT set_config('application_name', %s, false)",
            (application_name(self.info),),
        )


class PostgresStateStore:
    """The state document in PostgreSQL (one row per pipeline ``name``) and an advisory lock.

    ``name`` is the pipeline's MLflow experiment name (see the module docstring). Every
    psycopg2 error becomes a StateError naming the store (its URL without the password)
    and what was being done.
    """

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.key = advisory_key(name)
        self._url = _libpq_url(url)
        self._password = urlsplit(url).password or ""
        self._where = f"PostgreSQL state store {redact_url(url)}"
        self.description = f"{self._where} (document {name!r})"
        self._lock_connection: Any | None = None  # the lock's connection while it is held

    # ------------------------------------------------------------------ the document

    def load(self) -> PipelineState:
        with self._connection("load the state") as connection:
            try:
                row = self._execute(
                    connection,
                    "load the state",
                    f"SELECT document FROM {TABLE} WHERE name = %s",
                    (self.name,),
                    fetch=True,
                    missing_table_ok=True,
                )
            except psycopg2.errors.UndefinedTable:
                return PipelineState()
        if row is None:
            return PipelineState()
        return parse_state(row[0], self.description, kind="state document")

    def save(self, state: PipelineState, *, what: str = "the state") -> None:
        """One upsert (atomic); the table is created first when it does not exist yet."""
        operation = f"save {what}"
        upsert = (
            f"INSERT INTO {TABLE} (name, document, updated_at) VALUES (%s, %s::jsonb, now()) "
            "ON CONFLICT (name) DO UPDATE SET document = EXCLUDED.document, updated_at = now()"
        )
        args = (self.name, state.model_dump_json())
        with self._connection(operation) as connection:
            try:
                self._execute(connection, operation, upsert, args, missing_table_ok=True)
            except psycopg2.errors.UndefinedTable:
                self._create_table(connection, operation)
                self._execute(connection, operation, upsert, args)

    def backup(self) -> str | None:
        """Copy the current document (as stored, even if invalid) to ``<name>@backup-<stamp>``."""
        operation = "back up the state"
        stamp = file_stamp()
        copy = (
            f"INSERT INTO {TABLE} (name, document) SELECT %s, document FROM {TABLE} WHERE name = %s "
            "ON CONFLICT (name) DO NOTHING RETURNING name"
        )
        with self._connection(operation) as connection:
            for attempt in range(100):
                backup_name = f"{self.name}@backup-{stamp}" + (f".{attempt}" if attempt else "")
                try:
                    row = self._execute(
                        connection,
                        operation,
                        copy,
                        (backup_name, self.name),
                        fetch=True,
                        missing_table_ok=True,
                    )
                except psycopg2.errors.UndefinedTable:
                    return None
                if row is not None:
                    return f"document {backup_name!r} of the {self._where}"
                exists = self._execute(
                    connection, operation, f"SELECT 1 FROM {TABLE} WHERE name = %s", (self.name,), fetch=True
                )
                if exists is None:
                    return None
        raise StateError(f"{self.description}: cannot {operation}: no free backup name for {stamp}")

    # ------------------------------------------------------------------ the lock

    @contextmanager
    def lock(self, holder: dict[str, object]) -> Iterator[LockHandle]:
        """``pg_try_advisory_lock`` on a dedicated connection, held until the block ends."""
        if self._lock_connection is not None:
            raise StateError(f"{self.description}: the run lock is already held by this process")
        info = holder_info(holder)
        connection = self._connect("take the run lock")
        try:
            self._execute(connection, "take the run lock", SERVER_KEEPALIVES)
            self._execute(
                connection,
                "take the run lock",
                "SELECT set_config('application_name', %s, false)",
                (application_name(info),),
            )
            row = self._execute(
                connection, "take the run lock", "SELECT pg_try_advisory_lock(%s)", (self.key,), fetch=True
            )
            if not (row and row[0]):
                try:
                    who = self._describe_holder(connection)
                except StateError as exc:
                    who = f"holder unknown ({exc})"
                raise PipelineBusyError(f"another run is in progress: {who}")
        except BaseException:
            connection.close()
            raise
        self._lock_connection = connection
        try:
            yield _PostgresLockHandle(self, connection, info)
        finally:
            self._lock_connection = None
            # Closing the session frees its advisory lock (also when the connection is already lost).
            connection.close()

    def _describe_holder(self, connection: Any) -> str:
        query = """
            SELECT a.application_name, a.pid, a.backend_start, a.query_start
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
        """
        row = self._execute(connection, "find the lock holder", query, (self.key,), fetch=True)
        if row is None:
            return "holder unknown (it is starting or finishing)"
        name, backend_pid, backend_start, query_start = row
        details = [f"PostgreSQL session {backend_pid}"]
        if backend_start is not None:
            details.append(f"connected since {timestamp(backend_start)}")
        if query_start is not None:
            details.append(f"last query at {timestamp(query_start)}")
        return f"{name or 'holder unnamed'} ({', '.join(details)})"

    # ------------------------------------------------------------------ connections and errors

    @contextmanager
    def _connection(self, operation: str) -> Iterator[Any]:
        """The lock's connection while it is held (never another one), else a short-lived one."""
        if self._lock_connection is not None:
            yield self._lock_connection
            return
        with closing(self._connect(operation)) as connection:
            yield connection

    def _connect(self, operation: str) -> Any:
        try:
            connection = psycopg2.connect(
                self._url,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="retrain state store",
                **CLIENT_KEEPALIVES,
            )
        except psycopg2.Error as exc:
            raise StateError(
                f"{self._where}: cannot {operation}: cannot connect ({self._reason(exc, None)})"
            ) from None
        connection.autocommit = True
        return connection

    def _execute(
        self,
        connection: Any,
        operation: str,
        query: str,
        args: tuple[object, ...] | None = None,
        *,
        fetch: bool = False,
        missing_table_ok: bool = False,
    ) -> Any:
        """Run one statement (autocommit); the first row when ``fetch``; StateError on any error,
        except psycopg2's UndefinedTable (re-raised) when ``missing_table_ok``."""
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, args)
                return cursor.fetchone() if fetch else None
        except psycopg2.errors.UndefinedTable:
            if missing_table_ok:
                raise  # the caller's cue: the state table does not exist (yet)
            raise StateError(
                f"{self.description}: cannot {operation}: table {TABLE} does not exist"
            ) from None
        except psycopg2.Error as exc:
            raise StateError(
                f"{self.description}: cannot {operation}: {self._reason(exc, connection)}"
            ) from exc

    def _create_table(self, connection: Any, operation: str) -> None:
        """CREATE TABLE IF NOT EXISTS; a concurrent creator may win the race, which PostgreSQL
        reports as a unique violation, a duplicate table or a duplicate type (the table's row
        type, ``type "..." already exists``): retry, and the table is then there."""
        create = (
            f"CREATE TABLE IF NOT EXISTS {TABLE} (name text PRIMARY KEY, document jsonb NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        for attempt in range(3):
            try:
                with connection.cursor() as cursor:
                    cursor.execute(create)
            except (
                psycopg2.errors.UniqueViolation,
                psycopg2.errors.DuplicateTable,
                psycopg2.errors.DuplicateObject,
            ):
                logger.debug("%s: %s was created concurrently (attempt %d)", self._where, TABLE, attempt + 1)
                continue
            except psycopg2.Error as exc:
                raise StateError(
                    f"{self.description}: cannot {operation}: cannot create table {TABLE}: "
                    f"{self._reason(exc, connection)}"
                ) from None
            logger.info("%s: table %s is ready", self._where, TABLE)
            return
        raise StateError(f"{self.description}: cannot {operation}: cannot create table {TABLE}")

    def _reason(self, exc: psycopg2.Error, connection: Any | None) -> str:
        """The server's or libpq's message in one line, without the password; names a lost connection."""
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith(_LIBPQ_HINTS)]
        text = "; ".join(lines[:2]) or type(exc).__name__
        for secret in {self._password, unquote(self._password)} - {""}:
            text = text.replace(secret, "***")
        lost = connection is not None and (connection.closed or isinstance(exc, psycopg2.InterfaceError))
        return f"connection lost ({text})" if lost else text
