"""Hardening, SMTP: a misbehaving relay through start_sending + run_worker, ledger checked.

Every case ends by reading the ledger (delivery_counts and each row's last reply) and, where
the run can go on, by finishing the issue and counting what each address received. Related:
test_send.py (misbehaving recipients, 421, server down, SIGKILL), test_smtp.py (one
connection at a time).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.deliver.engine import Policy, RateLimit, Summary, deliver
from newsletter.models import Issue
from newsletter.pipeline import sending
from newsletter.pipeline.transports import pool_from_settings
from newsletter.store import schema as s
from newsletter.store.database import Store
from tests.helpers.sending import r, seed, smtp_settings, smtp_toml, start

ROOT = Path(__file__).resolve().parent.parent


def ledger(store: Store, issue: Issue) -> dict[str, tuple[str, int | None, str]]:
    """address -> (status, last SMTP code, last reply) for every row of the issue."""
    d, sub = s.deliveries.c, s.subscribers.c
    q = (sa.select(sub.email, d.status, d.last_code, d.last_reply)
         .join(s.subscribers, sub.id == d.subscriber_id).where(d.issue_id == issue.id))
    with store.engine.connect() as conn:
        return {r.email: (r.status, r.last_code, r.last_reply or "") for r in conn.execute(q)}


def wait_until_due(store: Store, issue: Issue, seconds: float = 15) -> None:
    """Poll until every waiting row of the issue is due (not just the first)."""
    d = s.deliveries.c
    last = sa.select(sa.func.max(d.next_attempt_at)).where(
        d.issue_id == issue.id, d.status.in_(("queued", "deferred")))
    deadline = time.monotonic() + seconds
    while True:
        with store.engine.connect() as conn:
            due = conn.execute(last).scalar()
        if due is None or due <= datetime.now(UTC):
            return
        assert time.monotonic() < deadline, "deferred rows never became due"
        time.sleep(0.05)


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("newsletter")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def relay_settings(make_settings: Callable[..., Settings], srv: SmtpTestServer, *,
                   security: str = "none", timeout: float = 5, smtp: str = "",
                   database_url: str = "") -> Settings:
    return make_settings(database_url=database_url, extra=smtp_toml(
        srv, f"timeout = {timeout}\n{smtp}", "retry_initial = 1", security=security))


def test_mixed_replies_in_one_run_each_row_settled_once(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer(rcpt_codes={r(1): 450, r(2): 452, r(3): 550, r(4): 553},
                        data_codes={r(5): 552, r(6): 554}) as srv:
        settings = smtp_settings(make_settings, srv)
        store, issue = start(settings, 8)
        summary = sending.run_worker(settings, store, issue)
        assert (summary.sent, summary.deferred, summary.failed) == (2, 2, 4)
        rows = ledger(store, issue)
        assert {a: (st, code) for a, (st, code, _) in rows.items()} == {
            r(0): ("sent", 250), r(7): ("sent", 250),
            r(1): ("deferred", 450), r(2): ("deferred", 452),
            r(3): ("failed", 550), r(4): ("failed", 553),
            r(5): ("failed", 552), r(6): ("failed", 554)}
        assert rows[r(2)][2].startswith("RCPT: 452")
        assert rows[r(5)][2].startswith("end of data: 552")
        # 550 and 553 say the address is bad; 552 and 554 are about this message only.
        status = {a: store.get_subscriber_by_key(a).status for a in rows}  # type: ignore[union-attr]
        assert (status[r(3)], status[r(4)], status[r(5)], status[r(6)]) == (
            "bounced", "bounced", "active", "active")

        srv.rcpt_codes.clear()
        wait_until_due(store, issue)
        sending.run_worker(settings, store, issue)
        assert store.delivery_counts(issue.id)["sent"] == 4  # type: ignore[arg-type]
        assert store.get_issue(issue.number).status == "sent"  # type: ignore[union-attr]
        before = len(srv.messages)
        sending.run_worker(settings, store, issue)  # a third run has nothing left to send
        assert len(srv.messages) == before
        got = Counter(m.rcpt_tos[0] for m in srv.messages)
        # Data went out once per address it was accepted for (552/554 took it and refused).
        assert got == Counter({r(0): 1, r(7): 1, r(1): 1, r(2): 1, r(5): 1, r(6): 1})
        store.close()


def test_421_mid_session_defers_the_rest_then_each_is_sent_once(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer(close_after=2) as srv:
        settings = smtp_settings(make_settings, srv)
        store, issue = start(settings, 10)
        summary = sending.run_worker(settings, store, issue)
        assert "421" in summary.stopped
        rows = ledger(store, issue)
        waiting = {a for a, (st, _, _) in rows.items() if st == "deferred"}
        assert waiting and all(st in ("sent", "deferred") for st, _, _ in rows.values())
        assert all("421" in rows[a][2] for a in waiting)
        srv.close_after = None
        wait_until_due(store, issue)
        sending.run_worker(settings, store, issue)
        assert store.delivery_counts(issue.id)["sent"] == 10  # type: ignore[arg-type]
        assert Counter(m.rcpt_tos[0] for m in srv.messages) == Counter(
            {r(i): 1 for i in range(10)})
        store.close()


def test_a_row_announced_ahead_whose_message_cannot_be_built_delivers_nothing(
        make_settings: Callable[..., Settings]) -> None:
    # One connection, so each next row's envelope goes out behind the previous message's
    # data. This address passes the envelope check but no To: header may carry it, so its
    # message is never built: the connection announcing it must close, not send a "." (an
    # empty message), and every other reader still gets exactly one copy.
    bad = "reader3@odd_domain.example.org"
    with SmtpTestServer() as srv:
        settings = relay_settings(make_settings, srv, smtp="concurrency = 1")
        store = pipeline.open_store(settings)
        seed(store, 6)
        with store.engine.begin() as conn:
            conn.execute(s.subscribers.update().where(s.subscribers.c.email == r(3))
                         .values(email=bad, email_key=bad))
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None
        sending.start_sending(settings, store, issue)
        summary = sending.run_worker(settings, store, issue)
        rows = ledger(store, issue)
        assert (summary.sent, summary.failed) == (5, 1)
        assert rows[bad][0] == "failed" and rows[bad][2].startswith("message not built")
        assert Counter(m.rcpt_tos[0] for m in srv.messages) == Counter(
            {r(i): 1 for i in range(6) if i != 3})
        assert all(m.data for m in srv.messages)
        store.close()


class _Recording:
    """A connection that passes everything on and notes each `then` (envelope ahead)."""

    def __init__(self, conn: Any, aheads: list[object]) -> None:
        self.conn, self.aheads, self.pipelining = conn, aheads, conn.pipelining

    async def send(self, sender: str, recipient: str, message: bytes,
                   then: tuple[str, str] | None = None) -> Any:
        self.aheads.append(then)
        return await self.conn.send(sender, recipient, message, then)

    async def close(self) -> None:
        await self.conn.close()


def _paced_run(settings: Settings, store: Store, issue: Issue,
               limiter: RateLimit) -> tuple[Summary, list[object]]:
    aheads: list[object] = []
    pool = pool_from_settings(settings)

    class Pool:
        async def connect(self) -> _Recording:
            return _Recording(await pool.connect(), aheads)

    plan = sending.make_plan(settings, store, issue)
    summary = asyncio.run(deliver(store, plan, Pool(), Policy(concurrency=1), owner="w",
                                  limiter=limiter))
    return summary, aheads


def test_rate_limit_paces_messages_and_sends_no_envelope_ahead(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    # 10 messages/s on one connection, on a clock the test controls: time moves only when
    # the limiter sleeps, so the pauses are exact however loaded the machine is. The next
    # envelope is never sent ahead while pacing (the server would wait in DATA for the
    # whole pause); the unpaced run shows the check can tell.
    with SmtpTestServer() as srv:
        settings = relay_settings(make_settings, srv)
        store, issue = start(settings, 6)
        now = [100.0]
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            now[0] += seconds
            await asyncio.sleep(0)

        summary, aheads = _paced_run(settings, store, issue,
                                     RateLimit(10, clock=lambda: now[0], sleep=sleep))
        assert summary.sent == 6
        assert slept == pytest.approx([0.1] * 5)  # the first goes at once, then one per slot
        assert aheads == [None] * 6
        store.close()
    with SmtpTestServer() as srv:
        settings = relay_settings(make_settings, srv,
                                  database_url=f"sqlite:///{tmp_path / 'unpaced.db'}")
        store, issue = start(settings, 6)
        summary, aheads = _paced_run(settings, store, issue, RateLimit(0))
        assert summary.sent == 6 and any(aheads)  # unpaced, envelopes do ride ahead
        store.close()


def test_rate_limit_on_the_real_clock_spreads_the_messages(
        make_settings: Callable[..., Settings]) -> None:
    # Only a lower bound: a loaded machine makes the run longer, never shorter, and an
    # unpaced run of six messages on loopback takes a few milliseconds.
    with SmtpTestServer() as srv:
        settings = relay_settings(make_settings, srv, smtp="concurrency = 1\nrate = 10")
        store, issue = start(settings, 6)
        assert sending.run_worker(settings, store, issue).sent == 6
        mails = [t for verb, t in srv.times if verb == "MAIL"]
        store.close()
    assert len(mails) == 6
    assert mails[-1] - mails[0] >= 0.45  # five pauses of 0.1 s (timers may fire a bit early)


def test_server_down_at_the_start_then_back_sends_each_once(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer() as gone:
        settings = smtp_settings(make_settings, gone)
    store, issue = start(settings, 4)
    summary = sending.run_worker(settings, store, issue)
    assert summary.stopped.startswith("cannot connect")
    rows = ledger(store, issue)
    assert {st for st, _, _ in rows.values()} == {"deferred"}
    assert all(reply.startswith("cannot connect") for _, _, reply in rows.values())
    with SmtpTestServer() as back:
        settings = smtp_settings(make_settings, back)  # same database, the relay moved back
        wait_until_due(store, issue)
        sending.run_worker(settings, store, issue)
        assert Counter(m.rcpt_tos[0] for m in back.messages) == Counter(
            {r(i): 1 for i in range(4)})
    assert store.get_issue(issue.number).status == "sent"  # type: ignore[union-attr]
    store.close()


@pytest.mark.parametrize(("tls", "reason"), [
    ("broken", "STARTTLS failed"),  # offered, then refused with 454
    (None, "does not offer STARTTLS"),
])
def test_starttls_failure_never_falls_back_to_plain_text(
        make_settings: Callable[..., Settings], tls: str | None, reason: str) -> None:
    with SmtpTestServer(tls=tls) as srv:  # type: ignore[arg-type]
        settings = relay_settings(make_settings, srv, security="starttls")
        store, issue = start(settings, 3)
        summary = sending.run_worker(settings, store, issue)
        assert summary.stopped.startswith("cannot connect") and reason in summary.stopped
        assert [verb for verb, _ in srv.commands] == []  # not one MAIL, in plain text or not
        assert srv.messages == []
        rows = ledger(store, issue)
        assert {st for st, _, _ in rows.values()} == {"deferred"}
        assert all(reason in reply for _, _, reply in rows.values())
        assert store.get_issue(issue.number).status == "sending"  # type: ignore[union-attr]
        store.close()


def test_535_authentication_failure_defers_everyone_and_hides_the_password(
        make_settings: Callable[..., Settings]) -> None:
    password = "wrong-Password-4321"
    with SmtpTestServer(auth=("newsletter", "right-password")) as srv:
        settings = relay_settings(make_settings, srv,
                                  smtp=f'username = "newsletter"\npassword = "{password}"')
        with captured_logs() as logs:
            store, issue = start(settings, 3)
            summary = sending.run_worker(settings, store, issue)
        assert "AUTH refused: 535" in summary.stopped
        assert [verb for verb, _ in srv.commands] == [] and srv.messages == []
        rows = ledger(store, issue)
        assert {st for st, _, _ in rows.values()} == {"deferred"}
        assert all("AUTH refused: 535" in reply for _, _, reply in rows.values())
        assert password not in repr(rows) and password not in summary.stopped
        assert any("deliver.stopped" in line for line in logs)
        assert not any(password in line for line in logs)
        store.close()


def test_no_reply_after_the_final_dot_is_recorded_and_sent_at_most_twice(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer(hang_after_data={r(2)}) as srv:
        # Replies are awaited 1 s, so the hang is noticed quickly.
        settings = relay_settings(make_settings, srv, timeout=1, smtp="concurrency = 2")
        store, issue = start(settings, 5)
        sending.run_worker(settings, store, issue)
        rows = ledger(store, issue)
        status, code, reply = rows[r(2)]
        assert (status, code) == ("deferred", None)
        assert reply.startswith("outcome unknown, will retry (may arrive twice): no reply after "
                                "the data")
        assert [a for a, (st, _, _) in rows.items() if st == "sent"] == [
            r(i) for i in (0, 1, 3, 4)]
        srv.hang_after_data = False
        wait_until_due(store, issue)
        sending.run_worker(settings, store, issue)
        assert ledger(store, issue)[r(2)][0] == "sent"
        got = Counter(m.rcpt_tos[0] for m in srv.messages)
        # The one whose reply was lost went out twice (the promised bound); nobody else did.
        assert got == Counter({r(0): 1, r(1): 1, r(2): 2, r(3): 1, r(4): 1})
        store.close()


def test_messages_are_never_serialised_by_the_email_package() -> None:
    """CVE-2024-6923: before 3.11.10 / 3.12.5 the email package's generator could write a
    header with a newline from a value unquoted. The service builds every header itself
    (newsletter/deliver/headers.py) and uses the email package only to format dates and to
    read bounces (audience/bounces.py parses, never writes a message)."""
    pattern = re.compile(r"\bemail\.(generator|mime|header)\b|EmailMessage|"
                         r"\.as_bytes\(|\.as_string\(|\bimport smtplib\b")
    offenders = [f"{path.relative_to(ROOT)}:{n}"
                 for path in sorted((ROOT / "newsletter").rglob("*.py"))
                 for n, line in enumerate(path.read_text("utf-8").splitlines(), 1)
                 if pattern.search(line)]
    assert offenders == []
