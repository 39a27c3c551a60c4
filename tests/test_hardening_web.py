"""Hardening, web: the full app (pipeline.web_app) on uvicorn, attacked over real HTTP.

test_web_subscribe.py, test_admin_api.py and test_web_feeds.py test the same pages wired by
hand; these go through the wiring `newsletter serve` uses, with mail to the outbox.
"""

from __future__ import annotations

import email
import email.policy
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from webserver import running

from newsletter import pipeline
from newsletter.audience import subscriptions, tokens
from newsletter.config import Settings
from newsletter.models import Subscriber
from newsletter.pipeline import sending
from newsletter.store.database import Store

ADMIN_TOKEN = "hardening-admin-token-0123456789"
HOST = "Host: ledger.example.org\r\n"  # the publication's own name: any other gets a 400


@dataclass
class Site:
    settings: Settings
    store: Store
    base: str
    client: httpx.Client
    secret: bytes
    outbox: Path
    root: Path

    def mails(self, n: int = 0, timeout: float = 5) -> list[email.message.EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(list(self.outbox.glob("*.eml"))) < n:
            assert time.monotonic() < deadline, "mail did not arrive"
            time.sleep(0.02)
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in sorted(self.outbox.glob("*.eml"))]

    def active(self, address: str) -> Subscriber:
        return subscriptions.subscribe(self.store, address, "", method="admin", ip=None,
                                       user_agent=None, now=datetime.now(UTC),
                                       confirmed=True).subscriber

    def status(self, sub: Subscriber) -> str:
        found = self.store.get_subscriber(sub.id)
        assert found is not None
        return found.status

    def local(self, url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.path}?{parts.query}" if parts.query else parts.path


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Site]:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n'
                             f'[secrets]\nadmin_token = "{ADMIN_TOKEN}"\n')
    store = pipeline.open_store(settings)
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "rss.xml").write_text("<rss/>", "utf-8")
    try:
        app = pipeline.web_app(settings, store)
        with running(app) as base, httpx.Client(base_url=base, timeout=10) as client:
            yield Site(settings, store, base, client, tokens.load_or_create_secret(settings),
                       tmp_path / "outbox", tmp_path)
    finally:
        store.close()


