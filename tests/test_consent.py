"""Consent is never overridden silently: every door (CLI, admin API, dashboard, import, form)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import sqlalchemy as sa
from smtpserver import SmtpTestServer
from webserver import running

from newsletter import pipeline
from newsletter.audience import subscriptions
from newsletter.audience.tokens import load_or_create_secret
from newsletter.config import Settings
from newsletter.models import ConsentEvent
from newsletter.pipeline.webapp import web_app
from newsletter.store import migrations
from newsletter.store.database import Store
from newsletter.store.migrations import BACKFILLED
from newsletter.store.schema import consent_events, deliveries, issues, subscribers

TOKEN = "consent-test-token-0123456789abcdef"
NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
OPTED_OUT = ("unsubscribed", "bounced", "complained")


def consent_settings(make_settings: Callable[..., Settings], tmp_path: Path,
                     extra: str = "") -> Settings:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n{extra}')
    return replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))


def cli(settings: Settings, *args: str,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(settings.path), "subscribers",
         *args], capture_output=True, text=True, cwd=settings.path.parent, input=stdin,
        timeout=120, check=False)


def opted_out(store: Store, email: str, status: str) -> int:
    """An address that was active and then left, bounced or complained."""
    sub = subscriptions.subscribe(store, email, "Was Here", method="form", ip="192.0.2.7",
                                  user_agent="UA", now=NOW - timedelta(days=30)).subscriber
    assert store.activate_subscriber(sub.id, NOW - timedelta(days=29))
    if status == "unsubscribed":
        assert store.unsubscribe_subscriber(sub.id, NOW - timedelta(days=2))
    else:
        assert store.set_subscriber_status(sub.id, status, NOW - timedelta(days=2))
    return sub.id


def history(store: Store, subscriber_id: int) -> list[ConsentEvent]:
    return store.consent_history(subscriber_id)


def outbox(tmp_path: Path) -> list[bytes]:
    folder = tmp_path / "outbox"
    return sorted(p.read_bytes() for p in folder.glob("*.eml")) if folder.exists() else []


def confirm_link(mail: bytes) -> str:
    body = message_from_bytes(mail).get_payload(decode=True)
    found = re.search(rb"https://\S+/confirm\?token=\S+", body)  # type: ignore[arg-type]
    assert found, body
    return found[0].decode()


def wait_for(check: Callable[[], object], seconds: float = 15.0) -> object:
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.05)  # polling interval inside a deadline
    return found


@dataclass
class Site:
    store: Store
    public: httpx.Client  # nothing attached
    api: httpx.Client  # the admin bearer token


@contextmanager
def site(settings: Settings) -> Iterator[Site]:
    """The whole web application as `newsletter serve` wires it, over real HTTP."""
    store = pipeline.open_store(settings)
    try:
        with running(web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as public, \
                httpx.Client(base_url=base, timeout=30,
                             headers={"authorization": f"Bearer {TOKEN}"}) as api:
            yield Site(store, public, api)
    finally:
        store.close()


# -- the command line ------------------------------------------------------------------------


def test_cli_refuses_every_opted_out_address_unless_resubscribed_with_a_reason(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = consent_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        for status in OPTED_OUT:
            email = f"{status}@example.org"
            sub_id = opted_out(store, email, status)
            before = (store.get_subscriber(sub_id), history(store, sub_id))
            # Every way of adding is refused alike; tried in full for the first status only
            # (each is a process of its own, ~1 s).
            every = ((), ("--confirmed",), ("--name", "New Name", "--confirmed"))
            for flags in every if status == OPTED_OUT[0] else every[2:]:
                r = cli(settings, "add", email, *flags)
                assert r.returncode == 2, (status, flags, r.stdout, r.stderr)
                assert r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
                assert r.stderr.startswith(f"error: {email}: not added: it is ")
                assert status in r.stderr and ("subscribe form" in r.stderr) == (
                    status != "complained")
                assert "nothing was changed" in r.stderr and "--resubscribe --reason" in r.stderr
            if status == OPTED_OUT[0]:
                r = cli(settings, "add", email, "--resubscribe")
                assert r.returncode == 2 and "needs a reason" in r.stderr
                assert r.stderr.count("\n") == 1
            # Refused means refused: the row and its history are exactly as they were.
            assert (store.get_subscriber(sub_id), history(store, sub_id)) == before
            r = cli(settings, "add", email, "--resubscribe", "--reason",
                    "asked at the book fair, 2026-10-30")
            assert r.returncode == 0, r.stderr
            assert f"subscribed again (was {status})" in r.stdout
            sub = store.get_subscriber(sub_id)
            assert sub is not None and sub.status == "active" and sub.consent_method == "admin"
            last = history(store, sub_id)[-1]
            assert (last.action, last.previous_status, last.reason) == (
                "resubscribe", status, "asked at the book fair, 2026-10-30")
            assert last.actor.startswith("cli ") and last.ip is None
            assert len(history(store, sub_id)) == len(before[1]) + 1
            shown = cli(settings, "history", email.upper())
            assert shown.returncode == 0 and shown.stdout.startswith(f"{email}: active\n")
            assert shown.stdout.splitlines()[-1].endswith(
                f"resubscribe (was {status}) by {last.actor}: asked at the book fair, 2026-10-30")
        assert outbox(tmp_path) == []  # nobody was mailed by any of it
    finally:
        store.close()


def test_cli_add_mails_the_confirmation_through_smtp(make_settings: Callable[..., Settings],
                                                     tmp_path: Path) -> None:
    with SmtpTestServer() as srv:
        settings = consent_settings(make_settings, tmp_path, f"""transport = "smtp"
