"""What SmtpConnection takes over from aiosmtplib after EHLO/STARTTLS/AUTH, checked against a
real aiosmtpd server: a new aiosmtplib release that changes any of it fails here, by name."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiosmtplib
import pytest

from newsletter.deliver.smtp import SmtpConnection, SmtpPool
from newsletter.deliver.smtp_replies import ReplyReader
from newsletter.pipeline.sending import run_loop
from tests.smtpserver import SmtpTestServer

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]


def test_the_client_still_has_what_smtp_py_calls() -> None:
    # SmtpPool builds the client with these keywords and reads these names after setup.
    params = inspect.signature(aiosmtplib.SMTP).parameters
    for name in ("hostname", "port", "timeout", "use_tls", "start_tls", "tls_context",
                 "local_hostname"):
        assert name in params, f"aiosmtplib.SMTP() lost the {name!r} keyword"
    for name in ("connect", "ehlo", "starttls", "login", "close", "supports_extension",
                 "get_transport_info", "supported_auth_methods", "server_auth_methods",
                 "AUTH_METHODS", "transport"):
        assert hasattr(aiosmtplib.SMTP(), name), f"aiosmtplib.SMTP lost {name!r}"


MESSAGE = b"Subject: handed over\r\n\r\n.a line with a dot\r\n"


async def _take_over(pool: SmtpPool) -> tuple[SmtpConnection, list[tuple[int, str]], bool, str]:
    conn = await pool.connect()
    try:
        client: aiosmtplib.SMTP = conn._client
        transport = client.transport
        # The transport aiosmtplib used last (after STARTTLS: the TLS one, not the socket's)
        # is the one now read by our reader, and aiosmtplib's protocol hears nothing more.
        assert transport is conn._transport, "client.transport is not the live transport"
        assert isinstance(conn._replies, ReplyReader)
        assert transport.get_protocol() is conn._replies, "set_protocol did not hand over"
        assert client.protocol is not None and client.protocol is not conn._replies
        tls = transport.get_extra_info("ssl_object") is not None
        # Nothing aiosmtplib read ahead may be lost: the next reply is the NOOP's.
        conn._replies.write(b"NOOP\r\n")
        replies = await conn._replies.read(1, 5.0)
        result = await conn.send("bounces@example.org", "reader@example.com", MESSAGE)
        return conn, [(r.code, r.message) for r in replies], tls, result.status
    finally:
        await conn.close()


@pytest.mark.parametrize("runner", [asyncio.run, run_loop], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("setup", ["plain", "starttls", "tls", "auth"])
def test_the_reply_reader_takes_over_a_live_session(setup: str, runner: Runner[Any]) -> None:
    server: dict[str, Any] = {"plain": {}, "starttls": {"tls": "starttls"},
                              "tls": {"tls": "implicit"}, "auth": {"auth": ("mailer", "pw")}}
    with SmtpTestServer(**server[setup]) as srv:
        kw: dict[str, Any] = {"security": "none"}
        if setup in ("starttls", "tls"):
            kw = {"security": setup, "tls_context": srv.client_context()}
        elif setup == "auth":
            kw.update(username="mailer", password="pw")
        pool = SmtpPool([(srv.host, srv.port)], local_hostname="client.test", timeout=5.0,
                        **kw)
        conn, replies, tls, status = runner(_take_over(pool))
        [got] = srv.messages
    assert [code for code, _ in replies] == [250] and status == "sent"
    assert tls == got.tls == (setup in ("starttls", "tls"))
    assert got.user == ("mailer" if setup == "auth" else None)
    assert got.data == MESSAGE  # dot-stuffed by us, undone by the server
    # Closed by us: the transport is done, and aiosmtplib knows the session is over.
    assert conn._transport.is_closing() and not conn._client.is_connected
