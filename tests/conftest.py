"""Shared fixtures: settings in a temp folder, a real SQLite file, a PostgreSQL schema."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter.config import Settings, load_settings

PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL", "")


@pytest.fixture(autouse=True)
def _newsletter_logger() -> Iterator[None]:
    """The CLI's log.setup() (run in-process by CliRunner tests) stops propagation to the
    root logger; restore it, or a later test's caplog sees none of our events."""
    logger = logging.getLogger("newsletter")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def make_pg_url() -> Iterator[Callable[[], str]]:
    """Fresh schemas in the test PostgreSQL database, each dropped afterwards."""
    if not PG_URL:
        pytest.skip("NEWSLETTER_TEST_DATABASE_URL is not set: PostgreSQL tests skipped")
    engine = sa.create_engine(PG_URL, pool_pre_ping=True)  # a chaos test may kill its session
    schemas: list[str] = []

    def make() -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        except sa.exc.OperationalError as exc:
            pytest.skip(f"PostgreSQL at NEWSLETTER_TEST_DATABASE_URL is not reachable: "
                        f"{str(exc).splitlines()[0]}")
        schemas.append(schema)
        sep = "&" if "?" in PG_URL else "?"
        return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"

    try:
        yield make
    finally:
        if schemas:  # none when the server was unreachable
            with engine.begin() as conn:
                for schema in schemas:
                    conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


@pytest.fixture
def pg_url(make_pg_url: Callable[[], str]) -> str:
    """A fresh schema in the test PostgreSQL database, dropped afterwards."""
    return make_pg_url()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on the embedded default and on the scale-out database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'n.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Write a config into tmp_path (articles/, feeds/, n.db) with extra TOML appended."""

    def make(extra: str = "", *, folder: bool = True, database_url: str = "") -> Settings:
        (tmp_path / "articles").mkdir(exist_ok=True)
        source = f'[[sources]]\ntype = "folder"\npath = "{tmp_path / "articles"}"\n'
        url = database_url or f"sqlite:///{tmp_path / 'n.db'}"
        # Beside an SQLite file the key is generated; other databases need one configured.
        secret = '[secrets]\nsecret_key = "test-secret-key-0123456789abcdef"\n'
        text = f"""
[publication]
name = "Test Ledger"
base_url = "https://ledger.example.org/"
postal_address = "1 Test Street"
[storage]
database_url = "{url}"
[feeds]
output_dir = "{tmp_path / 'feeds'}"
[site]
output_dir = "{tmp_path / 'site'}"
{secret if database_url else ""}
{source if folder else ""}
{extra}
"""
        path = tmp_path / "n.toml"
        path.write_text(text, encoding="utf-8")
        return load_settings(path, environ={})

    return make
