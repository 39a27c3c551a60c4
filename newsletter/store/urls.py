"""Database URLs: checked before use, and driver failures turned into one masked line."""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from newsletter.errors import DatabaseError

__all__ = ["DatabaseError", "check", "connect_error", "mask", "parse"]

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# dialect → (driver used when the URL names none, {driver: module that must be importable})
SUPPORTED = {
    "sqlite": ("pysqlite", {"pysqlite": "sqlite3"}),
    "postgresql": ("psycopg2", {"psycopg": "psycopg"}),
}
EXAMPLES = "sqlite:///path/to/file.db or postgresql+psycopg://user:password@host:5432/dbname"
_PASSWORD_RE = re.compile(r"(://[^/?#@:\s]*:)[^/?#@\s]*@")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def mask(url: str) -> str:
    """The URL with any password replaced by ***, safe to print and log."""
    return _PASSWORD_RE.sub(r"\1***@", url)


def parse(url: str, where: str = "storage.database_url") -> URL:
    """The URL parsed by SQLAlchemy, or DatabaseError naming what is wrong with its form."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = mask(url)
    scheme = _SCHEME_RE.match(url)
    if scheme is None:
        raise DatabaseError(f"{where}: expected a database URL such as {EXAMPLES}, "
                            f"got {shown!r}")
    name = scheme.group(1).lower()
    if name == "postgres":  # Heroku-style; SQLAlchemy dropped this alias in 1.4
        raise DatabaseError(f"{where}: {shown!r} uses the scheme postgres://, which SQLAlchemy "
                            f"does not accept: write postgresql+psycopg://…")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError(f"{where}: expected a database URL such as {EXAMPLES}, got "
                            f"{shown!r} ({mask(str(exc))})") from None
    dialect, _, driver = parsed.drivername.partition("+")
    if dialect not in SUPPORTED:
        raise DatabaseError(f"{where}: {shown!r}: the database {dialect!r} is not supported; "
                            f"supported are SQLite and PostgreSQL ({EXAMPLES})")
    default, drivers = SUPPORTED[dialect]
    driver = driver or default
    if driver not in drivers:
        need = next(f"{dialect}+{d}://" for d in drivers) if dialect != "sqlite" else "sqlite://"
        raise DatabaseError(f"{where}: {shown!r}: the driver {driver!r} is not supported for "
                            f"{dialect}: write {need}…")
    return parsed


def check(url: str, where: str = "storage.database_url") -> None:
    """Form and dialect as parse(), and the driver library importable (e.g. psycopg)."""
    parsed = parse(url, where)
    dialect, _, driver = parsed.drivername.partition("+")
    default, drivers = SUPPORTED[dialect]
    module = drivers[driver or default]
    try:  # imported, not just found: psycopg without a libpq of its own fails only then
        importlib.import_module(module)
    except ImportError as exc:
        extra = "; install the project with its 'postgres' extra" if dialect == "postgresql" \
            else ""
        raise DatabaseError(f"{where}: {mask(url)!r} needs the Python package {module!r}, "
                            f"which is not installed or cannot be loaded ({exc}){extra}") from None


def connect_error(url: str, exc: BaseException, doing: str = "cannot open") -> DatabaseError:
    """One line for a failure to open or reach the database, the driver's reason kept."""
    orig = getattr(exc, "orig", None) or exc
    reason = " ".join(str(orig).split())  # psycopg's messages span lines
    reason = reason.removeprefix("connection failed: ")
    password = _url_password(url)
    if password:
        reason = reason.replace(password, "***")
    return DatabaseError(f"database {mask(url)}: {doing}: {reason or type(orig).__name__}")


def _url_password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # noqa: BLE001 - a URL that does not parse has no password to hide
        return None
