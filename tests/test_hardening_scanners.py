"""Hardening, mail scanners: opening every link the service mails changes nothing.

Corporate scanners (Microsoft Safe Links and the like) fetch every link in a message, with
GET and HEAD, before the person sees it. The full app as `newsletter serve` wires it, on
uvicorn, with real mails from the outbox: a confirmation, a manage-your-subscription mail
and an issue.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from webserver import running

from newsletter import pipeline
from newsletter.audience import subscriptions
from newsletter.config import Settings
from newsletter.pipeline import sending
from newsletter.store.database import Store

SCANNER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"


@dataclass
class Site:
    settings: Settings
    store: Store
    client: httpx.Client
    outbox: Path

    def mails(self, n: int, timeout: float = 10) -> list[email.message.EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(list(self.outbox.glob("*.eml"))) < n:
            assert time.monotonic() < deadline, "mail did not arrive"
            time.sleep(0.02)  # polling inside a deadline: mails go out after the response
        return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
                for p in sorted(self.outbox.glob("*.eml"))]

    def local(self, url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.path}?{parts.query}" if parts.query else parts.path

    def state(self) -> list[Any]:
        """Every subscriber row and consent record, to compare before and after."""
        return [(s, self.store.consent_history(s.id))
                for s in self.store.list_subscribers(limit=1000)]


@pytest.fixture
def site(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Site]:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    store = pipeline.open_store(settings)
    try:
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=10) as client:
            yield Site(settings, store, client, tmp_path / "outbox")
    finally:
        store.close()


def links_in(mail: email.message.EmailMessage) -> set[str]:
    """Every URL in the mail: the List-Unsubscribe header, the text and the HTML parts."""
    found = set(re.findall(r"<(https?://[^>]+)>", mail.get("List-Unsubscribe", "")))
    for part in mail.walk():
        if part.get_content_maintype() == "text":
            text = part.get_content()
            found |= {html.unescape(u) for u in re.findall(r"https?://[^\s\"'<>]+", text)}
    return found


def test_opening_every_mailed_link_with_get_and_head_changes_nothing(site: Site) -> None:
    now = datetime.now(UTC)
    reader = subscriptions.subscribe(site.store, "reader@example.org", "Reader",
                                     method="admin", ip=None, user_agent=None, now=now,
                                     confirmed=True).subscriber
    Path(site.settings.sources[0].path, "a.md").write_text(
        f"---\ntitle: A piece\ndate: {(now - timedelta(hours=1)).isoformat()}\n---\nText.\n",
        "utf-8")
    pipeline.collect(site.settings, site.store)
    issue = pipeline.build_issue(site.settings, site.store).issue
    assert issue is not None
    sending.start_sending(site.settings, site.store, issue)
    sending.run_worker(site.settings, site.store, issue)
    assert site.client.post("/manage", data={"email": reader.email}).status_code == 202
    assert site.client.post("/subscribe", data={"email": "new@example.org"}).status_code == 202
    mails = site.mails(3)
    ours = {url for mail in mails for url in links_in(mail)
            if url.startswith(site.settings.site_url)}
    kinds = {urlsplit(url).path for url in ours}
    assert {"/confirm", "/unsubscribe", "/preferences"} <= kinds, ours
    before = site.state()

    with httpx.Client(base_url=str(site.client.base_url), timeout=10, follow_redirects=True,
                      headers={"user-agent": SCANNER}) as scanner:
        for url in sorted(ours):
            for method in ("GET", "HEAD", "GET", "HEAD"):  # scanners come back, too
                r = scanner.request(method, site.local(url))
                assert r.status_code < 500, (method, url)
    assert site.state() == before
    newcomer = site.store.get_subscriber_by_key("new@example.org")
    assert newcomer is not None and newcomer.status == "pending"

    # The person comes after the scanner: the links still work (none was used up).
    [confirm] = [url for url in ours if "/confirm?" in url]
    page = site.client.get(site.local(confirm)).text
    token = re.search(r'name="token" value="([^"]+)"', page)
    assert token is not None
    r = site.client.post("/confirm", data={"token": html.unescape(token[1])})
    assert r.status_code == 200 and "You are subscribed" in r.text
    newcomer = site.store.get_subscriber(newcomer.id)
    assert newcomer is not None and newcomer.status == "active"
    # The RFC 8058 one-click POST of the issue's List-Unsubscribe header still acts at once.
    to_reader = next(m for m in mails if m.get("List-Unsubscribe-Post")
                     and "reader@" in str(m["To"]))
    [one_click] = re.findall(r"<(https://[^>]+)>", to_reader["List-Unsubscribe"])
    r = site.client.post(site.local(one_click), data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and "location" not in r.headers
    gone = site.store.get_subscriber(reader.id)
    assert gone is not None and gone.status == "unsubscribed"
