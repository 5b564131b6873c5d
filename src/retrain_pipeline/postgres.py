"""A PostgreSQL server in a project folder, from the OS packages: for the local cluster and tests.

PostgreSQL refuses to run as root, so when this process is root every PostgreSQL command
runs as the ``postgres`` system user (``runuser``), and the server's folder belongs to it.
The server listens on TCP only (no Unix socket: project paths can be longer than a
socket path may be), on ``127.0.0.1`` unless told otherwise, with password authentication:
the password is generated once and kept next to the data, readable by its owner only.

    server = LocalPostgres(Path(".cluster/postgres"), port=15432)
    server.start()                      # initdb on first use, then pg_ctl start
    server.create_database("prefect")
    server.url("prefect")               # postgresql://postgres:<password>@127.0.0.1:15432/prefect
    server.stop()
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from retrain_pipeline.errors import PostgresError

logger = logging.getLogger(__name__)

SYSTEM_USER = "postgres"  # who runs the server when we are root
SUPERUSER = "postgres"  # the database role initdb creates
INSTALL_HINT = (
    "install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install "
    "postgresql-server`; macOS: `brew install postgresql@15`) or set PG_BIN to the folder "
    "that holds pg_ctl and initdb"
)


def find_bin_dir() -> Path:
    """The folder with ``initdb`` and ``pg_ctl``: ``$PG_BIN``, Debian's layout, or ``PATH``."""
    candidates: list[str] = []
    if os.environ.get("PG_BIN"):
        candidates.append(os.environ["PG_BIN"])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates += [str(folder) for folder in debian]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for folder in candidates:
        if (Path(folder) / "pg_ctl").is_file() and (Path(folder) / "initdb").is_file():
            return Path(folder)
    raise PostgresError(f"PostgreSQL's initdb and pg_ctl were not found: {INSTALL_HINT}")


def _version_key(folder: Path) -> int:
    part = folder.parent.name
    return int(part) if part.isdigit() else 0


