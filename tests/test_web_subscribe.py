"""Subscribe, confirm, unsubscribe and preferences pages over real HTTP against uvicorn."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from webserver import running

from newsletter.audience import subscriptions as subs
from newsletter.audience import tokens
from newsletter.config import Settings
from newsletter.models import Article
from newsletter.store.database import Store as SubscriberStore
from newsletter.web import create_app
from newsletter.web.limits import SlidingWindow, rate_key
from newsletter.web.subscribe import (
    CHECK_INBOX,
    CSRF_COOKIE,
    SubscribeDeps,
    subscribe_routes,
)

SECRET = b"web-test-secret-0123456789abcdef"
BASE_URL = "https://ledger.example.org/"
START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@dataclass
class Site:
    client: httpx.Client
    base: str
    store: SubscriberStore
    mails: list[tuple[str, str, str]]
    clock: list[datetime]

    def path(self, url: str) -> str:
        """The path and query of a link built on the public base URL, to fetch here."""
        assert url.startswith(BASE_URL)
        parts = urlsplit(url)
        return f"{parts.path}?{parts.query}"

    def wait_for_mails(self, n: int, timeout: float = 5.0) -> None:
        # Confirmation mails go out in a background task, after the response.
        deadline = time.monotonic() + timeout
        while len(self.mails) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.mails) >= n, self.mails

    def subscribe(self, email: str, name: str = "", **kw: Any) -> httpx.Response:
        return self.client.post("/subscribe", data={"email": email, "name": name}, **kw)

    def active(self, email: str) -> Any:
        sub = subs.subscribe(self.store, email, "", method="admin", ip=None, user_agent=None,
                             now=self.clock[0], confirmed=True).subscriber
        assert sub.status == "active"
        return sub


MakeSite = Callable[..., AbstractContextManager[Site]]


@pytest.fixture
def make_site(make_settings: Callable[..., Settings], tmp_path: Path) -> MakeSite:
    @contextmanager
    def make(send: Callable[[str, str, str], None] | None = None,
             **overrides: Any) -> Iterator[Site]:
        store = SubscriberStore(make_settings().storage.database_url)
        mails: list[tuple[str, str, str]] = []
        clock = [START]
        deps = SubscribeDeps(store=store, secret=SECRET, publication_name="Ledger <&>",
                             base_url=BASE_URL,
                             send_confirmation=send or (lambda *m: mails.append(m)),
                             now=lambda: clock[0], **overrides)
        (tmp_path / "feeds").mkdir(exist_ok=True)
        app = create_app(feeds_dir=tmp_path / "feeds", publication_name="Ledger",
                         feeds_url=BASE_URL + "feeds/", extra_routes=subscribe_routes(deps=deps))
        try:
            with running(app) as base, httpx.Client(base_url=base, timeout=10) as client:
                yield Site(client, base, store, mails, clock)
        finally:
            store.close()

    return make


@pytest.fixture
def site(make_site: MakeSite) -> Iterator[Site]:
    with make_site() as s:
        yield s


def test_subscribe_form_and_json(site: Site) -> None:
    r = site.subscribe("Ann@Example.org", "Ann <b>")
    assert r.status_code == 202
    assert r.headers["content-type"].startswith("text/html")
    assert CHECK_INBOX in r.text.replace("&#39;", "'")
    for name, value in (("referrer-policy", "no-referrer"), ("cache-control", "no-store"),
                        ("x-frame-options", "DENY")):
        assert r.headers[name] == value
    site.wait_for_mails(1)
    email, name, url = site.mails[0]
    assert (email, name) == ("Ann@example.org", "Ann <b>")
    assert url.startswith(BASE_URL + "confirm?token=")
    sub = site.store.get_subscriber_by_key("ann@example.org")
    assert sub is not None and sub.status == "pending" and sub.consent_ip == "127.0.0.1"

    r = site.client.post("/subscribe", json={"email": "bo@example.org", "name": "Bo"})
    assert r.status_code == 202
    assert r.json() == {"ok": True, "message": CHECK_INBOX}
    site.wait_for_mails(2)
    assert site.mails[1][0] == "bo@example.org"


def test_same_answer_whatever_the_address_state(site: Site) -> None:
    active = site.active("act@example.org")
    site.subscribe("pend@example.org")
    gone = site.active("gone@example.org")
    site.store.unsubscribe_subscriber(gone.id, START)
    answers = {(r.status_code, r.text) for r in (
        site.subscribe("new@example.org"), site.subscribe(active.email),
        site.subscribe("PEND@example.org"), site.subscribe(gone.email))}
    assert len(answers) == 1
    json_answers = {(r.status_code, r.text) for r in (
        site.client.post("/subscribe", json={"email": "new2@example.org"}),
        site.client.post("/subscribe", json={"email": active.email}))}
    assert len(json_answers) == 1


def test_invalid_address_is_refused_and_escaped(site: Site) -> None:
    r = site.subscribe("<script>alert(1)</script>@@x", "<img src=x onerror=alert(1)>")
    assert r.status_code == 400
    assert "<script>alert" not in r.text and "<img src=x" not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@@x" in r.text
    r = site.client.post("/subscribe", json={"email": "jürgen@example.org"})
    assert r.status_code == 400
    assert r.json() == {"ok": False, "error": subs.SMTPUTF8_REFUSED}
    assert site.client.post("/subscribe", json=["not", "an", "object"]).status_code == 400
    assert site.mails == []


def test_honeypot_answers_the_same_and_does_nothing(site: Site,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="newsletter")
    trapped = [site.client.post("/subscribe", data={"email": "bot@example.org", "website": "x"}),
               site.client.post("/subscribe", json={"email": "bot2@example.org",
                                                    "website": "https://spam.example"})]
    normal = [site.subscribe("real@example.org"),
              site.client.post("/subscribe", json={"email": "real2@example.org"})]
    for r, same in zip(trapped, normal, strict=True):
        assert (r.status_code, r.text, r.headers.get("content-type")) == (
            same.status_code, same.text, same.headers.get("content-type"))
    assert site.store.get_subscriber_by_key("bot@example.org") is None
    assert site.store.get_subscriber_by_key("bot2@example.org") is None
    site.wait_for_mails(2)  # the people's confirmations, sent after the trapped requests
    assert sorted(m[0] for m in site.mails) == ["real2@example.org", "real@example.org"]
    assert sum("subscribe_honeypot ip=127.0.0.1" in r.getMessage() for r in caplog.records) == 2


def confirm_form(page: str) -> tuple[str, dict[str, str]]:
    """The confirm page's one form: where it posts, and its fields."""
    forms = re.findall(r'<form method="post" action="([^"]+)">(.*?)</form>', page, re.S)
    assert len(forms) == 1, page
    action, inside = forms[0]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', inside))
    return action, {k: v.replace("&amp;", "&") for k, v in fields.items()}


