"""Hardening, secrets: a relay that echoes the AUTH exchange never gets the password kept.

The SMTP test server is made to repeat what the client sent in AUTH (the base64 and the
decoded user and password) in its AUTH failure reply and in every later reply of the session.
Nothing of it may reach the ledger's rows, the run's summary, a log line, an exception or what
the command line prints. Related: test_smtp.py::test_auth_refused_never_shows_the_password,
test_hardening_smtp.py::test_535_authentication_failure_defers_everyone_and_hides_the_password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.deliver.credentials import MASK, Scrubber
from newsletter.deliver.smtp import SmtpPool, SmtpSetupError
from newsletter.models import Issue
from newsletter.pipeline import sending
from newsletter.store import schema as s
from newsletter.store.database import Store
from tests.helpers.sending import r, seed, smtp_toml, start

USER = "newsletter"
PASSWORD = "Echoed-Pa55word/4321"


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def forms(user: str, password: str) -> dict[str, str]:
    """Every way the password travels in AUTH, and so may come back."""
    return {
        "password": password,
        "its base64 (AUTH LOGIN)": b64(password),
        "AUTH PLAIN blob": b64(f"\0{user}\0{password}"),
        "AUTH PLAIN blob with an authorisation id": b64(f"{user}\0{user}\0{password}"),
        "user:password, base64": b64(f"{user}:{password}"),
        "its URL-safe base64": base64.urlsafe_b64encode(password.encode()).decode(),
    }


def leaks(text: str, user: str = USER, password: str = PASSWORD) -> list[str]:
    return [name for name, form in forms(user, password).items() if form in text]


# -- the scrubber -----------------------------------------------------------------------------

def test_every_encoding_of_the_password_is_masked_and_nothing_else() -> None:
    scrub = Scrubber(USER, PASSWORD)
    for name, form in forms(USER, PASSWORD).items():
        for text in (form, f"535 5.7.8 failed for {form} (try again)",
                     f"250 OK xyz{form}", f"250 OK ab{form.rstrip('=')}Qk",
                     f"250 {form.upper()}" if name == "password" else form):
            out = scrub(text)
            assert not leaks(out) and MASK in out, (name, text, out)
    # The password inside a longer encoded echo, at each of the three byte alignments.
    for pad in ("", "x", "xy"):
        echo = b64(f"{pad}client said AUTH with {PASSWORD} just now")
        assert scrub(f"250 ok {echo}") == f"250 ok {MASK}"
    # CRAM-MD5's answer is an HMAC of the password: enough to test guesses against offline.
    digest = hmac.new(PASSWORD.encode(), b"<1896.697170952@relay>", "md5").hexdigest()
    assert scrub(f"535 no {b64(f'{USER} {digest}')}") == f"535 no {MASK}"
    # Ordinary replies and the user name alone are left as they are.
    for text in ("250 2.0.0 OK queued as 4FzQ1x2y3zABCDEFGHIJKLMNOP", "235 2.7.0 OK",
                 f"250 hello {b64(USER)} {USER}", "550 5.1.1 <reader@example.org>: no such user",
                 b64(hashlib.sha256(b"x").digest())):
        assert scrub(text) == text
    assert PASSWORD not in repr(scrub)


@settings(max_examples=300, deadline=None, database=None)
@given(password=st.text(min_size=1, max_size=40).filter(lambda p: "*" not in p),
       user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz@.0123456789", min_size=1, max_size=30),
       before=st.text(max_size=30), after=st.text(max_size=30))
def test_no_encoding_of_any_password_survives(password: str, user: str, before: str,
                                              after: str) -> None:
    scrub = Scrubber(user, password)
    for form in forms(user, password).values():
        out = scrub(before + form + after)
        assert not leaks(out, user, password), (form, out)


# -- through the transport, the ledger, the logs and the command line ---------------------------

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


def relay(make_settings: Callable[..., Settings], srv: SmtpTestServer, password: str) -> Settings:
    return make_settings(smtp_toml(
        srv, f'timeout = 5\nconcurrency = 1\nusername = "{USER}"\npassword = "{password}"',
        "retry_initial = 1"))


def replies(store: Store, issue: Issue) -> dict[str, tuple[str, str]]:
    """address -> (status, last reply) for every row of the issue."""
    d, sub = s.deliveries.c, s.subscribers.c
    q = (sa.select(sub.email, d.status, d.last_reply)
         .join(s.subscribers, sub.id == d.subscriber_id).where(d.issue_id == issue.id))
    with store.engine.connect() as conn:
        return {row.email: (row.status, row.last_reply or "") for row in conn.execute(q)}


def echoed(srv: SmtpTestServer, password: str) -> None:
    """The server did repeat the exchange: what the test hunts for was really said."""
    said = " ".join(srv._exchanges.values())
    assert password in said and b64(f"\0{USER}\0{password}") in said, said


def test_an_auth_failure_that_echoes_the_exchange_is_kept_as_its_code_only(
        make_settings: Callable[..., Settings]) -> None:
    wrong = "Wrong-Pa55word/echoed"
    with SmtpTestServer(auth=(USER, PASSWORD), echo_auth=True) as srv:
        settings = relay(make_settings, srv, wrong)
        with captured_logs() as logs:
            store, issue = start(settings, 3)
            summary = sending.run_worker(settings, store, issue)
        echoed(srv, wrong)
        rows = replies(store, issue)
        store.close()
        with pytest.raises(SmtpSetupError) as refused:
            sending.run_loop(SmtpPool.from_settings(settings).connect())
    assert "AUTH refused: 535" in summary.stopped
    assert {status for status, _ in rows.values()} == {"deferred"}
    assert all("AUTH refused: 535" in reply for _, reply in rows.values())
    assert any("deliver.stopped" in line for line in logs)
    error = refused.value
    assert error.__cause__ is None and error.__context__ is None
    for text in (summary.stopped, repr(rows), *logs, str(error), repr(error)):
        assert not leaks(text, password=wrong), text
        assert "Authentication credentials invalid" not in text  # no word of the server's


def test_later_replies_that_echo_the_exchange_are_scrubbed_everywhere_they_are_kept(
        make_settings: Callable[..., Settings]) -> None:
    # Signed in; then every reply of the session repeats the exchange: the 250s recorded for
    # the sent rows, a 550 and a 450 for two readers, and the 421 that stops the run (its
    # reply goes to the log line and to every row given back).
    with SmtpTestServer(auth=(USER, PASSWORD), echo_auth=True, close_after=3,
                        rcpt_codes={r(1): 550, r(2): 450}) as srv:
        settings = relay(make_settings, srv, PASSWORD)
        with captured_logs() as logs:
            store, issue = start(settings, 8)
            summary = sending.run_worker(settings, store, issue)
        echoed(srv, PASSWORD)
        rows = replies(store, issue)
        store.close()
    assert "421" in summary.stopped and MASK in summary.stopped
    assert rows[r(0)][0] == "sent" and MASK in rows[r(0)][1]
    assert rows[r(1)] == ("failed", rows[r(1)][1]) and rows[r(1)][1].startswith("RCPT: 550")
    assert rows[r(2)][0] == "deferred" and rows[r(2)][1].startswith("RCPT: 450")
    assert any("421" in reply for _, reply in rows.values())
    assert any("deliver.stopped" in line and MASK in line for line in logs)
    for text in (summary.stopped, repr(rows), *logs):
        assert not leaks(text), text


def test_the_command_line_prints_no_credential_from_an_echoing_relay(
        make_settings: Callable[..., Settings]) -> None:
    # The operator's view: `issue send` at DEBUG level, stdout and stderr, against a relay
    # that echoes a refused AUTH, then one that echoes an accepted AUTH in a 421.
    for password, server in (("Wrong-Pa55word/echoed", {}), (PASSWORD, {"close_after": 1})):
        with SmtpTestServer(auth=(USER, PASSWORD), echo_auth=True, **server) as srv:  # type: ignore[arg-type]
            settings = relay(make_settings, srv, password)
            store = pipeline.open_store(settings)
            if not store.list_issues(limit=1):
                seed(store, 3)
                assert pipeline.build_issue(settings, store).issue is not None
            store.close()
            done = subprocess.run(
                [sys.executable, "-m", "newsletter", "--config", str(settings.path),
                 "--log-level", "DEBUG", "issue", "send", "1"],
                capture_output=True, text=True, timeout=120, check=False)
            echoed(srv, password)
        assert done.returncode == 1, done.stderr  # stopped early, the rows kept
        assert "Traceback" not in done.stderr
        assert "stopped early" in done.stderr + done.stdout
        assert not leaks(done.stdout + done.stderr, password=password), done.stderr
