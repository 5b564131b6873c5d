"""The rules for every URL a project configures (MLflow tracking, PostgreSQL, DVC remote, Git,
webhook): each is checked (``check_*`` raise ValueError saying what is wrong), resolved against
the project folder where relative, redacted for messages.

Standard library only: the settings models (:mod:`retrain_pipeline.config`) and the
environment overrides (:mod:`retrain_pipeline.params`) share these checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
REMOTE_SCHEMES = ("http", "https", "databricks")  # tracking URIs of a server, not a database


def check_tracking_uri(uri: str) -> str:
    """``uri`` stripped, when its scheme is one MLflow's tracking store takes; a ``sqlite``
    URI must look like ``sqlite:///file.db``."""
    uri = uri.strip()
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.split("+", 1)[0]  # e.g. postgresql+psycopg2
    if not sep or scheme not in TRACKING_SCHEMES:
        raise ValueError(
            f"unsupported tracking URI {uri!r}: expected one of "
            + ", ".join(f"{s}://" for s in TRACKING_SCHEMES)
        )
    if scheme == "sqlite" and (not rest.startswith("/") or rest == "/"):
        raise ValueError(f"sqlite URIs look like sqlite:///mlflow.db, got {uri!r}")
    return uri


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """Check a tracking URI and make a relative ``sqlite:///file`` absolute under ``root``."""
    uri = check_tracking_uri(uri)
    if not uri.startswith("sqlite:"):
        return uri
    # sqlite:///rel.db -> "rel.db", sqlite:////abs.db -> "/abs.db"
    db_path = Path(uri.partition("://")[2][1:])
    if not db_path.is_absolute():
        db_path = (root / db_path).resolve()
    return f"sqlite:///{db_path}"


def is_remote_uri(tracking_uri: str) -> bool:
    """Whether an MLflow tracking URI names a server (no local database to open)."""
    return tracking_uri.partition("://")[0] in REMOTE_SCHEMES


def check_postgres_url(url: str) -> str:
    """Accept ``postgresql://`` (or ``postgres://``, ``postgresql+psycopg2://``) URLs with a database."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg2"):
        raise ValueError("expected a postgresql://user@host:port/database URL")
    if not parts.path.strip("/"):
        raise ValueError(f"{redact_url(url)!r} names no database (postgresql://user@host:port/database)")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"{redact_url(url)!r}: {exc}") from None
    return url


def check_dvc_remote(value: str) -> str:
    """A DVC remote: a path, or a URL DVC knows (``s3://``, ``ssh://``, ``file://``, ...)."""
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("a DVC remote must not contain whitespace or control characters")
    scheme, sep, _ = value.partition("://")
    if sep and not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ValueError(f"invalid URL scheme {scheme!r}")
    return value


def resolve_dvc_remote(value: str, root: Path) -> str:
    """Check a DVC remote; a path (or ``file://`` URL) becomes absolute, relative to ``root``."""
    value = check_dvc_remote(value)
    if value.startswith("file://"):
        return str(Path(value[len("file://") :]).resolve())
    if "://" in value:
        return value
    return str((root / Path(value).expanduser()).resolve())


def check_git_url(value: str) -> str:
    """A Git URL every worker can clone: ``https://``, ``ssh://``, ``git@host:path`` or ``file://``."""
    if any(ch.isspace() or ord(ch) < 32 for ch in value) or value.startswith("-"):
        raise ValueError("a Git URL must not contain whitespace or start with '-'")
    if not re.match(r"^(https?|ssh|git|file)://\S+$|^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+$", value):
        raise ValueError(
            "expected a Git URL: https://host/repo.git, ssh://git@host/repo.git, git@host:repo.git "
            "or file:///path/to/repo"
        )
    return value


def check_webhook_url(url: str) -> str:
    """Accept an ``http://`` or ``https://`` URL with a host and no whitespace."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("a webhook URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return url


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def redact_webhook(url: str) -> str:
    """A webhook URL without its secret part (the path and query), for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unparsable URL)"
    if not (parts.path.strip("/") or parts.query or "@" in parts.netloc):
        return url
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}/..."
