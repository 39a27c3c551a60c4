"""An admin-enabled site on a real port, its token and the dashboard's CSRF field."""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from webserver import running

from newsletter import log, pipeline
from newsletter.audience import subscriptions
from newsletter.audience.subscribers_csv import import_csv
from newsletter.audience.tokens import load_or_create_secret
from newsletter.compose.render import personalize
from newsletter.config import Settings
from newsletter.errors import NewsletterError
from newsletter.models import Subscriber
from newsletter.pipeline import control, editing, notices, review, sending
from newsletter.pipeline.issue_links import IssueLinks
from newsletter.store.database import Store
from newsletter.web import create_app
from newsletter.web.admin import admin_routes
from newsletter.web.admin_api import admin_api_routes
from newsletter.web.admin_http import AdminDeps
from newsletter.web.metrics import metrics_routes

TOKEN = "admin-test-token-0123456789abcdef"
WRONG = "admin-test-token-0123456789abcdeX"


def thread_sender(settings: Settings, store: Store) -> Callable[..., None]:
    """Fill the ledger now, deliver in a daemon thread; one thread per issue at a time."""
    threads: dict[int, threading.Thread] = {}
    lock = threading.Lock()

    def work(number: int) -> None:
        try:
            sending.run_worker(settings, store, sending.get_sendable(store, number))
        except Exception as exc:  # a thread has nobody to raise to: log it
            log.event("admin.send_failed", number=number, error=f"{type(exc).__name__}: {exc}")

    def send(number: int, actor: str = "api", new_subscribers: bool = False,
             version: str | None = None) -> None:
        issue = sending.get_sendable(store, number)  # NewsletterError: the API's 409
        with lock:
            if number in threads and threads[number].is_alive():
                return
            sending.start_sending(settings, store, issue, actor=actor,
                                  new_subscribers=new_subscribers, version=version)
            threads[number] = threading.Thread(target=work, args=(number,), daemon=True)
            threads[number].start()

    return send


def admin_deps(settings: Settings, store: Store, **overrides: Any) -> AdminDeps:
    def collect_now() -> dict[str, Any]:
        report = pipeline.collect(settings, store)
        pipeline.publish_feeds(settings, store)
        return {"new": report.new, "updated": report.updated, "unchanged": report.unchanged,
                "errors": report.errors, "warnings": report.warnings}

    def preview_html(number: int) -> str:
        issue = store.get_issue(number, with_articles=False)
        if issue is None:
            raise NewsletterError(f"issue {number}: no such issue")
        site = settings.site_url  # the sample values of pipeline.write_preview
        return personalize(issue.html, unsubscribe_url=site + "unsubscribe?preview",
                           preferences_url=site + "preferences?preview", name="Reader")

    secret, mail = load_or_create_secret(settings), notices.confirmation_sender(settings)

    def send_confirmation(sub: Subscriber) -> None:
        token = subscriptions.confirm_token(secret, sub, datetime.now(UTC))
        mail(sub.email, sub.name, subscriptions.confirm_url(settings.site_url, token))

    sender = thread_sender(settings, store)
    values: dict[str, Any] = {
        "token": settings.secrets.admin_token, "store": store, "collect_now": collect_now,
        "build_issue": lambda force, actor="api": pipeline.build_issue(
            settings, store, force=force, actor=actor),
        "edit_issue": lambda n, changes, actor: editing.edit_issue(settings, store, n,
                                                                   changes, actor),
        "issue_history": lambda n: editing.issue_history(store, n),
        "send_issue": sender,
        "schedule_issue": lambda n, at, actor: control.schedule_issue(store, n, at, actor=actor),
        "pause_issue": lambda n, actor: control.pause_issue(store, n, actor=actor),
        "resume_issue": lambda n, actor: control.resume_issue(store, n, actor=actor),
        "cancel_issue": lambda n, actor: control.cancel_issue(store, n, actor=actor),
        "approve_issue": lambda n, actor: review.approve_and_send(store, n, actor, sender),
        "send_tests": lambda n, to, actor: review.send_test_copies(settings, store, n, to,
                                                                   actor=actor),
        "editor_of": IssueLinks.from_settings(settings, store).editor_of,
        "review": settings.newsletter.review,
        "untitled_section": settings.newsletter.untitled_section,
        "overview": lambda: control.overview(store, limit=10), "preview_html": preview_html,
        "import_subscribers": lambda path, actor="": import_csv(
            store, path, now=datetime.now(UTC), smtputf8=settings.mail.smtputf8, actor=actor),
        "sessions": store.sessions,
        "send_confirmation": send_confirmation, "publication_name": settings.publication.name,
        "smtputf8": settings.mail.smtputf8}
    values.update(overrides)
    return AdminDeps(**values)


