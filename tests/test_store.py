"""Store: migrations build the declared schema, keep data, take turns, and fail whole."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations

from newsletter.models import Article
from newsletter.store import migrations
from newsletter.store.database import Store, make_engine
from newsletter.store.rows import article_row
from newsletter.store.schema import articles, metadata, schema_version


def make_article(n: int, **kw: object) -> Article:
    base = dict(key=f"link:https://example.org/a/{n}/", title=f"Article {n}",
                link=f"https://example.org/a/{n}/",
                published=datetime(2026, 11, 1, 9, n % 60, tzinfo=timezone(timedelta(hours=2))),
                updated=datetime(2026, 11, 1, 9, n % 60, tzinfo=UTC),
                content_html="<p>x</p>", content_hash=f"h{n}", authors=("Ann", "Bo"),
                tags=("t1",), section="World")
    base.update(kw)
    return Article(**base)  # type: ignore[arg-type]


def test_migrations_from_empty_match_declared_schema(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        assert migrations.migrate(conn) == [v for v, _, _ in migrations.MIGRATIONS]
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == [], diff
        assert migrations.migrate(conn) == []  # idempotent
    engine.dispose()


def test_upgrade_from_the_previous_version_keeps_data(db_url: str) -> None:
    latest = migrations.MIGRATIONS[-1][0]
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        assert migrations.migrate(conn, target=latest - 1)[-1] == latest - 1
        now = datetime.now(UTC)
        row = {k: v for k, v in article_row(make_article(7), now).items()}
        conn.execute(articles.insert().values(row))
        conn.commit()
        assert migrations.migrate(conn) == [latest]
        assert migrations.current_version(conn) == latest
        kept = conn.execute(sa.select(articles.c.title)).scalars().all()
        assert kept == ["Article 7"]
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_reopen_keeps_data_and_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'n.db'}"
    store = Store(url)
    now = datetime.now(UTC)
    store.save_articles([make_article(1), make_article(2)], [], now)
    store.close()
    store = Store(url)
    got = store.latest_articles(10)
    assert [a.title for a in got] == ["Article 2", "Article 1"]
    assert got[0].authors == ("Ann", "Bo") and got[0].tags == ("t1",)
    # Stored as UTC and read back aware: the same instant, whatever zone it came in.
    assert got[0].published == make_article(2).published
    assert got[0].published.tzinfo is not None
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_naive_datetimes_are_refused(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'n.db'}")
    try:
        store.record_collect(datetime(2026, 1, 1), datetime.now(UTC), 0, 0, 0)
    except sa.exc.StatementError as exc:
        assert "naive datetime" in str(exc)
    else:
        raise AssertionError("naive datetime stored")
    finally:
        store.close()


def test_concurrent_first_starts_migrate_once(db_url: str) -> None:
    """Processes starting together on an empty database: all open it, each step once."""
    engines = [make_engine(db_url) for _ in range(6)]
    conns = [e.connect() for e in engines]  # connected beforehand, so they really race
    start = threading.Barrier(len(conns))
    results: list[list[int] | BaseException] = []

    def first_start(conn: sa.Connection) -> None:
        start.wait()
        try:
            results.append(migrations.migrate(conn))
        except BaseException as exc:  # reported below, with the others' results
            results.append(exc)

    threads = [threading.Thread(target=first_start, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for conn, engine in zip(conns, engines, strict=True):
        conn.close()
        engine.dispose()
    assert not [r for r in results if isinstance(r, BaseException)], results
    every = [v for v, _, _ in migrations.MIGRATIONS]
    assert sorted(v for r in results if isinstance(r, list) for v in r) == every
    store = Store(db_url)
    with store.engine.connect() as conn:
        assert migrations.current_version(conn) == every[-1]
        assert conn.execute(sa.select(sa.func.count()).select_from(schema_version)).scalar() \
            == len(every)
    store.close()


def test_a_failing_step_leaves_the_previous_version(db_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    Store(db_url).close()
    latest = migrations.MIGRATIONS[-1][0]
    engine = make_engine(db_url)
    with engine.connect() as conn:
        before = set(sa.inspect(conn).get_table_names())

    def half_done(op: Operations) -> None:
        op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
        op.add_column("articles", sa.Column("half_done", sa.Integer))
        raise RuntimeError("step failed halfway")

    monkeypatch.setattr(migrations, "MIGRATIONS",
                        [*migrations.MIGRATIONS, (latest + 1, "fails halfway", half_done)])
    with pytest.raises(RuntimeError, match="halfway"):
        Store(db_url)
    with engine.connect() as conn:
        assert migrations.current_version(conn) == latest
        assert set(sa.inspect(conn).get_table_names()) == before
        assert "half_done" not in {c["name"] for c in sa.inspect(conn).get_columns("articles")}
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()
    monkeypatch.undo()
    Store(db_url).close()  # and the next start, with the step fixed, is an ordinary one
