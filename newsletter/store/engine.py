"""Opening a database: one engine per URL, SQLite tuned for one writer, outages told apart."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.store import urls as dburl

# Seconds to establish a PostgreSQL connection (unless the URL sets connect_timeout).
CONNECT_TIMEOUT = 10
# SQLSTATEs of a server going away or not there yet (admin shutdown — pg_terminate_backend —,
# crash shutdown, cannot connect now) besides class 08, connection exception.
_GONE = frozenset({"57P01", "57P02", "57P03"})
# Bytes an SQLite WAL is cut back to once checkpointed (sending keeps it near 4 MB).
WAL_SIZE_LIMIT = 64 * 1024 * 1024


def make_engine(url: str) -> Engine:
    """An engine with SQLite tuned for one writer and many readers (WAL, busy timeout) and
    with real transactions, DDL included."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, future=True, **_network_options(url))
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite begins transactions only before INSERT/UPDATE/DELETE, so DDL and reads
            # ran outside them (a failed migration step stayed half-applied); the "begin"
            # event below issues BEGIN itself. SQLAlchemy's recipe for pysqlite.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            # Before anything is written: a new database can then give pruned pages back
            # to the file system (store/retention.py); an existing one needs one VACUUM
            # (`newsletter db prune --vacuum`) and is otherwise unchanged by this.
            cur.execute("PRAGMA auto_vacuum=INCREMENTAL")
            cur.execute("PRAGMA journal_mode=WAL")
            # The WAL is reused, not shrunk, after a checkpoint: one large prune or VACUUM
            # would leave it at its peak size for good.
            cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
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
    else:
        @sa.event.listens_for(engine, "handle_error")
        def _lost(ctx: sa.engine.ExceptionContext) -> None:
            # A statement cut off by the server going away can fail with an error psycopg's
            # dialect does not take for a disconnect ("cannot exit pipeline mode while
            # busy"): its connection is then rolled back and pooled again, which fails and
            # is logged with a traceback. Such a connection is dropped instead.
            if not ctx.is_disconnect and _gone(ctx.original_exception):
                ctx.is_disconnect = True
    return engine


class _OneLine(logging.Filter):
    """A connection lost under them, psycopg warns in libpq's several lines and the pool
    logs a failed reset with its traceback; an operator's log has one line per event."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text}: {record.exc_info[1]}"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = " ".join(text.split()), None
        return True


def _one_line_logs(*names: str) -> None:
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in logger.filters):
            logger.addFilter(_OneLine())


def _network_options(url: str) -> dict[str, Any]:
    """For a database across a network (PostgreSQL): outages are survived, not waited on."""
    if not url.startswith("postgresql"):
        return {}  # SQLite has no connection to lose
    _one_line_logs("psycopg", "sqlalchemy.pool.impl.QueuePool")
    # A pooled connection whose session ended (a restart, a failover, pg_terminate_backend,
    # an idle timeout) is found at checkout and replaced, for one round trip, instead of
    # failing the next statement that happens to draw it.
    options: dict[str, Any] = {"pool_pre_ping": True}
    if "connect_timeout" not in sa.engine.make_url(url).query:
        # libpq waits for the kernel's TCP timeout (about two minutes) on a host that
        # drops packets: a worker retrying, `status` and the health check answer sooner.
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    return options


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


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` is the database out of reach — refused, restarting, a connection cut —
    so the same call on a new connection may succeed once it is back. Never true for a
    statement the database refused (a constraint, a deadlock, bad SQL) or for a bug."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    # connection_invalidated: the dialect (or _lost above) saw the connection closed or broken
    return exc.connection_invalidated or _gone(exc.orig)


def _gone(orig: BaseException | None) -> bool:
    """A driver error that says the server is not there (psycopg's; sqlite3 has none)."""
    state = getattr(orig, "sqlstate", False)  # psycopg's errors have one; sqlite3's do not
    if state is None:  # libpq's own failures: refused, reset, timed out, no such host
        psycopg = sys.modules.get("psycopg")  # loaded, since it raised this
        return psycopg is not None and isinstance(orig, psycopg.OperationalError)
    return isinstance(state, str) and (state.startswith("08") or state in _GONE)


def outage_error(exc: BaseException, url: str = "") -> dburl.DatabaseError:
    """One line for an operator: which database, and the driver's reason, password masked."""
    if url:
        return dburl.connect_error(url, exc, doing="unreachable")
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
    reason = reason.removeprefix("connection failed: ")  # as connect_error says it
    return dburl.DatabaseError(f"database unreachable: {reason}")


def ping(engine: Engine) -> None:
    """One `SELECT 1`, raising what the driver raised when the database cannot answer."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
