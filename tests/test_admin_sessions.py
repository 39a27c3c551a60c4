"""Dashboard sessions live in the database: logout, expiry and "log out everywhere" hold in
every process and after a restart; each login starts a new session."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from webserver import running

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline.webapp import web_app
from newsletter.store import migrations
from newsletter.store.database import Store
from newsletter.store.schema import admin_sessions, metadata
from newsletter.store.sessions import PRUNE_BATCH
from newsletter.web.admin import SESSION_COOKIE, Sessions
from tests.helpers.admin import TOKEN, admin_settings, csrf_of, login, serve
from tests.helpers.browser import ARGS, CHROMIUM, sync_api_or_skip

REFUSED = "not sent from the dashboard"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    return admin_settings(make_settings, tmp_path)


@contextmanager
def production_app(settings: Settings, url: str) -> Iterator[str]:
    """Another web process: its own Store (engine, pool) over the same database, wired by
    pipeline.webapp as `newsletter serve` wires it. Yields its base URL."""
    store = Store(url)
    try:
        with running(web_app(settings, store)) as base:
            yield base
    finally:
        store.close()


def dashboard(base: str, cookie: str) -> httpx.Response:
    return httpx.get(f"{base}/admin/", cookies={SESSION_COOKIE: cookie})


def logged_in(base: str, cookie: str) -> bool:
    r = dashboard(base, cookie)
    assert r.status_code in (200, 303), r.status_code
    return r.status_code == 200


def forged_build(base: str, cookie: str, csrf: str) -> httpx.Response:
    return httpx.post(f"{base}/admin/build", data={"csrf": csrf, "force": "1"},
                      cookies={SESSION_COOKIE: cookie})


def session_rows(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.select(admin_sessions)))


def test_logout_holds_in_another_process_and_after_a_restart(
        settings: Settings, db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    pipeline.collect(settings, store)  # so an accepted "build" would leave an issue behind
    try:
        with serve(settings, store, tmp_path) as first, production_app(settings, db_url) as other:
            with login(first) as client:
                cookie = client.cookies[SESSION_COOKIE]
                page = client.get("/admin/").text
                build, logout = csrf_of(page, "/admin/build"), csrf_of(page, "/admin/logout")
                # Behind one load balancer: the other process knows the session too.
                assert logged_in(other, cookie)
                r = client.post("/admin/logout", data={"csrf": logout})
                assert r.status_code == 303 and r.headers["location"] == "/admin/login"
            # The cookie and its CSRF token, replayed at the process that did not log out.
            assert not logged_in(other, cookie)
            r = forged_build(other, cookie, build)
            assert r.status_code == 403 and REFUSED in r.text
            assert httpx.get(f"{other}/admin/progress.json",
                             cookies={SESSION_COOKIE: cookie}).status_code == 401
        # A restart: new processes, nothing in memory, the same database.
        with production_app(settings, db_url) as restarted:
            assert not logged_in(restarted, cookie)
            r = forged_build(restarted, cookie, build)
            assert r.status_code == 403 and REFUSED in r.text
        assert store.list_issues() == []
        # The signature alone still verifies: only the database refuses it.
        assert Sessions(first.deps).secret_of(cookie) is not None
    finally:
        store.close()


def test_the_database_keeps_a_hash_of_the_session_never_the_cookie(
        settings: Settings, tmp_path: Path) -> None:
    store = pipeline.open_store(settings)
    try:
        with serve(settings, store, tmp_path) as site, httpx.Client(
                base_url=site.base, headers={"user-agent": "test-browser/1.0"}) as client:
            assert client.post("/admin/login", data={"token": TOKEN}).status_code == 303
            cookie = client.cookies[SESSION_COOKIE]
            secret = Sessions(site.deps).secret_of(cookie)
            assert secret is not None
            [row] = session_rows(store)
            assert row.id == hashlib.sha256(secret.encode()).hexdigest()
            assert row.ip == "127.0.0.1" and row.user_agent == "test-browser/1.0"
            assert row.revoked_at is None
            assert row.expires_at - row.created_at == timedelta(hours=site.deps.session_hours)
            stored = " ".join(str(v) for v in row)
            assert cookie not in stored and secret not in stored
    finally:
        store.close()


def test_log_out_everywhere_ends_every_browser(settings: Settings, db_url: str,
                                               tmp_path: Path) -> None:
    store = Store(db_url)
    pipeline.collect(settings, store)
    try:
        with serve(settings, store, tmp_path) as site, production_app(settings, db_url) as other, \
                login(site) as laptop, login(site) as phone:
            page = laptop.get("/admin/").text
            assert "2 dashboard sessions signed in" in page
            everywhere = csrf_of(page, "/admin/logout-everywhere")
            phone_build = csrf_of(phone.get("/admin/").text, "/admin/build")
            cookies = [laptop.cookies[SESSION_COOKIE], phone.cookies[SESSION_COOKIE]]
            # Forged (no token, or another session's): refused, and nobody is logged out.
            for forged in ({}, {"csrf": csrf_of(phone.get("/admin/").text,
                                                "/admin/logout-everywhere")}):
                r = laptop.post("/admin/logout-everywhere", data=forged)
                assert r.status_code == 403 and REFUSED in r.text
            assert all(logged_in(base, c) for base in (site.base, other) for c in cookies)

            r = laptop.post("/admin/logout-everywhere", data={"csrf": everywhere})
            assert r.status_code == 303 and r.headers["location"] == "/admin/login"
            assert SESSION_COOKIE not in laptop.cookies
            for base in (site.base, other):
                assert not any(logged_in(base, c) for c in cookies)
                r = forged_build(base, cookies[1], phone_build)
                assert r.status_code == 403 and REFUSED in r.text
            assert store.list_issues() == []
            # Logging in again works, and is the only live session.
            with login(site) as again:
                assert "1 dashboard session signed in" in again.get("/admin/").text
    finally:
        store.close()


def test_each_login_starts_a_new_session(settings: Settings, tmp_path: Path) -> None:
    store = pipeline.open_store(settings)
    try:
        with serve(settings, store, tmp_path) as site:
            # A cookie planted before login (made up, or a session that has ended) is
            # replaced, never elevated.
            with login(site) as client:
                ended = client.cookies[SESSION_COOKIE]
                client.post("/admin/logout", data={"csrf": csrf_of(
                    client.get("/admin/").text, "/admin/logout")})
            for planted in ("made-up-by-someone-else", ended):
                with httpx.Client(base_url=site.base) as browser:
                    browser.cookies.set(SESSION_COOKIE, planted, domain="127.0.0.1", path="/admin")
                    r = browser.post("/admin/login", data={"token": TOKEN})
                    assert r.status_code == 303 and planted in r.request.headers["cookie"]
                    got = browser.cookies[SESSION_COOKIE]
                    assert got != planted and logged_in(site.base, got)
                    assert not logged_in(site.base, planted)
            # Logging in again from a logged-in browser: a new session, the old one ended.
            with login(site) as client:
                before = client.cookies[SESSION_COOKIE]
                assert client.post("/admin/login", data={"token": TOKEN}).status_code == 303
                after = client.cookies[SESSION_COOKIE]
                assert after != before
                assert logged_in(site.base, after) and not logged_in(site.base, before)
                live = Sessions(site.deps)
            # A new admin token ends every session, stored or not.
            with serve(settings, store, tmp_path, token=TOKEN + "-rotated") as rotated:
                assert not logged_in(rotated.base, after)
            assert live.nonce_of(after) is not None
    finally:
        store.close()


def test_an_expired_session_is_refused_and_pruned(settings: Settings, db_url: str,
                                                  tmp_path: Path) -> None:
    store = Store(db_url)
    now = datetime.now(UTC)
    try:
        # A backlog of sessions that expired long ago.
        for n in range(PRUNE_BATCH + 50):
            past = now - timedelta(days=30, minutes=n)
            store.create_session(f"old-{n}", now=past, expires_at=past + timedelta(hours=1))
        with serve(settings, store, tmp_path) as site:
            with login(site) as client:
                cookie = client.cookies[SESSION_COOKIE]
            # One login prunes one batch, oldest first, and no more.
            assert len(session_rows(store)) == 50 + 1
            assert logged_in(site.base, cookie)
            # The server-side expiry passes while the signed cookie is still within its age.
            with store.engine.begin() as conn:
                conn.execute(admin_sessions.update().values(expires_at=now - timedelta(
                    seconds=1)).where(admin_sessions.c.id.not_like("old-%")))
            assert Sessions(site.deps).secret_of(cookie) is not None
            assert not logged_in(site.base, cookie)
            with login(site):
                pass
            # The rest of the backlog and the expired session are gone; the new one stays.
            rows = session_rows(store)
            assert len(rows) == 1 and rows[0].expires_at > now
    finally:
        store.close()


def test_the_sessions_table_arrives_by_migration(settings: Settings, db_url: str,
                                                 tmp_path: Path) -> None:
    before = 5  # the version before dashboard sessions were stored
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert migrations.migrate(conn, target=before)[-1] == before
            assert not sa.inspect(conn).has_table("admin_sessions")
    finally:
        engine.dispose()
    store = Store(db_url)  # as a process of the new version starts over the old database
    try:
        with store.engine.connect() as conn:
            assert migrations.current_version(conn) == migrations.MIGRATIONS[-1][0]
            assert sa.inspect(conn).has_table("admin_sessions")
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        with serve(settings, store, tmp_path) as site, login(site) as client:
            assert client.get("/admin/").status_code == 200
            assert len(session_rows(store)) == 1
    finally:
        store.close()


@pytest.mark.browser
def test_log_out_everywhere_in_chromium(settings: Settings, tmp_path: Path) -> None:
    """Two browsers on the dashboard; one ends every session; the other, left open, finds
    itself logged out on its own (its progress poll is refused) and stays so on reload."""
    sync_api = sync_api_or_skip()
    store = pipeline.open_store(settings)
    try:
        with serve(settings, store, tmp_path) as site, sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                pages = []
                for _ in range(2):  # two contexts: two browsers with their own cookies
                    page = browser.new_context().new_page()
                    page.goto(f"{site.base}/admin/login")
                    page.get_by_label("Admin token").fill(TOKEN)
                    page.get_by_role("button", name="Log in").click()
                    page.wait_for_url(f"{site.base}/admin/")
                    pages.append(page)
                left_open, acting = pages
                acting.reload()
                acting.get_by_text("2 dashboard sessions signed in").wait_for()
                acting.on("dialog", lambda d: d.accept())  # "End every dashboard session…?"
                acting.get_by_role("button", name="End every session").click()
                acting.wait_for_url(f"{site.base}/admin/login")
                # Playwright's wait has a deadline (15 s); the page polls once a second.
                left_open.wait_for_url(f"{site.base}/admin/login", timeout=15_000)
                left_open.goto(f"{site.base}/admin/")
                assert left_open.url == f"{site.base}/admin/login"
            finally:
                browser.close()
    finally:
        store.close()
