"""Manage my subscription over real HTTP: the form mails a signed preferences link to the outbox."""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from webserver import running

from newsletter import pipeline
from newsletter.audience import subscriptions as subs
from newsletter.config import Settings
from newsletter.store.database import Store
from newsletter.web.manage import LINK_ON_ITS_WAY

SITE = "https://ledger.example.org/"


@dataclass
class Site:
    client: httpx.Client
    store: Store
    outbox: Path

    def mails(self) -> list[email.message.EmailMessage]:
        found = []
        for path in sorted(self.outbox.glob("*.eml")):
            found.append(email.message_from_bytes(path.read_bytes(), policy=email.policy.default))
        return found

    def wait_for_mail_to(self, address: str, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not any(m["To"].addresses[0].addr_spec == address for m in self.mails()):
            assert time.monotonic() < deadline, f"no mail to {address} before the deadline"
            time.sleep(0.02)  # polling interval inside a deadline

    def person(self, address: str, status: str = "active") -> None:
        now = datetime.now(UTC)
        sub = subs.subscribe(self.store, address, "Ada", method="admin", ip=None,
                             user_agent=None, now=now, confirmed=status != "pending").subscriber
        if status == "unsubscribed":
            self.store.unsubscribe_subscriber(sub.id, now)

    def ask(self, address: str) -> httpx.Response:
        return self.client.post("/manage", data={"email": address})


@contextmanager
def site(make_settings: Callable[..., Settings], tmp_path: Path, extra: str = "") -> Iterator[Site]:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n{extra}')
    store = pipeline.open_store(settings)
    try:
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=10) as client:
            yield Site(client, store, tmp_path / "outbox")
    finally:
        store.close()


def link_in(message: email.message.EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    found = re.findall(r"https://\S+", body.get_content())
    assert len(found) == 1, found
    return found[0]


def test_form_is_served_with_the_subscriber_pages_headers(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with site(make_settings, tmp_path) as s:
        r = s.client.get("/manage")
        assert r.status_code == 200
        assert '<form method="post" action="/manage">' in r.text
        assert r.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_only_a_subscribed_address_gets_a_link_and_the_answers_are_identical(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with site(make_settings, tmp_path) as s:
        s.person("ada@example.org")
        s.person("pending@example.org", "pending")
        s.person("gone@example.org", "unsubscribed")
        answers = [s.ask(a) for a in ("nobody@example.org", "pending@example.org",
                                      "gone@example.org", "ADA@example.org")]
        assert {(r.status_code, r.text) for r in answers} == {(202, answers[0].text)}
        assert LINK_ON_ITS_WAY.split(":")[0] in answers[0].text
        # One connection, one request at a time: the earlier requests' background work
        # (none) is over once Ada's mail is there.
        s.wait_for_mail_to("ada@example.org")
        mails = s.mails()
        assert [m["To"].addresses[0].addr_spec for m in mails] == ["ada@example.org"]
        assert mails[0]["Subject"] == "Your link to manage Test Ledger"

        url = link_in(mails[0])
        assert url.startswith(f"{SITE}preferences?token=")
        parts = urlsplit(url)
        page = s.client.get(f"{parts.path}?{parts.query}")
        assert page.status_code == 200
        assert "Your preferences" in page.text and "ada@example.org" in page.text


def test_one_mail_per_address_per_window(make_settings: Callable[..., Settings],
                                         tmp_path: Path) -> None:
    with site(make_settings, tmp_path) as s:
        s.person("ada@example.org")
        s.person("bea@example.org")
        first, second = s.ask("ada@example.org"), s.ask("ada@example.org")
        assert (first.status_code, first.text) == (second.status_code, second.text)
        s.ask("bea@example.org")
        s.wait_for_mail_to("bea@example.org")  # after it, Ada's second request is settled
        to = sorted(m["To"].addresses[0].addr_spec for m in s.mails())
        assert to == ["ada@example.org", "bea@example.org"]


def test_per_client_limit_is_shared_with_the_subscribe_form(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with site(make_settings, tmp_path, "[subscriptions]\nrate_per_ip = 4\n") as s:
        for i in range(2):
            assert s.client.post("/subscribe", data={"email": f"s{i}@example.org"}) \
                .status_code == 202
        assert s.ask("a@example.org").status_code == 202
        assert s.ask("b@example.org").status_code == 202
        refused = s.ask("c@example.org")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert s.client.post("/subscribe", data={"email": "d@example.org"}).status_code == 429


def test_bad_input_is_one_escaped_line(make_settings: Callable[..., Settings],
                                       tmp_path: Path) -> None:
    with site(make_settings, tmp_path) as s:
        r = s.ask("<b>not an address")
        assert r.status_code == 400
        assert "<b>not" not in r.text and "&lt;b&gt;not an address" in r.text
        assert len(re.findall(r'class="error"', r.text)) == 1
        j = s.client.post("/manage", json={"email": ""})
        assert j.status_code == 400 and j.json() == {"ok": False,
                                                     "error": "an email address is required"}
        trap = s.client.post("/manage", data={"email": "ada@example.org", "website": "x"})
        assert trap.status_code == 202
        assert s.client.post("/manage", content=b"x" * 20_000,
                             headers={"content-type": "application/x-www-form-urlencoded"}
                             ).status_code == 413


def test_honeypot_answers_the_same_mails_nothing_and_is_logged(
        make_settings: Callable[..., Settings], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="newsletter")
    with site(make_settings, tmp_path) as s:
        s.person("ada@example.org")
        s.person("bea@example.org")
        trapped = s.client.post("/manage", data={"email": "bea@example.org", "website": "x"})
        normal = s.ask("ada@example.org")
        assert (trapped.status_code, trapped.text) == (normal.status_code, normal.text)
        s.wait_for_mail_to("ada@example.org")  # asked for after the trapped request
        assert [m["To"].addresses[0].addr_spec for m in s.mails()] == ["ada@example.org"]
    assert sum("manage_honeypot ip=127.0.0.1" in r.getMessage() for r in caplog.records) == 1


def test_archive_footer_links_to_the_form(make_settings: Callable[..., Settings],
                                          tmp_path: Path) -> None:
    with site(make_settings, tmp_path) as s:
        page = s.client.get("/issues/")
        links = re.findall(r'<a href="([^"]+)">Manage preferences</a>', page.text)
        assert links == [f"{SITE}manage"]
        assert s.client.get(urlsplit(links[0]).path).status_code == 200


def test_a_dead_preferences_link_offers_the_form(make_settings: Callable[..., Settings],
                                                 tmp_path: Path) -> None:
    with site(make_settings, tmp_path) as s:
        r = s.client.get("/preferences?token=expired-or-forged")
        assert r.status_code == 400 and "This link does not work" in r.text
        assert f'<a href="{SITE}manage">Email me a new link</a>' in r.text
        other = s.client.get("/confirm?token=expired-or-forged")
        assert other.status_code == 400 and "Email me a new link" not in other.text