def admin_app(settings: Settings, deps: AdminDeps) -> Any:
    routes = [*admin_api_routes(deps), *admin_routes(deps), *metrics_routes(deps)]
    return create_app(feeds_dir=settings.feeds_dir, publication_name=settings.publication.name,
                      feeds_url=settings.feeds_url, extra_routes=routes)


ARTICLE = """---
title: Harbour cranes return
date: {date}
section: World
summary: The port reopens.
---

The cranes are back on the quay.
"""


def admin_settings(make_settings: Callable[..., Settings], tmp_path: Path,
                   token: str = TOKEN) -> Settings:
    date = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    (tmp_path / "articles").mkdir(exist_ok=True)
    (tmp_path / "articles" / "cranes.md").write_text(ARTICLE.format(date=date), "utf-8")
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    # As NEWSLETTER_SECRETS_ADMIN_TOKEN would set it (conftest writes [secrets] itself).
    return replace(settings, secrets=replace(settings.secrets, admin_token=token))


@dataclass
class Admin:
    base: str
    api: httpx.Client  # carries the token
    anon: httpx.Client  # carries nothing
    store: Store
    settings: Settings
    deps: AdminDeps
    outbox: Path

    def wait_until(self, check: Callable[[], Any], seconds: float = 15.0) -> Any:
        deadline = time.monotonic() + seconds
        while not (found := check()):
            assert time.monotonic() < deadline, "condition not met before the deadline"
            time.sleep(0.05)  # polling interval inside a deadline
        return found


@contextmanager
def serve(settings: Settings, store: Store, tmp_path: Path, **overrides: Any) -> Iterator[Admin]:
    deps = admin_deps(settings, store, **overrides)
    with running(admin_app(settings, deps)) as base, \
            httpx.Client(base_url=base, headers={"authorization": f"Bearer {TOKEN}"},
                         timeout=30) as api, \
            httpx.Client(base_url=base, timeout=30) as anon:
        yield Admin(base, api, anon, store, settings, deps, tmp_path / "outbox")


def csrf_of(page: str, action: str) -> str:
    m = re.search(rf'action="{re.escape(action)}"[^>]*>\s*<input type="hidden" name="csrf" '
                  rf'value="([A-Za-z0-9_-]+)"', page)
    assert m, action
    return m[1]


@contextmanager
def login(admin: Admin) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=admin.base, timeout=30) as client:
        r = client.post("/admin/login", data={"token": TOKEN})
        assert r.status_code == 303 and r.headers["location"] == "/admin/"
        yield client


def form_fields(page: str, action: str) -> dict[str, str]:
    """The hidden fields of the page's one form posting to `action`: what a browser sends
    when its button is pressed (the CSRF token, and whatever else the page put there)."""
    forms = re.findall(rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>',
                       page, re.S)
    assert len(forms) == 1, (action, len(forms))
    return {name: html.unescape(value) for name, value in re.findall(
        r'<input type="hidden" name="([^"]+)" value="([^"]*)">', forms[0])}


def flash_of(page: str) -> str:
    """The dashboard's flash line (after an action's redirect), unescaped; "" without one."""
    found = re.search(r'<div class="flash (?:ok|bad)" role="status">([^<]*)</div>', page)
    return html.unescape(found[1]) if found else ""