@dataclass(frozen=True)
class LocalPostgres:
    """A PostgreSQL server whose files live in ``folder`` (``data/``, ``postgres.log``, password)."""

    folder: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def place(self) -> Path:
        """Where the files really are: ``folder``, or the folder its symlink points to."""
        return self.folder.resolve()

    @property
    def data_dir(self) -> Path:
        return self.place / "data"

    @property
    def log_file(self) -> Path:
        return self.place / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.place / "password"

    def password(self) -> str:
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PostgresError(f"cannot read the PostgreSQL password ({self.password_file}): {exc}") from exc

    def url(self, database: str, driver: str | None = None) -> str:
        """``postgresql[+driver]://postgres:<password>@host:port/database``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{SUPERUSER}:{self.password()}@{self.host}:{self.port}/{database}"

    # ------------------------------------------------------------------ lifecycle

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> bool:
        """``initdb`` with a new random password unless the data folder exists; True when created."""
        if self.initialised():
            return False
        bin_dir = find_bin_dir()
        self._make_folder()
        self._hand_over(self.place)
        password = secrets.token_urlsafe(24)
        pwfile = self.place / "initdb-password"
        _write_private(pwfile, password + "\n")
        self._hand_over(pwfile)
        try:
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
                "initdb",
                timeout=120,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        _write_private(self.password_file, password + "\n")
        return True

    def running(self) -> bool:
        if not self.initialised():
            return False
        result = self._run([str(find_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "status"], check=False)
        return result.returncode == 0

    def start(self, timeout: int = 60) -> str:
        """Initialise on first use, start the server unless it runs, wait until it accepts connections."""
        created = self.init()
        if self.running():
            return f"postgres: already running ({self.host}:{self.port}, {self.data_dir})"
        options = " ".join(
            [
                f"-p {self.port}",
                f"-c listen_addresses={self.host}",
                "-c unix_socket_directories=''",
                # A client that vanished without closing its connection (power loss, network
                # cut) is noticed within about 30 s, which frees its session locks.
                "-c tcp_keepalives_idle=10",
                "-c tcp_keepalives_interval=5",
                "-c tcp_keepalives_count=4",
            ]
        )
        self._run(
            [
                str(find_bin_dir() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-o",
                options,
                "-w",
                "-t",
                str(timeout),
                "start",
            ],
            "pg_ctl start",
            timeout=timeout + 10,
        )
        what = "initialised and started" if created else "started"
        return f"postgres: {what} ({self.host}:{self.port}, {self.data_dir})"

    def stop(self, timeout: int = 60) -> str:
        if not self.running():
            return "postgres: not running"
        pg_ctl = str(find_bin_dir() / "pg_ctl")
        self._run(
            [pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(timeout), "stop"],
            "pg_ctl stop",
            timeout=timeout + 10,
        )
        return f"postgres: stopped ({self.data_dir})"

    def remove(self) -> None:
        """Delete the stopped server's files (and the folder they were linked from)."""
        if self.running():
            raise PostgresError(f"PostgreSQL in {self.data_dir} is running: stop it first")
        place = self.place
        if self.folder.is_symlink():
            self.folder.unlink()
        shutil.rmtree(place, ignore_errors=True)

    def create_database(self, name: str) -> bool:
        """Create database ``name`` unless it exists; True when created."""
        import psycopg2
        from psycopg2 import sql

        try:
            connection = psycopg2.connect(self.url("postgres"), connect_timeout=10)
        except psycopg2.Error as exc:
            raise PostgresError(f"cannot connect to PostgreSQL on {self.host}:{self.port}: {exc}") from exc
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone():
                    return False
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                return True
        finally:
            connection.close()

    # ------------------------------------------------------------------ helpers

    def _make_folder(self) -> None:
        """Create ``folder``; as root, where the ``postgres`` user can reach it.

        PostgreSQL runs as ``postgres`` then, and a folder below a private one (``/root``,
        pytest's ``/tmp/pytest-of-root``) is out of its reach. Rather than opening up the
        user's folders, the files then go to ``/var/tmp/retrain-pipeline-postgres/<id>``
        and ``folder`` becomes a symlink to it.
        """
        if self.folder.exists():
            return
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0 or self._reachable(self.folder.parent):
            self.folder.mkdir()
            return
        base = Path("/var/tmp/retrain-pipeline-postgres")
        base.mkdir(mode=0o711, exist_ok=True)
        base.chmod(0o711)  # others may pass through, not list
        digest = hashlib.sha256(str(self.folder.absolute()).encode()).hexdigest()[:16]
        real = base / digest
        real.mkdir(exist_ok=True)
        self.folder.symlink_to(real, target_is_directory=True)
        logger.info(
            "PostgreSQL's files are in %s (linked from %s): %s cannot reach the latter",
            real,
            self.folder,
            SYSTEM_USER,
        )

    def _reachable(self, folder: Path) -> bool:
        probe = subprocess.run(
            [*self._as_server_user(), "test", "-x", str(folder)], capture_output=True, check=False
        )
        return probe.returncode == 0

    def _as_server_user(self) -> list[str]:
        return ["runuser", "-u", SYSTEM_USER, "--"] if os.geteuid() == 0 else []

    def _hand_over(self, path: Path) -> None:
        """As root, give ``path`` to the ``postgres`` user (PostgreSQL will not run as root)."""
        if os.geteuid() != 0:
            return
        try:
            account = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresError(
                f"running as root, but there is no {SYSTEM_USER!r} system user to run PostgreSQL as: "
                f"{INSTALL_HINT}, or run as an unprivileged user"
            ) from None
        os.chown(path, account.pw_uid, account.pw_gid)
        if path.is_dir():
            path.chmod(0o700)
        probe = subprocess.run(
            [*self._as_server_user(), "test", "-w", str(path)], capture_output=True, check=False
        )
        if probe.returncode != 0:
            raise PostgresError(
                f"the {SYSTEM_USER!r} user cannot reach {path}: PostgreSQL refuses to run as root, so "
                f"its folder must be reachable by {SYSTEM_USER!r} (every parent folder needs o+x), or "
                "run as an unprivileged user"
            )

    def _run(
        self, argv: list[str], what: str = "", *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                [*self._as_server_user(), *argv],
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
                cwd="/",
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresError(f"{what or argv[0]} failed: {exc}") from exc
        if check and result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            if self.log_file.exists() and "start" in what:
                output += "\n" + "\n".join(_tail(self.log_file))
            raise PostgresError(f"{what} failed (exit {result.returncode}): {output}")
        return result


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []
