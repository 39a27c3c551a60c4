"""One of each web mechanism: the signer, the client address, the limiter, the template loader."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from webserver import running

from newsletter import pipeline
from newsletter.audience import tokens
from newsletter.config import Settings
from newsletter.templating import DEFAULT_TEMPLATES
from newsletter.web.admin import (
    CSRF_PURPOSE,
    FLASH_COOKIE,
    FLASH_PURPOSE,
    SESSION_COOKIE,
    SESSION_PURPOSE,
    Sessions,
)
from newsletter.web.requests import ClientAddress
from tests.helpers.admin import TOKEN, WRONG, Admin, admin_app, admin_settings, login, serve


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Admin]:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        with serve(settings, store, tmp_path, auth_failures_per_minute=2) as admin:
            yield admin
    finally:
        store.close()


# -- one signer ---------------------------------------------------------------------------


def test_a_subscriber_link_mailed_before_the_change_still_verifies() -> None:
    # Signed by the code as it was before the dashboard shared it: links in sent mail.
    old = "dW5zdWJzY3JpYmUKNDIKMTc5MzUzNDQwMBTnYaxVRJs_2FG9ybBpFCJiVTSxowSoayc26CdH4ReT"
    at = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert tokens.verify(b"an-old-secret-0123456789abcdef!!", old, "unsubscribe",
                         timedelta(days=400), at + timedelta(days=30),
                         extra="reader@example.org") == "42"


def test_each_kind_of_signed_value_is_refused_as_every_other(site: Admin) -> None:
    sessions = Sessions(site.deps)
    with login(site) as client:
        cookie = client.cookies[SESSION_COOKIE]
        nonce = sessions.nonce_of(cookie)
        assert nonce is not None
        csrf = sessions.csrf(nonce, "build")
        flash = sessions.flash(True, "hello")
        now = datetime.now(UTC)
        # The same key, subject and binding under every purpose the service signs.
        assert {SESSION_PURPOSE, CSRF_PURPOSE, FLASH_PURPOSE} <= set(tokens.PURPOSES)
        others = {p: tokens.sign(sessions.key, p, nonce, now) for p in tokens.PURPOSES}
        for purpose in tokens.PURPOSES:
            bound = tokens.sign(sessions.key, purpose, nonce, now, extra="build")
            assert (sessions.nonce_of(others[purpose]) is not None) == \
                (purpose == SESSION_PURPOSE), purpose
            assert sessions.csrf_ok(nonce, "build", bound) == (purpose == CSRF_PURPOSE), purpose

        # Over HTTP: a CSRF token or a flash message is no session cookie...
        for value in (csrf, flash, others["unsubscribe"]):
            with httpx.Client(base_url=site.base, cookies={SESSION_COOKIE: value}) as forged:
                assert forged.get("/admin/").headers["location"] == "/admin/login"
        # ...the session cookie or a flash message is no CSRF token...
        for value in (cookie, flash, others["preferences-form"]):
            r = client.post("/admin/build", data={"csrf": value})
            assert r.status_code == 403 and "not sent from the dashboard" in r.text
        assert site.store.list_issues() == []
        # ...and neither is a flash message the dashboard would show.
        client.cookies.set(FLASH_COOKIE, csrf, path="/admin")
        assert 'class="flash' not in client.get("/admin/").text
        client.cookies.set(FLASH_COOKIE, flash, path="/admin")
        assert 'class="flash ok" role="status">hello<' in client.get("/admin/").text
        # The right kind in the right place still works.
        r = client.post("/admin/build", data={"csrf": csrf})
        assert r.status_code == 303 and 'class="flash' in client.get("/admin/").text


def test_a_new_admin_token_ends_every_session(site: Admin) -> None:
    with login(site) as client:
        cookie = client.cookies[SESSION_COOKIE]
    other = Sessions(replace(site.deps, token=TOKEN + "-rotated"))
    assert Sessions(site.deps).nonce_of(cookie) is not None and other.nonce_of(cookie) is None


# -- one client address, one limiter ----------------------------------------------------------


def request(peer: str, forwarded: str | None = None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "client": (peer, 40000), "query_string": b""})


def test_client_address_believes_only_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    default = ClientAddress.from_setting([])  # uvicorn's default: loopback
    assert default(request("127.0.0.1", "198.51.100.1, 203.0.113.9")) == "203.0.113.9"
    assert default(request("::1", "2001:db8::5")) == "2001:db8::5"
    assert default(request("192.0.2.1", "203.0.113.9")) == "192.0.2.1"
    assert default(request("127.0.0.1")) == "127.0.0.1"
    assert default(request("127.0.0.1", " , ")) == "127.0.0.1"

    proxies = ClientAddress.from_setting(["10.0.0.0/8"])
    # The nearest hop no trusted proxy added; what the visitor wrote before it is ignored.
    assert proxies(request("10.1.2.3", "1.1.1.1, 203.0.113.9, 10.9.9.9")) == "203.0.113.9"
    assert proxies(request("10.1.2.3", "10.0.0.7, 10.9.9.9")) == "10.0.0.7"
    assert proxies(request("127.0.0.1", "203.0.113.9")) == "127.0.0.1"  # loopback not listed
    assert ClientAddress.from_setting(["*"])(request("192.0.2.1", "203.0.113.9, 10.0.0.1")) \
        == "203.0.113.9"

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "192.0.2.0/24")
    assert ClientAddress.from_setting([])(request("192.0.2.1", "203.0.113.9")) == "203.0.113.9"
    assert ClientAddress.from_setting(["10.0.0.0/8"])(request("192.0.2.1", "203.0.113.9")) \
        == "192.0.2.1"


def test_wrong_tokens_are_limited_per_visitor_behind_a_trusted_proxy(site: Admin) -> None:
    # This loopback client is the trusted proxy (the default): each visitor has its own count.
    def attempt(visitor: str) -> int:
        return site.anon.get("/admin/api/status", headers={
            "authorization": f"Bearer {WRONG}", "x-forwarded-for": visitor}).status_code

    assert [attempt("203.0.113.1") for _ in range(3)] == [401, 401, 429]
    assert attempt("203.0.113.2") == 401
    # The dashboard's login counts in the same limiter, through the same address helper.
    login_page = site.anon.post("/admin/login", data={"token": WRONG},
                                headers={"x-forwarded-for": "203.0.113.1"})
    assert login_page.status_code == 429
    assert site.api.get("/admin/api/status", headers={
        "x-forwarded-for": "203.0.113.3"}).status_code == 200


def test_forwarded_for_from_an_untrusted_peer_is_ignored(site: Admin) -> None:
    # In process, so no server in front has read the header first: only the helper does.
    async def attempts(trusted: list[str]) -> list[int]:
        deps = replace(site.deps, client_ip=ClientAddress.from_setting(trusted))
        transport = httpx.ASGITransport(app=admin_app(site.settings, deps),
                                        client=("192.0.2.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
            return [(await c.get("/admin/api/status", headers={
                "authorization": f"Bearer {WRONG}", "x-forwarded-for": f"203.0.113.{n}"})
            ).status_code for n in range(3)]

    # Rotating the header helps nobody when the peer is not a listed proxy...
    assert asyncio.run(attempts(["10.0.0.0/8"])) == [401, 401, 429]
    # ...and is each visitor's own address when it is.
    assert asyncio.run(attempts(["192.0.2.0/24"])) == [401, 401, 401]


def test_one_body_cap_for_pages_and_api(site: Admin) -> None:
    big = "x" * (site.deps.max_body_bytes + 1)
    r = site.api.post("/admin/api/issues", content=big,
                      headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    with login(site) as client:
        r = client.post("/admin/build", data={"csrf": "x", "pad": big})
        assert r.status_code == 413 and "larger than" in r.text


# -- one template loader ----------------------------------------------------------------------


def test_templates_dir_overrides_admin_web_and_email_templates(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    for name, old, new in [("admin/login.html", "Paste the admin token", "Our own login"),
                           ("web/subscribe.html", "</form>", "</form><p>Our own form</p>"),
                           ("email/confirm.txt", "{{ confirm_url }}",
                            "Our own words: {{ confirm_url }}")]:
        original = (DEFAULT_TEMPLATES / name).read_text(encoding="utf-8")
        assert old in original, name
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(original.replace(old, new), encoding="utf-8")
    base = admin_settings(make_settings, tmp_path)
    settings = replace(base, newsletter=replace(base.newsletter, templates_dir=str(folder)))
    store = pipeline.open_store(settings)
    try:
        with running(pipeline.web_app(settings, store)) as url, \
                httpx.Client(base_url=url, timeout=30) as client:
            login_page = client.get("/admin/login")
            assert login_page.status_code == 200 and "Our own login" in login_page.text
            assert "Paste the admin token" not in login_page.text
            page = client.get("/subscribe")
            assert page.status_code == 200 and "Our own form" in page.text
            # The files not overridden still come from the shipped templates.
            assert "/admin/login" in login_page.text and 'name="email"' in page.text
            r = client.post("/subscribe", data={"email": "reader@example.org"})
            assert r.status_code == 202
        outbox = tmp_path / "outbox"
        deadline = time.monotonic() + 15
        while not list(outbox.glob("*.eml")):
            assert time.monotonic() < deadline, "no confirmation mail"
            time.sleep(0.05)  # polling interval inside a deadline
        mail = next(outbox.glob("*.eml")).read_bytes()
        assert b"Our own words" in mail
    finally:
        store.close()
