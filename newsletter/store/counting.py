"""Per-issue delivery counts kept by triggers on the ledger, sends per second, and their reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from newsletter.models import DELIVERY_STATUSES
from newsletter.store import schema as s

# Every INSERT into `deliveries`, and every UPDATE that changes a row's status (or issue),
# moves the counts in `delivery_counts` in the same statement's transaction: a count can
# never disagree with the rows it counts, whichever code (or operator) wrote them. DELETE
# moves nothing: the counts stay the record of an issue once retention removed its rows.
#
# SQLite runs one writer at a time: row triggers, one counts row per issue (shard 0).
# PostgreSQL: statement triggers over the statement's transition tables, so an enqueue of a
# million rows or a cancel is one aggregate, not a million updates of one row; and each
# session writes its own shard (its backend pid modulo SHARDS), so workers settling the
# same issue at once do not wait on each other's counts row. The counts row is written at
# the end of a statement, after every ledger row it changed is locked: a transaction that
# holds a counts row never waits for a ledger row afterwards in the ledger's statements
# (claims skip locked rows; settle is one statement), so counting adds no deadlock.
SHARDS = 16
# Seconds of sends kept, one slot per second (the second modulo this, holding the latest
# second written to it): the send rate needs the last minute.
SEND_SLOTS = 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The statuses as migration 8 counted them (the table's columns); a later step that adds a
# status adds a column and replaces the triggers.
_V8 = ("queued", "sending", "sent", "deferred", "failed", "skipped")
_COLS = ", ".join(_V8)


def _sqlite_upsert(issue: str, values: Sequence[str]) -> str:
    adds = ", ".join(f"{c} = {c} + excluded.{c}" for c in _V8)
    return (f"INSERT INTO delivery_counts (issue_id, shard, {_COLS}) "  # noqa: S608 - constants
            f"VALUES ({issue}, 0, {', '.join(values)}) "
            f"ON CONFLICT (issue_id, shard) DO UPDATE SET {adds};")


SQLITE_V8 = (
    "CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries BEGIN "
    + _sqlite_upsert("NEW.issue_id", [f"NEW.status = '{c}'" for c in _V8]) + " END",
    "CREATE TRIGGER deliveries_counted_update AFTER UPDATE OF status ON deliveries "
    "WHEN OLD.status IS NOT NEW.status AND OLD.issue_id = NEW.issue_id BEGIN "
    + _sqlite_upsert("NEW.issue_id", [f"(NEW.status = '{c}') - (OLD.status = '{c}')"
                                      for c in _V8]) + " END",
    "CREATE TRIGGER deliveries_counted_move AFTER UPDATE OF issue_id ON deliveries "
    "WHEN OLD.issue_id IS NOT NEW.issue_id BEGIN "
    + _sqlite_upsert("OLD.issue_id", [f"-(OLD.status = '{c}')" for c in _V8]) + " "
    + _sqlite_upsert("NEW.issue_id", [f"NEW.status = '{c}'" for c in _V8]) + " END",
)

# PostgreSQL: this session's shard. mod() rather than %: psycopg reads % as a marker.
PG_SHARD = f"mod(pg_backend_pid(), {SHARDS})"


def _pg_counts(moved: str) -> str:
    """Add `moved` — rows of (issue_id, status, n) — to this session's shard of each issue,
    issues in ascending order (two statements lock shared rows in one order)."""
    sums = ", ".join(f"coalesce(sum(n) FILTER (WHERE status = '{c}'), 0)::int" for c in _V8)
    adds = ", ".join(f"{c} = c.{c} + excluded.{c}" for c in _V8)
    return (f"INSERT INTO delivery_counts AS c (issue_id, shard, {_COLS}) "  # noqa: S608
            f"SELECT issue_id, {PG_SHARD}, {sums} FROM ({moved}) AS moved "
            f"GROUP BY issue_id ORDER BY issue_id "
            f"ON CONFLICT (issue_id, shard) DO UPDATE SET {adds};")


def _pg_function(name: str, body: str) -> str:
    # search_path pinned as it was when migrating: the tables of this schema, whoever writes.
    return (f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
            f"SET search_path FROM CURRENT AS $$ BEGIN {body} RETURN NULL; END $$")


POSTGRESQL_V8 = (
    _pg_function("deliveries_counted_insert", _pg_counts(
        "SELECT issue_id, status, count(*) AS n FROM added GROUP BY issue_id, status")),
    _pg_function("deliveries_counted_update", _pg_counts(
        "SELECT issue_id, status, sum(d) AS n FROM ("
        "SELECT issue_id, status, 1 AS d FROM after_rows "
        "UNION ALL SELECT issue_id, status, -1 FROM before_rows) AS each_row "
        "GROUP BY issue_id, status HAVING sum(d) <> 0")),
    "CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries "
    "REFERENCING NEW TABLE AS added FOR EACH STATEMENT "
    "EXECUTE FUNCTION deliveries_counted_insert()",
    # No column list: PostgreSQL allows none with transition tables. An UPDATE that moves no
    # status (a lease renewal) nets to nothing and writes nothing.
    "CREATE TRIGGER deliveries_counted_update AFTER UPDATE ON deliveries "
    "REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION deliveries_counted_update()",
)


# Messages that became sent, per second: settle adds its batch's (in its transaction, in
# the statement that records them on PostgreSQL; only settle makes a row sent) to the slot
# of that second. A slot holding an older second starts over; one holding a newer second (a
# clock behind) is left as it is.
def sends_upsert(dialect: str, source: str) -> str:
    """INSERT INTO delivery_sends (slot, shard, second, n) `source` — a VALUES list or a
    SELECT, its shard left out (this session's) — adding to what the slot holds."""
    if dialect == "postgresql":
        return (f"INSERT INTO delivery_sends AS t (slot, shard, second, n) {source} "
                f"ON CONFLICT (slot, shard) DO UPDATE SET "
                f"n = CASE WHEN t.second = excluded.second THEN t.n + excluded.n "
                f"WHEN t.second < excluded.second THEN excluded.n ELSE t.n END, "
                f"second = greatest(t.second, excluded.second)")
    return (f"INSERT INTO delivery_sends (slot, shard, second, n) {source} "
            f"ON CONFLICT (slot, shard) DO UPDATE SET "
            f"n = CASE WHEN second = excluded.second THEN n + excluded.n "
            f"WHEN second < excluded.second THEN excluded.n ELSE n END, "
            f"second = max(second, excluded.second)")


def sends_row(when: datetime, n: int) -> tuple[int, int, int]:
    """(slot, second, n): `n` messages became sent at `when`."""
    second = second_of(when)
    return second % SEND_SLOTS, second, n


def _second_sql(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"floor(extract(epoch FROM {column}))::bigint"
    return f"CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER)"


def install_v8(conn: Connection, now: datetime) -> None:
    """Create the triggers, then count the rows already there (the triggers first: on
    PostgreSQL creating them locks out writers until this transaction ends, so no change
    is missed or counted twice; on SQLite the migration holds the write lock)."""
    dialect = conn.dialect.name
    for statement in POSTGRESQL_V8 if dialect == "postgresql" else SQLITE_V8:
        conn.exec_driver_sql(statement)
    d = s.deliveries.c
    conn.execute(s.delivery_counts.insert().from_select(
        ["issue_id", "shard", *_V8],
        sa.select(d.issue_id, sa.literal(0),
                  *(sa.func.sum(sa.case((d.status == c, 1), else_=0)) for c in _V8))
        .group_by(d.issue_id)))
    second = sa.literal_column(_second_sql(dialect, "sent_at"), sa.BigInteger)
    recent = conn.execute(
        sa.select(second, sa.func.count()).select_from(s.deliveries)
        .where(d.status == "sent", d.sent_at > now - timedelta(seconds=SEND_SLOTS))
        .group_by(second)).all()
    slots: dict[int, tuple[int, int]] = {}
    for sec, n in sorted(recent):  # the newest second wins its slot
        slots[int(sec) % SEND_SLOTS] = (int(sec), int(n))
    if slots:
        conn.execute(s.delivery_sends.insert(), [
            {"slot": slot, "shard": 0, "second": sec, "n": n}
            for slot, (sec, n) in slots.items()])


def second_of(when: datetime) -> int:
    """Whole seconds since the epoch, rounded down, exactly (no float)."""
    return (when - _EPOCH) // timedelta(seconds=1)


def counts_by_issue(conn: Connection, issue_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """{issue id: {status: rows}}, every status present: at most SHARDS rows per issue."""
    out = {i: dict.fromkeys(DELIVERY_STATUSES, 0) for i in issue_ids}
    if not out:
        return out
    c = s.delivery_counts.c
    q = (sa.select(c.issue_id, *(sa.func.sum(c[x]) for x in DELIVERY_STATUSES))
         .where(c.issue_id.in_(list(out))).group_by(c.issue_id))
    for issue_id, *sums in conn.execute(q):
        out[int(issue_id)] = {x: int(n) for x, n in zip(DELIVERY_STATUSES, sums, strict=True)}
    return out


def totals(conn: Connection) -> dict[str, int]:
    """Rows by status over every issue: the counts table, a few rows per issue."""
    c = s.delivery_counts.c
    row = conn.execute(sa.select(*(sa.func.coalesce(sa.func.sum(c[x]), 0)
                                   for x in DELIVERY_STATUSES))).one()
    return {x: int(n) for x, n in zip(DELIVERY_STATUSES, row, strict=True)}


def sent_between(conn: Connection, start: datetime, end: datetime) -> int | None:
    """Sends whose second is after `start`'s and up to `end`'s, from the ring: the slots of
    those seconds, by primary key. None when the ring no longer holds the whole window (it
    reaches further back than SEND_SLOTS seconds before the newest send)."""
    lo, hi = second_of(start) + 1, second_of(end)
    if hi < lo:
        return 0
    if hi - lo >= SEND_SLOTS:
        return None
    t = s.delivery_sends.c
    first, last = lo % SEND_SLOTS, hi % SEND_SLOTS
    slots = (t.slot.between(first, last) if first <= last
             else sa.or_(t.slot >= first, t.slot <= last))
    sent, newest = conn.execute(
        sa.select(sa.func.sum(sa.case((t.second.between(lo, hi), t.n), else_=0)),
                  sa.func.max(t.second)).where(slots)).one()
    if newest is not None and newest > hi:
        return None  # a slot of the window was written again, a ring's turn later
    return int(sent or 0)