def test_only_the_confirm_buttons_post_confirms_and_a_second_visit_says_so(site: Site) -> None:
    site.subscribe("cy@example.org")
    site.wait_for_mails(1)
    path = site.path(site.mails[0][2])
    # A mail scanner opens the link, probes it and opens it again: nothing changes, and the
    # link is not used up.
    for method in ("HEAD", "GET", "GET", "HEAD"):
        assert site.client.request(method, path).status_code == 200
    assert site.store.get_subscriber_by_key("cy@example.org").status == "pending"  # type: ignore[union-attr]
    page = site.client.get(path)
    assert "Confirm your subscription" in page.text and "cy@example.org" in page.text
    assert "<script" not in page.text  # it never submits itself: scanners run scripts too
    action, fields = confirm_form(page.text)
    r = site.client.post(action, data=fields)
    assert r.status_code == 200 and "You are subscribed" in r.text
    assert "Ledger &lt;&amp;&gt;" in r.text  # the publication name is escaped too
    assert site.store.get_subscriber_by_key("cy@example.org").status == "active"  # type: ignore[union-attr]
    for again in (site.client.get(path), site.client.post(action, data=fields)):
        assert again.status_code == 200 and "You are already subscribed" in again.text
        assert "<form" not in again.text.split("<main", 1)[1]


