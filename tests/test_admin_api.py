"""The admin API and dashboard over real HTTP (uvicorn), on a real SQLite file, to an outbox."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline import sending
from newsletter.web.admin import FLASH_COOKIE, SESSION_COOKIE, Sessions
from newsletter.web.admin_api import admin_api_routes
from tests.helpers.admin import (
    TOKEN,
    WRONG,
    Admin,
    admin_app,
    admin_settings,
    csrf_of,
    login,
    serve,
)
from tests.helpers.sending import seed

# -- wiring: what pipeline.webapp does in production, with sending in a thread ----------


@pytest.fixture
def admin(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Admin]:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        # Many tests send wrong tokens on purpose; the limit has its own test.
        with serve(settings, store, tmp_path, auth_failures_per_minute=1000) as site:
            yield site
    finally:
        store.close()


ENDPOINTS = [
    ("POST", "/admin/api/collect"), ("GET", "/admin/api/issues"), ("POST", "/admin/api/issues"),
    ("GET", "/admin/api/issues/1"), ("POST", "/admin/api/issues/1/send"),
    ("POST", "/admin/api/issues/1/schedule"), ("POST", "/admin/api/issues/1/pause"),
    ("POST", "/admin/api/issues/1/resume"), ("POST", "/admin/api/issues/1/cancel"),
    ("GET", "/admin/api/status"), ("GET", "/admin/api/subscribers"),
    ("POST", "/admin/api/subscribers"), ("DELETE", "/admin/api/subscribers/reader0@example.org"),
    ("POST", "/admin/api/subscribers/import"), ("GET", "/admin/api/openapi.json"),
    ("GET", "/metrics"),
]


# -- authentication -----------------------------------------------------------------------


def test_every_endpoint_needs_the_bearer_token(admin: Admin) -> None:
    seed(admin.store, 2)
    for method, path in ENDPOINTS:
        for headers in ({}, {"authorization": f"Bearer {WRONG}"},
                        {"authorization": f"Basic {TOKEN}"}, {"authorization": "Bearer"},
                        {"authorization": f"bearer {TOKEN}x"}):
            r = admin.anon.request(method, path, headers=headers, json={"force": True})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"].startswith('Bearer realm="newsletter-admin"')
            assert r.json()["error"] and r.headers["cache-control"] == "no-store"
    # Nothing refused had an effect: no issue built, nobody removed, nothing collected.
    assert admin.store.list_issues() == [] and admin.store.last_collect() is None
    assert admin.store.count_subscribers()["active"] == 2
    for method, path in ENDPOINTS:
        r = admin.api.request(method, path)
        assert r.status_code not in (401, 403, 429), (method, path, r.text)
    # The scheme is case-insensitive (RFC 7235).
    assert admin.anon.get("/admin/api/status",
                          headers={"authorization": f"bearer {TOKEN}"}).status_code == 200


@pytest.mark.parametrize("token", ["", "too-short"])
def test_disabled_without_a_token(make_settings: Callable[..., Settings], tmp_path: Path,
                                  token: str) -> None:
    settings = admin_settings(make_settings, tmp_path, token=token)
    store = pipeline.open_store(settings)
    try:
        with serve(settings, store, tmp_path) as site:
            for method, path in [*ENDPOINTS, ("GET", "/admin/"), ("GET", "/admin/login"),
                                 ("POST", "/admin/login"), ("POST", "/admin/build"),
                                 ("GET", "/admin/progress.json"),
                                 ("GET", "/admin/issues/1/preview")]:
                for client in (site.api, site.anon):
                    r = client.request(method, path, headers={"authorization": "Bearer x"})
                    assert r.status_code == 403, (method, path)
                    assert "NEWSLETTER_SECRETS_ADMIN_TOKEN" in r.text
    finally:
        store.close()


def test_wrong_tokens_are_limited_per_address(make_settings: Callable[..., Settings],
                                              tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        with serve(settings, store, tmp_path, auth_failures_per_minute=3) as site:
            wrong = {"authorization": f"Bearer {WRONG}"}
            for _ in range(3):
                assert site.anon.get("/admin/api/status", headers=wrong).status_code == 401
            blocked = site.anon.get("/admin/api/status", headers=wrong)
            assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
            # While blocked even the right token is refused: a guess must not be confirmed.
            assert site.api.get("/admin/api/status").status_code == 429
            login = site.anon.post("/admin/login", data={"token": TOKEN})
            assert login.status_code == 429 and SESSION_COOKIE not in login.cookies
            # A missing token is not a guess and is not counted.
            assert site.anon.get("/admin/api/status").status_code == 429
    finally:
        store.close()


def test_the_token_is_never_logged(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin.anon.get("/admin/api/status", headers={"authorization": f"Bearer {WRONG}"})
    admin.api.post("/admin/api/issues", json={"force": True})
    admin.anon.post("/admin/login", data={"token": WRONG})
    admin.anon.post("/admin/login", data={"token": TOKEN})
    assert "admin.auth_refused" in caplog.text and "admin.login" in caplog.text
    assert TOKEN not in caplog.text and WRONG not in caplog.text
    assert TOKEN not in repr(admin.deps)


# -- issues ---------------------------------------------------------------------------------


def test_collect_build_send_to_everyone(admin: Admin) -> None:
    seed(admin.store, 12, inactive=2)
    r = admin.api.post("/admin/api/collect")
    assert r.status_code == 200 and r.json()["new"] == 1 and r.json()["errors"] == []
    assert (admin.settings.feeds_dir / "atom.xml").exists()  # published after collecting
    r = admin.api.post("/admin/api/issues", json={"force": False})
    assert r.status_code == 201, r.text
    built = r.json()
    assert built["created"] and built["issue"]["number"] == 1
    assert built["issue"]["status"] == "draft" and built["issue"]["total"] == 0
    again = admin.api.post("/admin/api/issues")  # no body: force defaults to false
    assert again.status_code == 200 and not again.json()["created"]
    assert "up to date" in again.json()["message"]
    listed = admin.api.get("/admin/api/issues").json()["issues"]
    assert [i["number"] for i in listed] == [1]
    detail = admin.api.get("/admin/api/issues/1").json()
    titles = {a["title"] for s in detail["sections"] for a in s["articles"]}
    assert "Harbour cranes return" in titles and detail["preview_url"] == "/admin/issues/1/preview"

    r = admin.api.post("/admin/api/issues/1/send")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "sending"
    done = admin.wait_until(lambda: (d := admin.api.get("/admin/api/issues/1").json())["status"]
                            == "sent" and d)
    assert done["total"] == 12 and done["done"] == 12 and done["counts"]["sent"] == 12
    assert len(list(admin.outbox.glob("*.eml"))) == 12
    # A sent issue cannot be paused, resumed or cancelled: 409 with the reason.
    for verb in ("pause", "resume", "cancel"):
        r = admin.api.post(f"/admin/api/issues/1/{verb}")
        assert r.status_code == 409 and f"issue 1 is sent: cannot {verb} it" in r.json()["error"]


def test_schedule_pause_resume_cancel(admin: Admin) -> None:
    seed(admin.store, 5)
    assert admin.api.post("/admin/api/issues", json={"force": True}).status_code == 201
    r = admin.api.post("/admin/api/issues/1/schedule", json={"at": "2030-01-01T09:00:00+01:00"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "scheduled"
    assert r.json()["send_at"] == "2030-01-01T08:00:00+00:00"
    for bad in ({"at": "2030-01-01T09:00:00"}, {"at": "next tuesday"}, {}, {"at": 5}):
        r = admin.api.post("/admin/api/issues/1/schedule", json=bad)
        assert r.status_code == 400 and r.json()["error"], bad
    assert admin.api.post("/admin/api/issues/1/pause").json()["status"] == "paused"
    r = admin.api.post("/admin/api/issues/1/pause")
    assert r.status_code == 409 and "cannot pause" in r.json()["error"]
    # Nothing was sent yet, so resuming returns it to its schedule.
    assert admin.api.post("/admin/api/issues/1/resume").json()["status"] == "scheduled"
    assert admin.api.post("/admin/api/issues/1/resume").status_code == 409
    assert admin.api.post("/admin/api/issues/1/cancel").json()["status"] == "cancelled"
    for verb in ("cancel", "pause", "resume", "send"):
        r = admin.api.post(f"/admin/api/issues/1/{verb}")
        assert r.status_code == 409 and "cancelled" in r.json()["error"], verb
    r = admin.api.post("/admin/api/issues/1/schedule", json={"at": "2030-01-01T09:00:00Z"})
    assert r.status_code == 409
    for path in ("/admin/api/issues/7", "/admin/api/issues/99999999999999999999"):
        assert admin.api.get(path).status_code == 404
    assert admin.api.post("/admin/api/issues/7/pause").json()["error"] == "issue 7: no such issue"


def test_pause_and_cancel_while_sending(admin: Admin) -> None:
    seed(admin.store, 6)
    issue = pipeline.build_issue(admin.settings, admin.store).issue
    assert issue is not None
    sending.start_sending(admin.settings, admin.store, issue)  # ledger filled, no worker
    assert admin.api.post("/admin/api/issues/1/pause").json()["status"] == "paused"
    assert admin.api.post("/admin/api/issues/1/resume").json()["status"] == "sending"
    cancelled = admin.api.post("/admin/api/issues/1/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["counts"]["skipped"] == 6
    assert cancelled["done"] == cancelled["total"] == 6


def test_status_has_overview_and_jobs(make_settings: Callable[..., Settings],
                                      tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    at = datetime(2030, 1, 1, 7, 0, tzinfo=UTC)
    try:
        with serve(settings, store, tmp_path,
                   jobs=lambda: [("collect", at), ("deliver-due", None)]) as site:
            seed(store, 3)
            site.api.post("/admin/api/collect")
            site.api.post("/admin/api/issues")
            status = site.api.get("/admin/api/status").json()
            assert status["articles"] == 3 and status["last_collect"]["new"] == 1
            assert status["jobs"] == [{"name": "collect", "next_run": at.isoformat()},
                                      {"name": "deliver-due", "next_run": None}]
            assert [i["number"] for i in status["issues"]] == [1]
            assert status["subscribers"]["active"] == 3
    finally:
        store.close()


# -- subscribers ------------------------------------------------------------------------------


def test_subscribers_add_list_remove(admin: Admin) -> None:
    r = admin.api.post("/admin/api/subscribers",
                       json={"email": "Nina@Example.org", "name": "Nina", "confirmed": True})
    assert r.status_code == 201, r.text
    assert r.json()["state"] == "new" and r.json()["subscriber"]["status"] == "active"
    again = admin.api.post("/admin/api/subscribers", json={"email": "nina@example.org"})
    assert again.status_code == 200 and again.json()["state"] == "active"
    pending = admin.api.post("/admin/api/subscribers", json={"email": "pat@example.org"})
    assert pending.status_code == 201 and pending.json()["subscriber"]["status"] == "pending"
    assert pending.json()["confirmation_sent"] is True  # the double opt-in mail, to the outbox
    mails = [p.read_text() for p in admin.outbox.glob("*.eml")]
    assert len(mails) == 1 and "pat@example.org" in mails[0]
    for bad in ({"email": "not an address"}, {"email": "x@example.org", "confirmed": "yes"},
                {"email": 7}, [1]):
        r = admin.api.post("/admin/api/subscribers", json=bad)
        assert r.status_code == 400 and r.json()["error"], bad
    r = admin.api.post("/admin/api/subscribers", content=b"{nope",
                       headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]

    page = admin.api.get("/admin/api/subscribers").json()
    assert [s["email"] for s in page["subscribers"]] == ["Nina@example.org", "pat@example.org"]
    assert page["counts"]["active"] == 1 and page["counts"]["pending"] == 1
    assert page["next_offset"] is None
    first = admin.api.get("/admin/api/subscribers", params={"limit": 1}).json()
    assert len(first["subscribers"]) == 1 and first["next_offset"] == 1
    second = admin.api.get("/admin/api/subscribers", params={"limit": 1, "offset": 1}).json()
    assert second["subscribers"][0]["email"] == "pat@example.org"
    active = admin.api.get("/admin/api/subscribers", params={"status": "active"}).json()
    assert [s["name"] for s in active["subscribers"]] == ["Nina"]
    for params in ({"status": "gone"}, {"limit": 0}, {"limit": "x"}, {"offset": -1}):
        assert admin.api.get("/admin/api/subscribers", params=params).status_code == 400

    r = admin.api.delete("/admin/api/subscribers/NINA%40example.org")
    assert r.status_code == 200 and r.json() == {"email": "Nina@example.org", "result": "deleted"}
    assert admin.api.delete("/admin/api/subscribers/nina@example.org").status_code == 404
    assert admin.api.delete("/admin/api/subscribers/nobody").status_code == 400


def test_subscribers_import(admin: Admin) -> None:
    csv = "email,name\nann@example.org,Ann\nnot-an-address,Bad\nbob@example.org,Bob\n"
    r = admin.api.post("/admin/api/subscribers/import", content=csv.encode(),
                       headers={"content-type": "text/csv; charset=utf-8"})
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["rows"], report["added"], report["invalid"]) == (3, 2, 1)
    assert report["errors"][0]["line"] == 3
    assert admin.store.count_subscribers()["active"] == 2
    r = admin.api.post("/admin/api/subscribers/import", content=b"name\nAnn\n",
                       headers={"content-type": "text/csv"})
    assert r.status_code == 400 and "no email column" in r.json()["error"]
    assert "newsletter-import-" not in r.json()["error"]  # no server paths in answers
    r = admin.api.post("/admin/api/subscribers/import", content=csv.encode(),
                       headers={"content-type": "application/json"})
    assert r.status_code == 415


# -- limits and the description -------------------------------------------------------------


def test_oversized_bodies_are_refused(make_settings: Callable[..., Settings],
                                      tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        with serve(settings, store, tmp_path, max_body_bytes=1024,
                   max_import_bytes=4096) as site:
            big = json.dumps({"email": "a@example.org", "name": "x" * 2000}).encode()
            r = site.api.post("/admin/api/subscribers", content=big,
                              headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]

            def chunks(data: bytes) -> Iterator[bytes]:  # no Content-Length: chunked
                for i in range(0, len(data), 512):
                    yield data[i:i + 512]

            r = site.api.post("/admin/api/issues", content=chunks(big))
            assert r.status_code == 413
            csv = b"email\n" + b"".join(b"r%d@example.org\n" % i for i in range(400))
            r = site.api.post("/admin/api/subscribers/import", content=csv,
                              headers={"content-type": "text/csv"})
            assert r.status_code == 413
            r = site.api.post("/admin/api/subscribers/import", content=chunks(csv),
                              headers={"content-type": "text/csv"})
            assert r.status_code == 413
            assert store.count_subscribers()["active"] == 0 and store.list_issues() == []
            # Unauthenticated, the size is never looked at: 401 first.
            assert site.anon.post("/admin/api/subscribers/import", content=csv,
                                  headers={"content-type": "text/csv"}).status_code == 401
            r = site.anon.post("/admin/login", content=b"token=" + b"x" * 2000,
                               headers={"content-type": "application/x-www-form-urlencoded"})
            assert r.status_code == 413
    finally:
        store.close()


def test_openapi_describes_every_route(admin: Admin) -> None:
    doc = admin.api.get("/admin/api/openapi.json").json()
    assert re.fullmatch(r"3\.1\.\d+", doc["openapi"])
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http",
                                                             "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}]
    registered = set()
    for route in admin_api_routes(admin.deps):
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)  # type: ignore[attr-defined]
        for method in route.methods - {"HEAD"}:  # type: ignore[attr-defined]
            registered.add((method.lower(), path))
            assert method.lower() in doc["paths"].get(path, {}), (method, path)
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert described == registered
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])
    for (method, path) in described:
        op = doc["paths"][path][method]
        assert "401" in op["responses"] and op["summary"]
        params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert params == set(re.findall(r"\{(\w+)\}", path)), path


# -- the dashboard over plain HTTP (the browser test drives it for real) --------------------


def test_dashboard_login_session_and_csrf(admin: Admin) -> None:
    seed(admin.store, 3)
    assert admin.anon.get("/admin/").headers["location"] == "/admin/login"
    assert admin.anon.get("/admin/progress.json").status_code == 401
    assert admin.anon.get("/admin/issues/1/preview").status_code == 401
    wrong = admin.anon.post("/admin/login", data={"token": WRONG})
    assert wrong.status_code == 401 and "not the admin token" in wrong.text
    assert SESSION_COOKIE not in wrong.cookies
    with login(admin) as client:
        cookie = next(c for c in client.cookies.jar if c.name == SESSION_COOKIE)
        assert cookie.path == "/admin" and not cookie.secure
        assert cookie.has_nonstandard_attr("HttpOnly")
        raw = client.post("/admin/login", data={"token": TOKEN}).headers["set-cookie"]
        assert "samesite=strict" in raw.lower() and "httponly" in raw.lower()
        page = client.get("/admin/")
        assert page.status_code == 200 and "Build issue" in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp
        nonce = re.search(r"'nonce-([^']+)'", csp)[1]  # type: ignore[index]
        assert f'<script nonce="{nonce}">' in page.text

        # Forged: no CSRF field, a wrong one, another form's, another session's.
        build = csrf_of(page.text, "/admin/build")
        for data in ({}, {"csrf": "0" * 64}, {"csrf": csrf_of(page.text, "/admin/collect")}):
            r = client.post("/admin/build", data=data)
            assert r.status_code == 403 and "expired" in r.text
        with login(admin) as other:
            assert other.post("/admin/build", data={"csrf": build}).status_code == 403
        assert admin.anon.post("/admin/build", data={"csrf": build}).status_code == 403
        assert admin.store.list_issues() == []

        r = client.post("/admin/build", data={"csrf": build})
        assert r.status_code == 303 and r.headers["location"] == "/admin/"
        page = client.get("/admin/")
        assert "Built issue 1" in page.text and FLASH_COOKIE not in client.cookies
        assert "0 / 0" in page.text and 'src="/admin/issues/1/preview"' in page.text
        preview = client.get("/admin/issues/1/preview")
        assert preview.status_code == 200 and "World piece" in preview.text
        assert preview.headers["content-security-policy"].startswith("sandbox;")
        assert "%%" not in preview.text and "Reader" in preview.text

        r = client.post("/admin/issues/1/send", data={"csrf": csrf_of(page.text,
                                                                      "/admin/issues/1/send")})
        assert r.status_code == 303
        progress = admin.wait_until(lambda: (p := client.get("/admin/progress.json").json())
                                    ["issues"][0]["status"] == "sent" and p)
        assert progress["issues"][0]["done"] == progress["issues"][0]["total"] == 3
        page = client.get("/admin/")
        assert "3 / 3" in page.text and "/admin/issues/1/send" not in page.text
        # A failed action comes back as an error message, not a crash.
        r = client.post("/admin/issues/1/pause", data={"csrf": admin_csrf(admin, client,
                                                                          "pause:1")})
        assert r.status_code == 303 and "cannot pause" in client.get("/admin/").text

        session = client.cookies[SESSION_COOKIE]
        client.post("/admin/logout", data={"csrf": csrf_of(page.text, "/admin/logout")})
        assert client.get("/admin/").headers["location"] == "/admin/login"
        assert SESSION_COOKIE not in client.cookies
        # The old cookie is revoked too, should a copy of it be replayed.
        assert httpx.get(f"{admin.base}/admin/", cookies={SESSION_COOKIE: session}).status_code \
            == 303


def test_session_cookie_is_secure_over_https(admin: Admin) -> None:
    # Behind a TLS proxy (uvicorn --proxy-headers) the request's scheme is https.
    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=admin_app(admin.settings, admin.deps))
        async with httpx.AsyncClient(transport=transport, base_url="https://admin.test") as c:
            return await c.post("/admin/login", data={"token": TOKEN})

    r = asyncio.run(post())
    assert r.status_code == 303
    assert "; secure" in r.headers["set-cookie"].lower()


def admin_csrf(admin: Admin, client: httpx.Client, purpose: str) -> str:
    """The token a form for `purpose` would carry (for actions the page does not offer)."""
    nonce = Sessions(admin.deps).nonce_of(client.cookies[SESSION_COOKIE])
    assert nonce is not None
    return Sessions(admin.deps).csrf(nonce, purpose)


def test_a_past_send_time_is_refused_by_the_api_and_the_dashboard(admin: Admin) -> None:
    seed(admin.store, 2)
    assert admin.api.post("/admin/api/issues", json={"force": True}).status_code == 201
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    r = admin.api.post("/admin/api/issues/1/schedule", json={"at": past})
    assert r.status_code == 400 and "is in the past" in r.json()["error"]
    # Typed by hand as "now", a time some seconds old is within the grace and accepted.
    just_now = (datetime.now(UTC) - timedelta(seconds=20)).isoformat()
    r = admin.api.post("/admin/api/issues/1/schedule", json={"at": just_now})
    assert r.status_code == 200 and r.json()["status"] == "scheduled", r.text
    admin.api.post("/admin/api/issues/1/pause")
    with login(admin) as client:
        page = client.get("/admin/").text
        example = re.search(r'name="at" class="when" placeholder="([^"]+)"', page)
        assert example is not None
        shown = datetime.fromisoformat(example[1])
        assert shown > datetime.now(UTC) and shown.utcoffset() is not None
        assert (shown.weekday(), shown.hour, shown.minute) == (0, 7, 0)  # next Monday 07:00
        r = client.post("/admin/issues/1/schedule", data={
            "csrf": csrf_of(page, "/admin/issues/1/schedule"), "at": past})
        assert r.status_code == 303 and "is in the past" in client.get("/admin/").text
    assert admin.store.get_issue(1).status == "paused"  # type: ignore[union-attr]


def test_opening_a_buttons_address_does_nothing_and_says_so(admin: Admin) -> None:
    # A bookmark, a pasted link, a reload after Back: a page with the way back, never a bare
    # "Method Not Allowed"; nothing is built, sent or logged out.
    seed(admin.store, 2)
    with login(admin) as client:
        for path in ("/admin/build", "/admin/collect", "/admin/subscribers", "/admin/logout",
                     "/admin/logout-everywhere", "/admin/issues/1/send",
                     "/admin/issues/1/approve"):
            r = client.get(path)
            assert r.status_code == 405 and r.headers["allow"] == "POST", path
            assert "Nothing was done" in r.text and 'href="/admin/"' in r.text, path
        assert client.get("/admin/issues/1/frobnicate").status_code == 404
        assert client.get("/admin/issues/1/edit").status_code == 404  # no issue 1: its own page
        assert client.get("/admin/").status_code == 200  # still logged in
    assert admin.store.list_issues() == []
