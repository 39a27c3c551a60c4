"""docs/bounces.md "## Postfix" on a real Postfix: the DSNs Postfix writes to the VERP addresses
go through the documented pipe(8) service (transport_maps entry `bounces@news.test`, flags=DOR)
to `newsletter --config … bounces ingest -`, run as an unprivileged user, and the subscribers
are bounced; a database the command cannot reach makes Postfix keep the DSN queued and try again.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from newsletter.audience.bounces import verp_address
from newsletter.audience.tokens import load_or_create_secret
from newsletter.config import Settings
from newsletter.store.database import Store
from tests.helpers.bounces import DEAD, send_to_the_dead
from tests.mailstack import PIPE_SERVICE, MailStack, running_mailstack

RETURN_PATH = "bounces@news.test"
PG_PASSWORD = "pg-secret-pw"  # must never show in Postfix's log


@pytest.fixture(scope="module")
def mailstack() -> Iterator[MailStack]:
    yield from running_mailstack(newsletter_pipe=True)


def _settings(make_settings: Callable[..., Settings], stack: MailStack, name: str) -> Settings:
    """Sending through the stack's Postfix, VERP on bounces@news.test, the database in a folder
    the pipe command's user can write; the pipe command reads the same configuration."""
    settings = make_settings(f"""
[mail]
transport = "smtp"
from_address = "news@news.test"
[smtp]
host = "{stack.smtp_host}"
port = {stack.smtp_port}
security = "none"
timeout = 10
[bounces]
return_path = "{RETURN_PATH}"
""", database_url=stack.pipe_database(name))
    _write_pipe_config(stack, settings.path.read_text())
    return settings