def test_a_confirm_post_needs_the_signed_token(site: Site) -> None:
    site.subscribe("dot@example.org")
    site.wait_for_mails(1)
    token = urlsplit(site.mails[0][2]).query.removeprefix("token=")
    for data in ({}, {"token": ""}, {"token": token[:-1]}, {"token": "x" * 100}):
        r = site.client.post("/confirm", data=data)  # a forged cross-site POST has no token
        assert r.status_code == 400 and "not valid" in r.text, data
    assert site.client.post("/confirm", content=b"token=" + b"x" * 20_000,
                            headers={"content-type": "application/x-www-form-urlencoded"}
                            ).status_code == 413
    assert site.store.get_subscriber_by_key("dot@example.org").status == "pending"  # type: ignore[union-attr]
    # The token may come in the URL too, as on the unsubscribe page's form.
    assert "You are subscribed" in site.client.post("/confirm", params={"token": token}).text


def test_a_complained_address_gets_the_bad_link_page_on_get_and_post(site: Site) -> None:
    site.subscribe("cal@example.org")
    site.wait_for_mails(1)
    sub = site.store.get_subscriber_by_key("cal@example.org")
    assert sub is not None and site.store.set_subscriber_status(sub.id, "complained", START)
    path = site.path(site.mails[0][2])
    assert site.client.get(path).status_code == 400
    action, fields = "/confirm", {"token": urlsplit(path).query.removeprefix("token=")}
    assert site.client.post(action, data=fields).status_code == 400
    assert site.store.get_subscriber(sub.id).status == "complained"  # type: ignore[union-attr]


def test_bad_confirm_links(site: Site) -> None:
    site.subscribe("dee@example.org")
    site.subscribe("eve@example.org")
    site.wait_for_mails(2)
    dee = site.store.get_subscriber_by_key("dee@example.org")
    eve = site.store.get_subscriber_by_key("eve@example.org")
    assert dee is not None and eve is not None
    good = urlsplit(site.mails[0][2]).query.removeprefix("token=")
    other_key = tokens.sign(b"another-secret-0123456789abcdef", "confirm", str(dee.id), START,
                            extra=subs._confirm_binding(dee))
    eves_binding = tokens.sign(SECRET, "confirm", str(dee.id), START,
                               extra=subs._confirm_binding(eve))
    for token in ("", "x", good[:-1], good[:20], good + "A", good.upper(), other_key,
                  eves_binding, subs.unsubscribe_token(SECRET, dee.id, dee.email, START),
                  subs.preferences_token(SECRET, dee.id, dee.email, START)):
        for r in (site.client.get("/confirm", params={"token": token}),
                  site.client.post("/confirm", data={"token": token})):
            assert r.status_code == 400, token
            assert "not valid" in r.text
    site.clock[0] = START + timedelta(hours=73)  # past the 72-hour confirmation lifetime
    assert site.client.get("/confirm", params={"token": good}).status_code == 400
    assert site.client.post("/confirm", data={"token": good}).status_code == 400
    assert site.store.get_subscriber(dee.id).status == "pending"  # type: ignore[union-attr]


def test_get_unsubscribe_never_unsubscribes(site: Site) -> None:
    sub = site.active("fay@example.org")
    unsub, _prefs = subs.subscriber_links(BASE_URL, SECRET, sub.id, sub.email, START)
    for method in ("GET", "HEAD"):
        r = site.client.request(method, site.path(unsub))
        assert r.status_code == 200
    r = site.client.get(site.path(unsub))
    assert '<form method="post"' in r.text and "fay@example.org" in r.text
    assert site.store.get_subscriber(sub.id).status == "active"  # type: ignore[union-attr]


def test_one_click_post_unsubscribes_without_cookies_or_redirect(site: Site) -> None:
    ann, bob = site.active("ann@example.org"), site.active("bob@example.org")
    cat = site.active("cat@example.org")
    odd = {"content": b"\xff\xfe not a form", "headers": {"content-type": "text/plain"}}
    for sub, kwargs in ((ann, {"data": {"List-Unsubscribe": "One-Click"}}),
                        (bob, {"files": {"List-Unsubscribe": (None, "One-Click")}}),
                        (cat, odd)):
        url = subs.subscriber_links(BASE_URL, SECRET, sub.id, sub.email, START)[0]
        with httpx.Client(base_url=site.base, timeout=10, follow_redirects=False) as fresh:
            r = fresh.post(site.path(url), **kwargs)
        assert r.status_code == 200, r.text
        assert "location" not in r.headers and "set-cookie" not in r.headers
        assert "You are unsubscribed" in r.text
        assert site.store.get_subscriber(sub.id).status == "unsubscribed"  # type: ignore[union-attr]
        again = site.client.post(site.path(url), data={"List-Unsubscribe": "One-Click"})
        assert again.status_code == 200
    bad = site.client.post("/unsubscribe?token=forged", data={"List-Unsubscribe": "One-Click"})
    assert bad.status_code == 400


