"""SmtpPool / SmtpConnection against a real, misbehaving aiosmtpd server; the outbox."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from newsletter.deliver.headers import message_id
from newsletter.deliver.mail import MailIdentity, MessageTemplate
from newsletter.deliver.outbox import OutboxPool
from newsletter.deliver.smtp import (
    SendResult,
    SmtpPool,
    SmtpSetupError,
    SmtpUnavailable,
    parse_host,
)
from newsletter.pipeline.sending import run_loop
from newsletter.pipeline.transports import pool_from_settings
from tests.smtpserver import SmtpTestServer

T = TypeVar("T")
SENDER = "bounces@example.org"
GOOD = "reader@example.com"
IDENTITY = MailIdentity("news@example.org", "The Ledger", "", "ledger.example.org",
                        "unsubscribe@example.org", "example.org")


def make_message(to: str = GOOD, n: int = 1) -> bytes:
    template = MessageTemplate.build(
        identity=IDENTITY, subject=f"Issue {n}", html="<p>Hi %%NAME%%</p>\n.starts with a dot\n",
        text="Hi %%NAME%%\n.starts with a dot\n..two\n")
    return template.render(to_address=to, to_name="Reader", message_id=message_id(n, 7,
                           "example.org"), unsubscribe_url="https://example.org/u/abc",
                           preferences_url="https://example.org/p/abc",
                           date=datetime(2024, 6, 3, 9, 0, tzinfo=UTC))


PIPELINING = [True]  # every test runs with and without it (see the fixture below)
UVLOOP = [False]  # and the pipelined runs once more on uvloop, as deliveries run


@pytest.fixture(autouse=True, params=[(True, True), (True, False), (False, False)],
                ids=["pipelined-uvloop", "pipelined", "one-by-one"])
def _client_mode(request: pytest.FixtureRequest) -> None:
    PIPELINING[0], UVLOOP[0] = request.param


def run(main: Coroutine[Any, Any, T]) -> T:
    return run_loop(main) if UVLOOP[0] else asyncio.run(main)


def pool(srv: SmtpTestServer, **kw: object) -> SmtpPool:
    kw.setdefault("pipelining", PIPELINING[0])
    kw.setdefault("security", "none")
    kw.setdefault("timeout", 5.0)
    return SmtpPool([(srv.host, srv.port)], local_hostname="client.test", **kw)  # type: ignore[arg-type]


async def send_one(p: SmtpPool, to: str = GOOD, message: bytes | None = None) -> SendResult:
    conn = await p.connect()
    try:
        return await conn.send(SENDER, to, message or make_message(to))
    finally:
        await conn.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sent_and_received_intact() -> None:
    message = make_message()
    with SmtpTestServer() as srv:
        result = run(send_one(pool(srv), message=message))
        got = srv.messages
    assert result.status == "sent" and result.code == 250 and not result.close
    assert "\n" not in result.reply
    assert len(got) == 1 and got[0].mail_from == SENDER and got[0].rcpt_tos == (GOOD,)
    assert got[0].data == message  # dot-stuffing undone by the server: byte-identical
    parsed = email.message_from_bytes(got[0].data, policy=email.policy.default)
    assert parsed["To"] == f"Reader <{GOOD}>" and parsed["Subject"] == "Issue 1"
    text = parsed.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text == "Hi Reader\n.starts with a dot\n..two\n"


@pytest.mark.parametrize("offered", [True, False])
def test_pipelining_is_used_only_when_offered_and_wanted(offered: bool) -> None:
    async def go(p: SmtpPool) -> tuple[bool, SendResult]:
        conn = await p.connect()
        try:
            return conn.pipelining, await conn.send(SENDER, GOOD, make_message())
        finally:
            await conn.close()

    with SmtpTestServer(pipelining=offered) as srv:
        used, result = run(go(pool(srv)))
        assert used == (offered and PIPELINING[0])
        assert result.status == "sent" and [m.rcpt_tos for m in srv.messages] == [(GOOD,)]
        assert [verb for verb, _ in srv.commands] == ["MAIL", "RCPT", "DATA"]


@pytest.mark.parametrize(("code", "status"), [(450, "deferred"), (452, "deferred"),
                                              (550, "failed"), (553, "failed")])
def test_rcpt_replies_and_connection_reused(code: int, status: str) -> None:
    bad = f"user{code}@example.com"

    async def go(p: SmtpPool) -> tuple[SendResult, SendResult]:
        conn = await p.connect()
        try:
            first = await conn.send(SENDER, bad, make_message(bad))
            second = await conn.send(SENDER, GOOD, make_message(GOOD))  # after RSET
            return first, second
        finally:
            await conn.close()

    with SmtpTestServer(rcpt_codes={bad: code}) as srv:
        first, second = run(go(pool(srv)))
        got = srv.messages
    assert (first.status, first.code, first.close) == (status, code, False)
    assert first.reply.startswith(f"RCPT: {code} ")
    assert second.status == "sent"
    assert [m.rcpt_tos for m in got] == [(GOOD,)]


@pytest.mark.parametrize("code", [552, 554])
def test_data_refused_fails(code: int) -> None:
    bad = f"big{code}@example.com"

    async def go(p: SmtpPool) -> tuple[SendResult, SendResult]:
        conn = await p.connect()
        try:
            return (await conn.send(SENDER, bad, make_message(bad)),
                    await conn.send(SENDER, GOOD, make_message(GOOD)))
        finally:
            await conn.close()

    with SmtpTestServer(data_codes={bad: code}) as srv:
        first, second = run(go(pool(srv)))
    assert (first.status, first.code, first.close) == ("failed", code, False)
    assert first.reply.startswith(f"end of data: {code} ")
    assert second.status == "sent"


async def poll(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_the_next_envelope_rides_behind_the_data_when_pipelining() -> None:
    second = "second@example.com"

    async def go(srv: SmtpTestServer) -> tuple[list[SendResult], list[str]]:
        conn = await pool(srv).connect()
        try:
            first = await conn.send(SENDER, GOOD, make_message(GOOD), then=(SENDER, second))
            if conn.pipelining:  # MAIL and RCPT for `second` went out with the data (the
                # server logs DATA once the message is in)
                assert await poll(lambda: len(srv.commands) == 5)
            seen = [verb for verb, _ in srv.commands]
            last = await conn.send(SENDER, second, make_message(second, n=2))
            return [first, last], seen
        finally:
            await conn.close()

    with SmtpTestServer() as srv:
        results, seen = run(go(srv))
        got = srv.messages
    assert [r.status for r in results] == ["sent", "sent"]
    assert seen == ["MAIL", "RCPT", "DATA"] + (["MAIL", "RCPT"] if PIPELINING[0] else [])
    assert [m.rcpt_tos for m in got] == [(GOOD,), (second,)]
    assert [m.data for m in got] == [make_message(GOOD), make_message(second, n=2)]


def test_an_envelope_sent_ahead_and_then_not_used_delivers_nothing() -> None:
    async def go(p: SmtpPool) -> list[SendResult]:
        conn = await p.connect()
        first = await conn.send(SENDER, GOOD, make_message(), then=(SENDER, "second@example.com"))
        other = await conn.send(SENDER, "third@example.com", make_message("third@example.com"))
        await conn.close()
        conn = await p.connect()  # announced, then closed with the server awaiting its data
        last = await conn.send(SENDER, GOOD, make_message(n=3), then=(SENDER, "x@example.com"))
        await conn.close()
        return [first, other, last]

    with SmtpTestServer() as srv:
        results = run(go(pool(srv)))
        assert run(send_one(pool(srv))).status == "sent"
        got = [m.rcpt_tos[0] for m in srv.messages]
    if PIPELINING[0]:  # the connection cannot leave DATA without a message: it is closed
        assert [(r.status, r.close) for r in results] == [
            ("sent", False), ("deferred", True), ("sent", False)]
        assert results[1].reply.startswith("the envelope sent ahead was for another")
        assert sorted(got) == [GOOD] * 3  # never an empty message to second@ or x@
    else:
        assert [r.status for r in results] == ["sent"] * 3
        assert sorted(got) == [GOOD, GOOD, GOOD, "third@example.com"]


@pytest.mark.parametrize("code", [450, 550, 421])
def test_an_envelope_sent_ahead_and_refused(code: int) -> None:
    bad = f"user{code}@example.com"
    after = "after@example.com"

    async def go(p: SmtpPool) -> list[SendResult]:
        conn = await p.connect()
        try:
            return [await conn.send(SENDER, GOOD, make_message(), then=(SENDER, bad)),
                    await conn.send(SENDER, bad, make_message(bad), then=(SENDER, after)),
                    await conn.send(SENDER, after, make_message(after))]
        finally:
            await conn.close()

    with SmtpTestServer(rcpt_codes={bad: code}) as srv:
        first, refused, last = run(go(pool(srv)))
        got = [m.rcpt_tos for m in srv.messages]
    assert first.status == "sent"
    assert refused.code == code and refused.reply.startswith(f"RCPT: {code} ")
    if code == 421:  # the server is going away: the rest waits for a new connection
        assert (refused.status, refused.close) == ("deferred", True)
        assert last.status == "deferred" and got == [(GOOD,)]
    else:
        assert refused.status == ("deferred" if code < 500 else "failed")
        assert not refused.close and last.status == "sent" and got == [(GOOD,), (after,)]


def test_an_unusual_rcpt_reply_never_ends_in_an_empty_message() -> None:
    # 252 is not a refusal: the server may well keep the recipient, and with DATA already
    # accepted (pipelined) a "." would deliver an empty message. The connection is closed.
    odd = "odd@example.com"

    async def go(p: SmtpPool) -> SendResult:
        conn = await p.connect()
        try:
            return await conn.send(SENDER, odd, make_message(odd))
        finally:
            await conn.close()

    with SmtpTestServer(rcpt_codes={odd: 252}) as srv:
        result = run(go(pool(srv)))
        assert run(send_one(pool(srv))).status == "sent"  # the server still works
        got = [m.rcpt_tos for m in srv.messages]
    assert (result.status, result.close) == ("deferred", True)
    assert "252" in result.reply
    assert got == [(GOOD,)]


def test_421_closes_then_a_new_connection_works() -> None:
    async def go(p: SmtpPool) -> list[SendResult]:
        conn = await p.connect()
        results = [await conn.send(SENDER, GOOD, make_message(n=i)) for i in range(3)]
        await conn.close()
        results.append(await send_one(p))
        return results

    with SmtpTestServer(close_after=2) as srv:
        results = run(go(pool(srv)))
        got = srv.messages
    assert [r.status for r in results] == ["sent", "sent", "deferred", "sent"]
    assert (results[2].code, results[2].close) == (421, True)
    assert len(got) == 3


def test_dropped_connection_defers_and_closes() -> None:
    async def go(p: SmtpPool) -> tuple[SendResult, bool, SendResult]:
        conn = await p.connect()
        first = await conn.send(SENDER, "drop@example.com", make_message("drop@example.com"))
        usable = conn.usable
        await conn.close()
        return first, usable, await send_one(p)

    with SmtpTestServer(drop_on_rcpt={"drop@example.com"}) as srv:
        first, usable, again = run(go(pool(srv)))
        got = srv.messages
    assert (first.status, first.code, first.close) == ("deferred", None, True)
    assert not usable and again.status == "sent" and len(got) == 1


def test_slow_reply_before_data_end_defers() -> None:
    with SmtpTestServer(delay=1.0) as srv:
        result = run(send_one(pool(srv, timeout=0.2)))
    assert (result.status, result.close) == ("deferred", True)
    assert "timed out" in result.reply


def test_no_reply_after_final_dot_is_unknown() -> None:
    with SmtpTestServer(hang_after_data=True) as srv:
        result = run(send_one(pool(srv, timeout=0.3)))
        got = srv.messages
    assert (result.status, result.code, result.close) == ("unknown", None, True)
    assert len(got) == 1  # the server did get it: exactly why the outcome is unknown


def test_connection_dropped_after_final_dot_is_unknown() -> None:
    with SmtpTestServer(drop_after_data={GOOD}) as srv:
        result = run(send_one(pool(srv)))
    assert (result.status, result.close) == ("unknown", True)


def test_starttls_required_but_not_offered() -> None:
    with SmtpTestServer() as srv:
        with pytest.raises(SmtpSetupError, match="does not offer STARTTLS"):
            run(send_one(pool(srv, security="starttls")))
        assert srv.messages == [] and srv.commands == []  # not even MAIL in plain text


def test_starttls_offered_then_refused() -> None:
    with SmtpTestServer(tls="broken") as srv:
        with pytest.raises(SmtpSetupError, match="STARTTLS failed"):
            run(send_one(pool(srv, security="starttls",
                                      tls_context=srv.client_context())))
        assert srv.messages == [] and srv.commands == []


def test_starttls_with_trusted_self_signed_certificate() -> None:
    with SmtpTestServer(tls="starttls") as srv:
        result = run(send_one(pool(srv, security="starttls",
                                           tls_context=srv.client_context())))
        got = srv.messages
    assert result.status == "sent"
    assert got[0].tls and all(tls for _, tls in srv.commands)


def test_starttls_with_untrusted_certificate_is_a_setup_error() -> None:
    with SmtpTestServer(tls="starttls") as srv:
        with pytest.raises(SmtpSetupError, match="STARTTLS failed"):
            run(send_one(pool(srv, security="starttls")))  # system CAs only
        assert srv.messages == []


def test_implicit_tls() -> None:
    with SmtpTestServer(tls="implicit") as srv:
        result = run(send_one(pool(srv, security="tls",
                                           tls_context=srv.client_context())))
        got = srv.messages
    assert result.status == "sent" and got[0].tls


def test_auth_ok() -> None:
    with SmtpTestServer(auth=("mailer", "s3cret-pw")) as srv:
        result = run(send_one(pool(srv, username="mailer", password="s3cret-pw")))
        got = srv.messages
    assert result.status == "sent" and got[0].user == "mailer"


def test_auth_refused_never_shows_the_password() -> None:
    with SmtpTestServer(auth=("mailer", "s3cret-pw")) as srv:
        p = pool(srv, username="mailer", password="wrong-Pa55word")
        with pytest.raises(SmtpSetupError) as info:
            run(send_one(p))
        assert srv.messages == []
    exc = info.value
    assert "AUTH refused: 535" in str(exc)  # the code, never the server's text
    assert exc.__cause__ is None and exc.__context__ is None  # no chained server exchange
    for text in (str(exc), repr(exc), repr(p)):
        assert "wrong-Pa55word" not in text


def test_auth_in_plain_text_to_a_remote_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("newsletter.deliver.smtp._is_loopback", lambda address: False)
    with SmtpTestServer(auth=("mailer", "pw")) as srv:
        with pytest.raises(SmtpSetupError, match="refusing AUTH without TLS"):
            run(send_one(pool(srv, username="mailer", password="pw")))
        assert srv.messages == []


def test_implicit_tls_with_untrusted_certificate_is_a_setup_error() -> None:
    with SmtpTestServer(tls="implicit") as srv, pytest.raises(SmtpSetupError, match="TLS failed"):
        run(send_one(pool(srv, security="tls")))


def test_auth_required_but_not_configured_fails() -> None:
    with SmtpTestServer(auth=("mailer", "pw")) as srv:
        result = run(send_one(pool(srv)))
    assert (result.status, result.code) == ("failed", 530)  # 5xx: a configuration problem


def test_failover_to_the_next_host() -> None:
    with SmtpTestServer() as srv:
        p = SmtpPool([("127.0.0.1", closed_port()), (srv.host, srv.port)], security="none",
                     timeout=5.0, local_hostname="client.test")

        async def go() -> tuple[str, SendResult]:
            conn = await p.connect()
            try:
                return conn.where, await conn.send(SENDER, GOOD, make_message())
            finally:
                await conn.close()

        where, result = run(go())
    assert where == f"{srv.host}:{srv.port}" and result.status == "sent"


def test_no_host_reachable() -> None:
    p = SmtpPool([("127.0.0.1", closed_port()), ("127.0.0.1", closed_port())],
                 security="none", timeout=2.0, local_hostname="client.test")
    with pytest.raises(SmtpUnavailable, match="127.0.0.1"):
        run(p.connect())


def test_smtputf8_addresses() -> None:
    to = "zoë@example.com"
    with SmtpTestServer() as srv:
        off = run(send_one(pool(srv), to=to, message=b"Subject: x\r\n\r\nbody\r\n"))
        on = run(send_one(pool(srv, smtputf8=True), to=to,
                                  message=b"Subject: x\r\n\r\nbody\r\n"))
        got = srv.messages
    assert off.status == "failed" and "SMTPUTF8" in off.reply
    assert on.status == "sent" and got[0].rcpt_tos == (to,)


def test_injected_envelope_address_is_refused_locally() -> None:
    with SmtpTestServer() as srv:
        result = run(send_one(pool(srv), to="a@example.com>\r\nRCPT TO:<b@x.org",
                                      message=make_message()))
        assert srv.messages == [] and srv.commands == []
    assert result.status == "failed"


def test_bare_line_feeds_are_sent_as_crlf() -> None:
    with SmtpTestServer() as srv:
        result = run(send_one(pool(srv), message=b"Subject: lf\n\n.one\ntwo"))
        got = srv.messages
    assert result.status == "sent"
    assert got[0].data == b"Subject: lf\r\n\r\n.one\r\ntwo\r\n"


def test_outbox_writes_parsable_files(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    messages = [make_message(n=i) for i in (1, 2)]

    async def go() -> list[SendResult]:
        conn = await OutboxPool(folder).connect()
        try:
            return [await conn.send(SENDER, GOOD, m) for m in messages]
        finally:
            await conn.close()

    results = run(go())
    assert [r.status for r in results] == ["sent", "sent"] and results[0].code == 250
    files = sorted(folder.iterdir())
    assert len(files) == 2 and all(f.suffix == ".eml" for f in files)  # no temp files left
    for result, path in zip(results, files, strict=True):
        assert result.reply == f"written to {path}"
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert parsed["List-Id"] == "The Ledger <ledger.example.org>"
    assert {f.read_bytes() for f in files} == set(messages)


def test_pools_from_settings(make_settings) -> None:  # noqa: ANN001 - pytest fixture
    outbox = pool_from_settings(make_settings())
    assert isinstance(outbox, OutboxPool)
    smtp = pool_from_settings(make_settings(
        '[mail]\ntransport = "smtp"\n[smtp]\nhost = "relay.example.org"\nport = 587\n'
        'password = "pw-in-config"\nfallback_hosts = ["backup.example.org:2525", "[::1]"]\n'))
    assert isinstance(smtp, SmtpPool)
    assert smtp.hosts == [("relay.example.org", 587), ("backup.example.org", 2525),
                          ("::1", 587)]
    assert "pw-in-config" not in repr(smtp)
    assert parse_host("mx.example.org", 25) == ("mx.example.org", 25)