def _write_pipe_config(stack: MailStack, text: str) -> None:
    """Replace the pipe command's config at once: Postfix may run it meanwhile, and a half
    written file is a configuration error, which exits 2: Postfix bounces the DSN (lost)."""
    tmp = stack.pipe_config.with_name(".newsletter.toml.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, stack.pipe_config)


def _verp_addresses(settings: Settings, store: Store, number: int) -> dict[str, str]:
    """Subscriber address → the VERP address issue `number` was sent from to them."""
    secret = load_or_create_secret(settings)
    return {a: verp_address(RETURN_PATH, secret, number, _id(store, a)) for a in DEAD}


def _id(store: Store, address: str) -> int:
    sub = store.get_subscriber_by_key(address)
    assert sub is not None and sub.id is not None
    return sub.id


def _status(store: Store, address: str) -> str:
    sub = store.get_subscriber_by_key(address)
    assert sub is not None
    return sub.status


def _wait_until(stack: MailStack, done: Callable[[], bool], what: str,
                deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not done():
        if time.monotonic() >= end:
            raise AssertionError(f"{what}: not after {deadline:g} s\n{stack.log()}")
        time.sleep(0.05)


def _bounced(store: Store) -> Callable[[], bool]:
    def done() -> bool:
        return all(_status(store, a) == "bounced" for a in DEAD)
    return done


def _wait_pipe_line(stack: MailStack, verp: str, status: str) -> str:
    """The first log line of a pipe(8) delivery to `verp` that ended with `status`."""
    return stack.wait_for_log(f"to=<{verp}>, relay={PIPE_SERVICE},", f"status={status} ")[0]


def _queue_id(line: str) -> str:
    match = re.search(r"\]: ([0-9A-F]+): to=<", line)
    assert match, line
    return match[1]


def _closed_port() -> int:
    """A local port nothing listens on (bound and released: connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_postfix_pipes_its_dsns_to_the_command_and_the_subscribers_are_bounced(
        mailstack: MailStack, make_settings: Callable[..., Settings]) -> None:
    if mailstack.pipe_note:
        print(mailstack.pipe_note)
    settings = _settings(make_settings, mailstack, "delivered")
    started = time.monotonic()
    store, number = send_to_the_dead(settings)

    _wait_until(mailstack, _bounced(store), "both subscribers bounced through the pipe")
    print(f"sent to bounced through pipe(8): {time.monotonic() - started:.3f} s")

    events = store.list_bounces()
    assert {(e.email, e.kind, e.status, e.source, e.issue_number) for e in events} == {
        (a, "hard", "5.1.1", "stdin", number) for a in DEAD}
    assert all("unknown user" in e.diagnostic for e in events)
    # Each DSN went to its VERP address, bounces+TOKEN@news.test: the transport_maps entry
    # bounces@news.test matched it, and pipe(8) ran the command (its output follows in the log).
    for verp in _verp_addresses(settings, store, number).values():
        line = _wait_pipe_line(mailstack, verp, "sent")
        assert f"dsn=2.0.0, status=sent (delivered via {PIPE_SERVICE} service" in line
    assert "Mail queue is empty" in mailstack.queue()
    store.close()


def test_an_unreachable_database_defers_the_dsn_and_postfix_delivers_it_later(
        mailstack: MailStack, make_settings: Callable[..., Settings]) -> None:
    settings = _settings(make_settings, mailstack, "deferred")
    working = mailstack.pipe_config.read_text()
    port = _closed_port()
    unreachable = f"postgresql+psycopg://newsletter:{PG_PASSWORD}@127.0.0.1:{port}/newsletter"
    assert settings.storage.database_url in working
    _write_pipe_config(mailstack, working.replace(settings.storage.database_url, unreachable))
    started = time.monotonic()
    store, number = send_to_the_dead(settings)
    verps = _verp_addresses(settings, store, number)

    # The command exits 75 (EX_TEMPFAIL) with one error line: pipe(8) defers with 4.3.0 and
    # logs that line, the password masked.
    queue_ids = []
    for verp in verps.values():
        line = _wait_pipe_line(mailstack, verp, "deferred")
        assert (f"dsn=4.3.0, status=deferred (temporary failure. Command output: error: "
                f"database postgresql+psycopg://newsletter:***@127.0.0.1:{port}/newsletter: "
                f"cannot open: connection to server at \"127.0.0.1\", port {port} failed: "
                f"Connection refused") in line, line
        queue_ids.append(_queue_id(line))
    print(f"sent to both DSNs deferred: {time.monotonic() - started:.3f} s")
    assert PG_PASSWORD not in mailstack.log()
    # Both DSNs wait in Postfix's queue; none was bounced (a bounced DSN is thrown away: its
    # sender is null), and nothing was recorded.
    queue = mailstack.queue()
    for queue_id, verp in zip(queue_ids, verps.values(), strict=True):
        # `ID[*: being tried]  size  date  sender`, `(why it waits)`, `recipient`
        entry = re.search(rf"^{queue_id}\*? .* MAILER-DAEMON\n(\(.*\)\n)?\s+(\S+)$", queue,
                          re.MULTILINE)
        assert entry is not None and entry[2] == verp, queue
    log = (mailstack.root / "postfix.log").read_text(errors="replace").splitlines()
    assert [line for line in log if any(f"]: {q}: " in line for q in queue_ids)
            and ("status=bounced" in line or "/bounce[" in line)] == []
    assert store.list_bounces() == []
    assert all(_status(store, a) == "active" for a in DEAD)

    # The database is back: the next try (now, `postqueue -f`) delivers both.
    _write_pipe_config(mailstack, working)
    back = time.monotonic()
    mailstack.flush()
    _wait_until(mailstack, _bounced(store), "both subscribers bounced after the retry")
    print(f"database back to bounced: {time.monotonic() - back:.3f} s")
    assert {(e.email, e.source, e.issue_number) for e in store.list_bounces()} == {
        (a, "stdin", number) for a in DEAD}
    for verp in verps.values():
        assert "dsn=2.0.0" in _wait_pipe_line(mailstack, verp, "sent")
    _wait_until(mailstack, lambda: "Mail queue is empty" in mailstack.queue(),
                "the queue empty after the retry")
    store.close()


def test_the_documented_lines_are_the_ones_postfix_runs(mailstack: MailStack) -> None:
    """The stack's configuration is docs/bounces.md's, names and paths aside."""
    doc = (Path(__file__).parents[1] / "docs" / "bounces.md").read_text()
    section = doc.partition("\n## Postfix\n")[2].partition("\n## ")[0]
    etc = mailstack.postfix_dir
    main_cf, master_cf = (etc / "main.cf").read_text(), (etc / "master.cf").read_text()
    assert "recipient_delimiter = +" in section and "recipient_delimiter = +" in main_cf
    assert f"{PIPE_SERVICE}_destination_recipient_limit = 1" in section
    assert f"{PIPE_SERVICE}_destination_recipient_limit = 1" in main_cf
    assert f"bounces@news.example.org    {PIPE_SERVICE}:" in section
    assert f"bounces@news.test    {PIPE_SERVICE}:" in (etc / "transport").read_text()
    assert f"{PIPE_SERVICE} unix - n n - 10 pipe\n  flags=DOR user=" in section
    assert (f"{PIPE_SERVICE} unix - n n - 10 pipe\n  flags=DOR user={mailstack.pipe_user} "
            f"argv={' '.join(mailstack.pipe_argv)}\n") in master_cf
    assert mailstack.pipe_argv[1:] == ["--config", str(mailstack.pipe_config),
                                       "bounces", "ingest", "-"]
    assert "bounces ingest -\n" in section