from_address = "news@ledger.example.org"
[smtp]
host = "{srv.host}"
port = {srv.port}
security = "none"
timeout = 5
""")
        r = cli(settings, "add", "Nell@Example.org", "--name", "Nell")
        assert r.returncode == 0, r.stderr
        assert "added, pending confirmation" in r.stdout and "confirmation mail sent" in r.stdout
        assert "token=" not in r.stdout
        got = wait_for(lambda: srv.messages)
        assert isinstance(got, list) and len(got) == 1
        assert got[0].rcpt_tos == ("Nell@example.org",)
        link = confirm_link(got[0].data)
        again = cli(settings, "add", "nell@example.org")  # within the resend window
        assert again.returncode == 0 and "no new confirmation mail" in again.stdout
        assert len(srv.messages) == 1
    store = Store(settings.storage.database_url)
    try:
        token = link.partition("token=")[2]
        secret = load_or_create_secret(settings)
        done = subscriptions.confirm(store, secret, unquote(token), now=datetime.now(UTC),
                                     max_age=timedelta(hours=1))
        assert done.changed and done.subscriber.status == "active"
        assert [e.action for e in history(store, done.subscriber.id)] == ["admin", "confirm"]
    finally:
        store.close()
    assert outbox(tmp_path) == []  # SMTP was configured: nothing went to the outbox


def test_cli_add_says_so_when_the_mail_cannot_go(make_settings: Callable[..., Settings],
                                                  tmp_path: Path) -> None:
    with SmtpTestServer() as srv:
        port = srv.port  # closed again: nothing listens there now
    settings = consent_settings(make_settings, tmp_path, f"""transport = "smtp"