def test_unsubscribe_page_button_posts_the_token(site: Site) -> None:
    sub = site.active("gil@example.org")
    url = subs.subscriber_links(BASE_URL, SECRET, sub.id, sub.email, START)[0]
    page = site.client.get(site.path(url)).text
    action = re.search(r'<form method="post" action="([^"]+)"', page)
    assert action is not None
    token = re.search(r'name="token" value="([^"]+)"', page)
    assert token is not None
    r = site.client.post(action.group(1).replace("&amp;", "&"), data={"token": token.group(1)})
    assert r.status_code == 200
    assert site.store.get_subscriber(sub.id).status == "unsubscribed"  # type: ignore[union-attr]


def add_sections(store: SubscriberStore, *names: str) -> None:
    articles = [Article(key=f"link:https://x.example/{i}", title=f"A{i}",
                        link=f"https://x.example/{i}", published=START, updated=START,
                        content_html="<p>x</p>", content_hash=f"h{i}", section=name,
                        id=f"id{i}") for i, name in enumerate(names)]
    store.save_articles(articles, [], START)


def test_preferences_form_needs_csrf_token_and_cookie(site: Site) -> None:
    add_sections(site.store, "Tech", "World <i>")
    sub = site.active("hal@example.org")
    url = site.path(subs.subscriber_links(BASE_URL, SECRET, sub.id, sub.email, START)[1])
    page = site.client.get(url)
    assert page.status_code == 200
    assert "World &lt;i&gt;" in page.text and "World <i>" not in page.text
    assert CSRF_COOKIE in page.headers["set-cookie"]
    assert "samesite=strict" in page.headers["set-cookie"].lower()
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    csrf = found.group(1)

    refused = site.client.post(url, data={"sections": ["Tech"]})
    assert refused.status_code == 403
    with httpx.Client(base_url=site.base, timeout=10) as no_cookie:
        r = no_cookie.post(url, data={"sections": ["Tech"], "csrf": csrf})
        assert r.status_code == 403
    # Another subscriber's form token does not fit this subscriber's page.
    other = site.active("ida@example.org")
    other_url = site.path(subs.subscriber_links(BASE_URL, SECRET, other.id, other.email,
                                                START)[1])
    assert site.client.post(other_url, data={"sections": ["Tech"], "csrf": csrf}
                            ).status_code == 403
    assert site.store.get_subscriber(sub.id).sections == ()  # type: ignore[union-attr]

    ok = site.client.post(url, data={"sections": ["Tech"], "csrf": csrf})
    assert ok.status_code == 200 and "Saved" in ok.text
    assert site.store.get_subscriber(sub.id).sections == ("Tech",)  # type: ignore[union-attr]
    none = site.client.post(url, data={"csrf": csrf})
    assert none.status_code == 400 and "at least one" in none.text
    assert site.client.get("/preferences?token=nope").status_code == 400


def test_flood_for_one_address_sends_one_mail(make_site: MakeSite) -> None:
    with make_site(rate_per_ip=1000) as site:
        def post(_: int) -> int:
            with httpx.Client(base_url=site.base, timeout=10) as c:
                return c.post("/subscribe", data={"email": "flood@example.org"}).status_code

        with ThreadPoolExecutor(10) as pool:
            assert set(pool.map(post, range(50))) == {202}
        time.sleep(0.5)  # let any (wrongly) queued background sends run
        assert len(site.mails) == 1


def test_per_ip_rate_limit(make_site: MakeSite) -> None:
    with make_site(rate_per_ip=3) as site:
        for i in range(3):
            assert site.subscribe(f"r{i}@example.org").status_code == 202
        r = site.subscribe("r9@example.org")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) > 0
        assert site.client.post("/subscribe", json={"email": "r9@example.org"},
                                ).json()["ok"] is False
        assert site.store.get_subscriber_by_key("r9@example.org") is None