def raw_request(base: str, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (httpx would tidy `..` out of a path); return status, response."""
    host, port = urlsplit(base).hostname, urlsplit(base).port
    assert host is not None and port is not None
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(head.encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


# -- links: forged, truncated, expired, replayed, someone else's ------------------------------


def test_bad_subscriber_links_change_nothing(site: Site) -> None:
    alice, bob = site.active("alice@example.org"), site.active("bob@example.org")
    now = datetime.now(UTC)
    good = subscriptions.unsubscribe_token(site.secret, alice.id, alice.email, now)
    too_old = now - timedelta(days=site.settings.subscriptions.unsubscribe_days + 1)
    bad = {
        "forged": tokens.sign(b"not-the-secret-0123456789abcdef", "unsubscribe",
                              str(alice.id), now, extra=alice.email),
        "truncated": good[:-6], "cut short": good[:24], "garbage": "A" * 60,
        "expired": subscriptions.unsubscribe_token(site.secret, alice.id, alice.email,
                                                   too_old),
        "from the future": subscriptions.unsubscribe_token(site.secret, alice.id, alice.email,
                                                           now + timedelta(hours=1)),
        "bob's id, alice's binding": tokens.sign(site.secret, "unsubscribe", str(bob.id), now,
                                                 extra=alice.email),
        "no such subscriber": tokens.sign(site.secret, "unsubscribe", "999999", now,
                                          extra=alice.email),
        "preferences token": subscriptions.preferences_token(site.secret, alice.id,
                                                             alice.email, now),
    }
    for what, token in bad.items():
        for method, path in (("POST", "/unsubscribe"), ("GET", "/unsubscribe"),
                             ("GET", "/preferences"), ("GET", "/confirm")):
            r = site.client.request(method, path, params={"token": token},
                                    data={"List-Unsubscribe": "One-Click"}
                                    if method == "POST" else None)
            if (what, path) == ("preferences token", "/preferences"):
                continue  # that one is genuine there
            assert r.status_code == 400 and "not valid" in r.text, (what, method, path)
    assert (site.status(alice), site.status(bob)) == ("active", "active")
    # The genuine link, replayed: the first POST unsubscribes, the second changes nothing.
    for _ in range(2):
        r = site.client.post("/unsubscribe", params={"token": good},
                             data={"List-Unsubscribe": "One-Click"})
        assert r.status_code == 200 and "You are unsubscribed" in r.text
    first = site.store.get_subscriber(alice.id)
    assert first is not None and first.unsubscribed_at is not None
    assert site.status(bob) == "active"


def test_confirmation_link_replayed_after_unsubscribing_does_not_resubscribe(site: Site) -> None:
    assert site.client.post("/subscribe", data={"email": "carol@example.org"}
                            ).status_code == 202
    body = site.mails(1)[0].get_content()
    link = re.search(r"https://\S+/confirm\?token=\S+", body)
    assert link is not None
    # The confirm page's button posts what the link carries.
    assert "You are subscribed" in site.client.post(site.local(link.group(0))).text
    carol = site.store.get_subscriber_by_key("carol@example.org")
    assert carol is not None and carol.status == "active"
    unsub = subscriptions.subscriber_links(site.settings.site_url, site.secret, carol.id,
                                           carol.email, datetime.now(UTC))[0]
    assert site.client.post(site.local(unsub)).status_code == 200
    for replay in (site.client.get(site.local(link.group(0))),
                   site.client.post(site.local(link.group(0)))):
        assert replay.status_code == 400 and site.status(carol) == "unsubscribed"


# -- one-click unsubscribe: honoured at once, and only by POST ----------------------------------


def test_one_click_url_from_a_real_mail_only_unsubscribes_on_post(site: Site) -> None:
    reader, other = site.active("reader@example.org"), site.active("other@example.org")
    when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    Path(site.settings.sources[0].path, "a.md").write_text(
        f"---\ntitle: A piece\ndate: {when}\n---\nText.\n", "utf-8")
    pipeline.collect(site.settings, site.store)
    issue = pipeline.build_issue(site.settings, site.store).issue
    assert issue is not None
    sending.start_sending(site.settings, site.store, issue)
    sending.run_worker(site.settings, site.store, issue)
    mail = next(m for m in site.mails(2) if "reader@" in str(m["To"]))
    url = re.match(r"<(https://[^>]+)>", mail["List-Unsubscribe"])
    assert url is not None and mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    for method in ("GET", "HEAD", "OPTIONS"):  # link scanners and previews
        site.client.request(method, site.local(url.group(1)))
    assert site.status(reader) == "active"
    r = site.client.post(site.local(url.group(1)), data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and site.status(reader) == "unsubscribed"
    # At once: the very next issue has no ledger row for them.
    Path(site.settings.sources[0].path, "b.md").write_text(
        f"---\ntitle: Another\ndate: {datetime.now(UTC).isoformat()}\n---\nMore.\n", "utf-8")
    pipeline.collect(site.settings, site.store)
    nxt = pipeline.build_issue(site.settings, site.store).issue
    assert nxt is not None and nxt.id is not None
    assert sending.start_sending(site.settings, site.store, nxt) == 1
    # Even an issue already queued for someone: unsubscribing before their turn skips them.
    other_url = subscriptions.subscriber_links(site.settings.site_url, site.secret, other.id,
                                               other.email, datetime.now(UTC))[0]
    assert site.client.post(site.local(other_url)).status_code == 200
    before = len(site.mails())
    sending.run_worker(site.settings, site.store, nxt)
    assert len(site.mails()) == before
    assert site.store.delivery_counts(nxt.id)["skipped"] == 1


def test_issue_mail_carries_no_tracking(site: Site) -> None:
    """No open pixel, no click redirect, no added query strings: every link and image in the
    mail is an article's own URL or one of the publication's pages."""
    site.active("reader@example.org")
    when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    Path(site.settings.sources[0].path, "a.md").write_text(
        f"---\ntitle: A piece\ndate: {when}\nurl: https://elsewhere.example/a?x=1\n"
        f"image: https://img.example/a.jpg\n---\nText.\n", "utf-8")
    pipeline.collect(site.settings, site.store)
    issue = pipeline.build_issue(site.settings, site.store).issue
    assert issue is not None
    sending.start_sending(site.settings, site.store, issue)
    sending.run_worker(site.settings, site.store, issue)
    [mail] = site.mails(1)
    html = mail.get_body(("html",)).get_content()
    urls = set(re.findall(r'(?:href|src)="([^"]+)"', html))
    site_url = site.settings.site_url
    own = {f"{site_url}issues/{issue.number}"}
    assert {u for u in urls if not u.startswith((f"{site_url}unsubscribe?token=",
                                                 f"{site_url}preferences?token="))} == {
        "https://elsewhere.example/a?x=1", "https://img.example/a.jpg", *own}
    assert len(re.findall(r"<img\b", html)) == 1
    assert "?utm_" not in html and "&amp;utm_" not in html


# -- CSRF --------------------------------------------------------------------------------------


def test_forms_refuse_cross_site_posts(site: Site) -> None:
    sub = site.active("dora@example.org")
    prefs = site.local(subscriptions.subscriber_links(
        site.settings.site_url, site.secret, sub.id, sub.email, datetime.now(UTC))[1])
    page = site.client.get(prefs)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert page.status_code == 200 and csrf is not None
    with httpx.Client(base_url=site.base, timeout=10) as attacker:  # no cookie of the site
        for data in ({"sections": "World"}, {"sections": "World", "csrf": csrf.group(1)}):
            assert attacker.post(prefs, data=data).status_code == 403
        # The dashboard: no session, or a session without this form's token.
        for path in ("/admin/build", "/admin/collect", "/admin/issues/1/send",
                     "/admin/logout"):
            assert attacker.post(path, data={"csrf": "x" * 64}).status_code == 403
        login = attacker.post("/admin/login", data={"token": ADMIN_TOKEN})
        assert login.status_code == 303
        assert attacker.post("/admin/build", data={}).status_code == 403
        assert attacker.post("/admin/build", data={"csrf": csrf.group(1)}).status_code == 403
    assert site.store.list_issues() == [] and site.store.get_subscriber(sub.id).sections == ()  # type: ignore[union-attr]


# -- the admin API ---------------------------------------------------------------------------


def test_admin_api_and_metrics_need_the_right_bearer_token(site: Site) -> None:
    spec = site.client.get("/admin/api/openapi.json",
                           headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    routes = [(method.upper(), re.sub(r"\{[^}]+\}", "1", path))
              for path, ops in spec["paths"].items() for method in ops]
    routes = [(m, p.replace("/subscribers/1", "/subscribers/a@example.org")) for m, p in routes]
    assert len(routes) >= 12
    attempts: list[dict[str, str | bytes]] = [
        {}, {"authorization": "Bearer"}, {"authorization": f"Basic {ADMIN_TOKEN}"},
        {"authorization": f"Bearer {ADMIN_TOKEN[:-1]}X"},
        {"authorization": b"Bearer " + ADMIN_TOKEN.encode() + b"\xe9"}]
    for headers in attempts[:3]:  # wrong tokens are rate limited: keep those for the end
        for method, path in [*routes, ("GET", "/metrics")]:
            r = site.client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert "www-authenticate" in r.headers and ADMIN_TOKEN not in r.text
    for headers in attempts[3:]:
        assert site.client.get("/admin/api/status", headers=headers).status_code == 401
    assert site.store.list_issues() == [] and site.store.count_subscribers()["active"] == 0


# -- sizes -------------------------------------------------------------------------------------


def test_oversized_bodies_are_refused_before_they_are_read(site: Site) -> None:
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    assert site.client.post("/subscribe", data={"email": "a@example.org", "name": "x" * 20_000}
                            ).status_code == 413
    assert site.client.post("/admin/login", content=b"token=" + b"x" * 100_000,
                            headers={"content-type": "application/x-www-form-urlencoded"}
                            ).status_code == 413
    assert site.client.post("/admin/api/issues", content=b"{" + b" " * 100_000 + b"}",
                            headers={**auth, "content-type": "application/json"}
                            ).status_code == 413
    # A declared 100 MB body is refused on its Content-Length, before a byte is sent.
    for path, extra in (("/subscribe", ""), ("/admin/api/subscribers/import",
                                             f"Authorization: Bearer {ADMIN_TOKEN}\r\n")):
        status, _ = raw_request(site.base, f"POST {path} HTTP/1.1\r\n{HOST}{extra}"
                                "Content-Type: text/csv\r\nContent-Length: 104857600\r\n"
                                "Connection: close\r\n\r\n", b"email\r\n")
        assert status == 413, path
    assert site.store.count_subscribers()["pending"] == 0
    assert site.client.get("/healthz").text == "ok"  # and the service is still there


# -- paths -------------------------------------------------------------------------------------


TRAVERSALS = [
    "/feeds/../n.toml", "/feeds/%2e%2e/n.toml", "/feeds/..%2fn.toml", "/feeds/%2e%2e%2fsecret_key",
    "/feeds/sections/../../secret_key", "/feeds//etc/passwd", "/feeds/%00", "/feeds/rss.xml%00",
    "/feeds/..\\secret_key", "/feeds/.secret_key", "/feeds/./rss.xml/../../n.db",
    "/feeds/%252e%252e/n.toml", "/issues/../n.toml", "/issues/%2e%2e/secret_key",
    "/issues/1/../../secret_key", "/issues/99999999999999999999", "/issues/2147483648",
    "/issues/-1", "/issues/1.5", "/issues/%31", "/issues/0x1", "/issues/1%2f..%2f..%2fn.toml",
]


def test_paths_under_feeds_and_issues_never_leave_their_folder(site: Site) -> None:
    secret = (site.root / "secret_key").read_bytes().strip()
    wrong = []
    for path in TRAVERSALS:
        status, response = raw_request(site.base, f"GET {path} HTTP/1.1\r\n{HOST}"
                                                  "Connection: close\r\n\r\n")
        # Never a 500 (the huge issue numbers were), never the file.
        if status not in (400, 404) or secret in response or b"[publication]" in response:
            wrong.append((path, status))
    assert wrong == []
    ok, body = raw_request(site.base, f"GET /feeds/rss.xml HTTP/1.1\r\n{HOST}"
                                      "Connection: close\r\n\r\n")
    assert ok == 200 and body.endswith(b"<rss/>")


# -- floods --------------------------------------------------------------------------------------


def test_subscribe_flood_for_someone_elses_address_sends_one_mail(site: Site) -> None:
    def post(_: int) -> tuple[int, str]:
        with httpx.Client(base_url=site.base, timeout=10) as c:
            r = c.post("/subscribe", data={"email": "victim@example.org"})
            return r.status_code, r.headers.get("retry-after", "")

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(40)))
    limit = site.settings.subscriptions.rate_per_ip
    assert sum(code == 202 for code, _ in answers) == limit  # per client address, per hour
    assert all(code == 429 and int(wait) > 0 for code, wait in answers if code != 202)
    mails = site.mails(1)  # the confirmation is sent after the response: wait for it
    assert [m["To"].addresses[0].addr_spec for m in mails] == ["victim@example.org"]
    victim = site.store.get_subscriber_by_key("victim@example.org")
    assert victim is not None and victim.status == "pending"