[smtp]
host = "127.0.0.1"
port = {port}
security = "none"
timeout = 2
""")
    r = cli(settings, "add", "olga@example.org")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    # Log lines (INFO) may come first; the operator's answer is the one error line.
    [error] = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert "stored as pending, but the confirmation mail was not sent" in error
    assert "Connection refused" in error and r.stderr.endswith(error + "\n")
    store = Store(settings.storage.database_url)
    try:
        sub = store.get_subscriber_by_key("olga@example.org")
        # Still pending, and the resend window is free: the person's own request mails at once.
        assert sub is not None and sub.status == "pending" and sub.confirmation_sent_at is None
    finally:
        store.close()


# -- the admin API and the dashboard -----------------------------------------------------------


def test_api_answers_409_for_opted_out_addresses_and_records_a_resubscribe(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = consent_settings(make_settings, tmp_path)
    with site(settings) as web:
        sub_id = opted_out(web.store, "quinn@example.org", "unsubscribed")
        before = web.store.get_subscriber(sub_id)
        for body in ({}, {"confirmed": True}, {"name": "Q", "confirmed": True}):
            r = web.api.post("/admin/api/subscribers", json={"email": "Quinn@example.org", **body})
            assert r.status_code == 409, r.text
            answer = r.json()
            assert answer["status"] == "unsubscribed" and "resubscribe" in answer["how"]
            assert "not added: it is unsubscribed" in answer["error"]
            assert '"resubscribe": true' in answer["error"]
        for bad in ({"resubscribe": True}, {"resubscribe": True, "reason": "  \n "},
                    {"resubscribe": "yes", "reason": "x"}, {"resubscribe": True, "reason": 3}):
            r = web.api.post("/admin/api/subscribers", json={"email": "quinn@example.org", **bad})
            assert r.status_code == 400 and r.json()["error"], bad
        assert web.store.get_subscriber(sub_id) == before
        r = web.api.post("/admin/api/subscribers", json={
            "email": "quinn@example.org", "resubscribe": True, "reason": "ticket #4411"})
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "reactivated" and r.json()["subscriber"]["status"] == "active"
        last = history(web.store, sub_id)[-1]
        assert (last.action, last.reason, last.actor, last.previous_status) == (
            "resubscribe", "ticket #4411", "api 127.0.0.1", "unsubscribed")
        # A new address added without "confirmed" gets the double opt-in mail.
        r = web.api.post("/admin/api/subscribers", json={"email": "rae@example.org"})
        assert r.status_code == 201 and r.json()["confirmation_sent"] is True
    assert len(outbox(tmp_path)) == 1


def csrf_for(page: str, action: str) -> str:
    m = re.search(rf'action="{re.escape(action)}"[^>]*>\s*<input type="hidden" name="csrf" '
                  rf'value="([A-Za-z0-9_-]+)"', page)
    assert m, action
    return m[1]


def test_dashboard_form_refuses_then_resubscribes_with_a_reason(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = consent_settings(make_settings, tmp_path)
    with site(settings) as web:
        sub_id = opted_out(web.store, "sam@example.org", "bounced")
        before = web.store.get_subscriber(sub_id)
        r = web.public.post("/admin/login", data={"token": TOKEN})
        assert r.status_code == 303
        csrf = csrf_for(web.public.get("/admin/").text, "/admin/subscribers")
        # Without the session's CSRF token the form does nothing at all.
        assert web.public.post("/admin/subscribers", data={
            "email": "sam@example.org", "resubscribe": "1", "reason": "x",
            "csrf": "0" * 64}).status_code == 403
        for fields in ({}, {"confirmed": "1"}, {"resubscribe": "1"}):
            r = web.public.post("/admin/subscribers",
                                data={"csrf": csrf, "email": "sam@example.org", **fields})
            assert r.status_code == 303 and r.headers["location"] == "/admin/"
            page = web.public.get("/admin/").text
            assert 'class="flash bad"' in page, fields
            assert ("needs a reason" in page if fields.get("resubscribe")
                    else "not added: it is marked bounced" in page), fields
        assert web.store.get_subscriber(sub_id) == before
        r = web.public.post("/admin/subscribers", data={
            "csrf": csrf, "email": "sam@example.org", "resubscribe": "1",
            "reason": "new mailbox, asked <by> phone"})
        page = web.public.get("/admin/").text
        assert 'class="flash ok"' in page and "subscribed again" in page
        sub = web.store.get_subscriber(sub_id)
        assert sub is not None and sub.status == "active" and sub.hard_bounces == 0
        last = history(web.store, sub_id)[-1]
        assert (last.action, last.reason, last.actor) == (
            "resubscribe", "new mailbox, asked <by> phone", "dashboard 127.0.0.1")
        # A new address from the form: pending, and the confirmation mail goes out.
        web.public.post("/admin/subscribers", data={"csrf": csrf, "email": "tia@example.org"})
        assert "a confirmation mail went out" in web.public.get("/admin/").text
    assert len(outbox(tmp_path)) == 1


# -- imports ---------------------------------------------------------------------------------


def test_import_skips_pending_and_opted_out_rows_with_the_reason(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = consent_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        waiting = subscriptions.subscribe(store, "wait@example.org", "W", method="form",
                                          ip="192.0.2.1", user_agent="UA", now=NOW).subscriber
        gone = opted_out(store, "gone@example.org", "unsubscribed")
        spam = opted_out(store, "spam@example.org", "complained")
        subscriptions.subscribe(store, "here@example.org", "", method="admin", ip=None,
                                user_agent=None, now=NOW, confirmed=True)
    finally:
        store.close()
    csv_text = ("email,name\nnew@example.org,N\nwait@example.org,W2\ngone@example.org,G\n"
                "spam@example.org,S\nhere@example.org,H\n")
    path = tmp_path / "list.csv"
    path.write_text(csv_text, encoding="utf-8")
    r = cli(settings, "import", str(path))
    assert r.returncode == 0, r.stderr
    assert ("5 rows: 1 added, 1 merged, 3 skipped (1 complained, 1 pending confirmation, "
            "1 unsubscribed), 0 invalid") in r.stdout
    lines = [line for line in r.stderr.splitlines() if line.startswith(str(path))]
    assert [line.split(": ")[0] for line in lines] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "not yet confirmed" in lines[0] and "never subscribes it again" in lines[1]
    with site(settings) as web:
        for sub_id, status in ((waiting.id, "pending"), (gone, "unsubscribed"),
                               (spam, "complained")):
            sub = web.store.get_subscriber(sub_id)
            assert sub is not None and sub.status == status
        assert web.store.get_subscriber(waiting.id).consent_method == "form"  # type: ignore[union-attr]
        new = web.store.get_subscriber_by_key("new@example.org")
        assert new is not None and new.status == "active"
        [event] = history(web.store, new.id)
        assert event.action == "import" and event.actor.startswith("cli ")
        # The API's import: the same rule and the same report.
        r = web.api.post("/admin/api/subscribers/import", content=csv_text.encode(),
                         headers={"content-type": "text/csv"})
        assert r.status_code == 200, r.text
        report = r.json()
        assert (report["added"], report["skipped"], report["suppressed"]) == (0, 3, 2)
        assert report["skipped_by"] == {"pending": 1, "unsubscribed": 1, "complained": 1}
        assert [row["line"] for row in report["skipped_rows"]] == [3, 4, 5]
        assert web.store.get_subscriber(waiting.id).status == "pending"  # type: ignore[union-attr]
    assert outbox(tmp_path) == []


# -- the public form: a person's own consent -----------------------------------------------------


def test_form_signup_after_unsubscribing_is_the_persons_own_recorded_consent(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = consent_settings(make_settings, tmp_path)
    with site(settings) as web:
        r = web.public.post("/subscribe", data={"email": "uma@example.org"},
                            headers={"user-agent": "ConsentTest/1"})
        assert r.status_code == 202
        wait_for(lambda: len(outbox(tmp_path)) == 1)  # mailed after the response
        seen = {confirm_link(outbox(tmp_path)[0])}
        link = urlsplit(next(iter(seen)))
        r = web.public.post(f"{link.path}?{link.query}")  # the confirm page's button
        assert r.status_code == 200
        sub = web.store.get_subscriber_by_key("uma@example.org")
        assert sub is not None and sub.status == "active"
        wait_for(lambda: len(outbox(tmp_path)) == 2)  # and the welcome, after the page
        web.store.unsubscribe_subscriber(sub.id, datetime.now(UTC))
        # Later, outside the resend window, the person signs up again themself.
        web.store.update_subscriber(sub.id, datetime.now(UTC),
                                    confirmation_sent_at=datetime.now(UTC) - timedelta(days=1))
        r = web.public.post("/subscribe", data={"email": "uma@example.org"},
                            headers={"user-agent": "ConsentTest/1"})
        assert r.status_code == 202
        wait_for(lambda: len(outbox(tmp_path)) == 3)
        assert web.store.get_subscriber(sub.id).status == "unsubscribed"  # type: ignore[union-attr]
        fresh = [m for m in outbox(tmp_path) if message_from_bytes(m)["Subject"]
                 .startswith("Confirm") and confirm_link(m) not in seen]
        assert len(fresh) == 1
        link = urlsplit(confirm_link(fresh[0]))
        r = web.public.post(f"{link.path}?{link.query}")
        assert r.status_code == 200
        assert web.store.get_subscriber(sub.id).status == "active"  # type: ignore[union-attr]
        events = history(web.store, sub.id)
        assert [(e.action, e.previous_status) for e in events] == [
            ("form", None), ("confirm", "pending"), ("form", "unsubscribed"),
            ("confirm", "unsubscribed")]
        assert {(e.actor, e.ip, e.user_agent) for e in events if e.action == "form"} == {
            ("", "127.0.0.1", "ConsentTest/1")}


# -- the consent history itself ---------------------------------------------------------------


def test_migration_from_version_3_backfills_the_history(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert migrations.migrate(conn, target=3)[-1] == 3
            base = {"sections": "[]", "hard_bounces": 0, "created_at": NOW, "updated_at": NOW,
                    "name": "", "consent_at": None, "consent_method": None, "consent_ip": None,
                    "consent_user_agent": None, "confirmed_at": None}
            conn.execute(subscribers.insert(), [
                {**base, "email": "f@example.org", "email_key": "f@example.org",
                 "status": "active", "consent_at": NOW, "consent_method": "form",
                 "consent_ip": "192.0.2.5", "consent_user_agent": "UA",
                 "confirmed_at": NOW + timedelta(minutes=5)},
                {**base, "email": "i@example.org", "email_key": "i@example.org",
                 "status": "unsubscribed", "consent_at": NOW, "consent_method": "import"},
                {**base, "email": "n@example.org", "email_key": "n@example.org",
                 "status": "pending"},  # no consent recorded: nothing to backfill
            ])
            conn.commit()
            assert migrations.migrate(conn, target=4) == [4]
            rows = conn.execute(sa.select(
                subscribers.c.email, consent_events.c.action, consent_events.c.at,
                consent_events.c.ip, consent_events.c.reason)
                .join(subscribers, subscribers.c.id == consent_events.c.subscriber_id)
                .order_by(subscribers.c.email, consent_events.c.at)).all()
            assert [tuple(r) for r in rows] == [
                ("f@example.org", "form", NOW, "192.0.2.5", BACKFILLED),
                ("f@example.org", "confirm", NOW + timedelta(minutes=5), None, BACKFILLED),
                ("i@example.org", "import", NOW, None, BACKFILLED)]
    finally:
        engine.dispose()


def test_history_is_erased_with_a_deleted_subscriber(db_url: str) -> None:
    store = Store(db_url)
    try:
        sub = subscriptions.subscribe(store, "vic@example.org", "", method="form",
                                      ip="192.0.2.8", user_agent=None, now=NOW).subscriber
        kept = subscriptions.subscribe(store, "wes@example.org", "", method="form",
                                       ip="192.0.2.9", user_agent="UA", now=NOW).subscriber
        assert len(history(store, sub.id)) == 1
        assert store.remove_subscriber(sub.id, NOW) == "deleted"
        with store.engine.begin() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(consent_events).where(
                consent_events.c.subscriber_id == sub.id)).scalar() == 0
            # Past deliveries keep the other row, anonymised: its history loses the addresses.
            issue_id = conn.execute(issues.insert().values(
                number=1, status="sent", subject="s", preheader="", created=NOW,
                window_start=NOW, window_end=NOW, html="", text="", updated_at=NOW)
            ).inserted_primary_key[0]
            conn.execute(deliveries.insert().values(
                issue_id=issue_id, subscriber_id=kept.id, status="sent", attempts=1,
                next_attempt_at=NOW, updated_at=NOW))
        assert store.remove_subscriber(kept.id, NOW) == "anonymised"
        [event] = history(store, kept.id)
        assert (event.action, event.ip, event.user_agent) == ("form", None, None)
    finally:
        store.close()
