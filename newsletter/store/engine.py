"""Opening a database: one engine per URL, SQLite tuned for one writer and many readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.store import urls as dburl


def make_engine(url: str) -> Engine:
    """An engine with SQLite tuned for one writer and many readers (WAL, busy timeout) and
    with real transactions, DDL included."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite begins transactions only before INSERT/UPDATE/DELETE, so DDL and reads
            # ran outside them (a failed migration step stayed half-applied); the "begin"
            # event below issues BEGIN itself. SQLAlchemy's recipe for pysqlite.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # Deferred by default, so readers never wait for the writer. A transaction that
            # reads and then writes asks for the write lock first (sqlite_immediate): a
            # read transaction that must become a writer fails at once, without busy wait,
            # when another connection wrote meanwhile.
            options = conn.get_execution_options()
            if options.get("isolation_level") == "AUTOCOMMIT":
                return  # e.g. for VACUUM, which refuses to run in a transaction
            # Straight to the driver: exec_driver_sql runs SQLAlchemy's whole execution path,
            # ~0.1 ms, on every transaction (the delivery ledger commits hundreds a second).
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("BEGIN IMMEDIATE" if options.get("sqlite_immediate") else "BEGIN")
    return engine


def open_engine(url: str) -> Engine:
    """make_engine for an operator's URL: every way it can be wrong is a DatabaseError."""
    dburl.parse(url)
    try:
        return make_engine(url)
    except ImportError as exc:  # the driver library (psycopg) is not installed
        raise dburl.DatabaseError(f"database {dburl.mask(url)}: cannot load its driver: "
                                  f"{exc}") from None
    except (OSError, sa.exc.ArgumentError) as exc:  # e.g. the SQLite folder is not writable
        raise dburl.connect_error(url, exc) from None


def connect(engine: Engine, url: str) -> sa.Connection:
    """A connection, or DatabaseError with the driver's reason (refused, no such database)."""
    try:
        return engine.connect()
    except sa.exc.DBAPIError as exc:
        raise dburl.connect_error(url, exc) from None