def test_oversized_bodies_are_refused(site: Site) -> None:
    big = "x" * 20_000
    r = site.client.post("/subscribe", data={"email": "a@example.org", "name": big})
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b"email=a%40example.org&name="
        for _ in range(40):
            yield b"y" * 1000

    r = site.client.post("/subscribe", content=chunks(),
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413
    sub = site.active("big@example.org")
    url = subs.subscriber_links(BASE_URL, SECRET, sub.id, sub.email, START)[0]
    assert site.client.post(site.path(url), content=b"z" * 17_000).status_code == 413
    assert site.store.get_subscriber_by_key("a@example.org") is None


def test_failed_send_allows_a_retry(make_site: MakeSite) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def flaky(email: str, name: str, url: str) -> None:
        with lock:
            calls.append(email)
            if len(calls) == 1:
                raise ConnectionError("relay down")

    with make_site(send=flaky) as site:
        site.subscribe("kai@example.org")
        # The failure handler clears the resend claim after the call: wait for that, not
        # for a fixed time a loaded machine may overrun.
        deadline = time.monotonic() + 10
        while not calls or site.store.get_subscriber_by_key(
                "kai@example.org").confirmation_sent_at is not None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the resend claim was never cleared"
            time.sleep(0.01)
        site.subscribe("kai@example.org")
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == ["kai@example.org", "kai@example.org"]


def test_subscribe_page_renders(site: Site) -> None:
    r = site.client.get("/subscribe")
    assert r.status_code == 200
    assert 'name="email"' in r.text and 'name="website"' in r.text
    assert "Ledger &lt;&amp;&gt;" in r.text


def test_rate_keys_and_window() -> None:
    assert rate_key("192.0.2.7") == "192.0.2.7"
    assert rate_key("2001:db8::1") == rate_key("2001:db8::ffff") == "2001:db8::/64"
    assert rate_key("::ffff:192.0.2.7") == "192.0.2.7"
    now = [0.0]
    window = SlidingWindow(2, 60, max_keys=2, clock=lambda: now[0])
    assert window.hit("a") == 0 and window.hit("a") == 0
    assert window.hit("a") == 60
    now[0] = 30
    assert window.hit("a") == 30
    now[0] = 60.5
    assert window.hit("a") == 0
    window.hit("b"), window.hit("c")  # "a" is forgotten: memory stays bounded
    assert "a" not in window._hits and len(window._hits) == 2


def test_rate_limiter_forgets_addresses_whose_window_has_passed() -> None:
    """Sign-ups from ever new addresses: the limiter holds those of the last window only
    (it kept every one until 100,000 and grew a long-running service by ~1 KB each)."""
    now = [0.0]
    window = SlidingWindow(2, 60, clock=lambda: now[0])
    for i in range(1000):
        now[0] = i * 0.5  # two new addresses a second, each seen once
        assert window.hit(f"192.0.2.{i}") == 0
    assert len(window) == 120  # the last 60 seconds' worth
    window.hit("203.0.113.9"), window.hit("203.0.113.9")
    now[0] += 59
    assert window.hit("203.0.113.9") == 1.0 and len(window) == 3  # still limited
    now[0] += 1.5
    assert window.hit("203.0.113.9") == 0
    now[0] += 61
    window.blocked("198.51.100.1")
    assert len(window) == 1  # everything else expired


def test_deps_from_settings(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("[subscriptions]\nconfirm_hours = 24\nunsubscribe_days = 60\n"
                             "confirm_resend_minutes = 5\nrate_per_ip = 7\n"
                             "[mail]\nsmtputf8 = true\n")
    deps = SubscribeDeps.from_settings(settings, store=None,  # type: ignore[arg-type]
                                       secret=SECRET, send_confirmation=lambda *a: None)
    assert (deps.publication_name, deps.base_url) == ("Test Ledger", BASE_URL)
    assert (deps.confirm_max_age, deps.token_max_age, deps.resend_window) == (
        timedelta(hours=24), timedelta(days=60), timedelta(minutes=5))
    assert (deps.rate_per_ip, deps.smtputf8, deps.templates_dir) == (7, True, None)
