"""SMTP sending: one recipient per transaction on reused aiosmtplib connections, replies mapped."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, cast

import aiosmtplib
from aiosmtplib.errors import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from newsletter.deliver.credentials import Scrubber, keep
from newsletter.deliver.engine import SendResult
from newsletter.deliver.smtp_replies import Reply, ReplyReader
from newsletter.deliver.wire import dot_stuffed
from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.config import Settings

__all__ = ["SendResult", "SmtpConnection", "SmtpError", "SmtpPool", "SmtpSetupError",
           "SmtpUnavailable", "parse_host"]

Security = Literal["starttls", "tls", "none"]
# Envelope addresses: anything that could end or extend an SMTP command line is refused.
_ENVELOPE_RE = re.compile(r"[^\s<>\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+")
_QUIT_TIMEOUT = 2.0  # a polite QUIT must never hold up shutdown


class SmtpError(NewsletterError):
    """No connection to send on; the delivery run stops and keeps its rows for later."""


class SmtpSetupError(SmtpError):
    """TLS or AUTH could not be set up as configured (never retried in plain text)."""


class SmtpUnavailable(SmtpError):
    """No relay accepted a connection."""


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _hard_close(client: aiosmtplib.SMTP, transport: asyncio.Transport | None = None) -> None:
    """Close now. A TLS transport is aborted rather than shut down: after QUIT or a failure
    the close_notify exchange buys nothing, and a graceful TLS shutdown can outlive the event
    loop (an unclosed socket) when the program ends right after."""
    # (uvloop's transports are not asyncio.Transport subclasses, hence a cast, not a check.)
    transport = transport or cast("asyncio.Transport | None", client.transport)
    client.close()
    if transport is not None and transport.get_extra_info("ssl_object") is not None:
        transport.abort()


class SmtpConnection:
    """One authenticated (and encrypted, unless security = 'none') session, reused for many
    messages by one task at a time. aiosmtplib sets it up; mail transactions then run on a
    ReplyReader, pipelined when the server offers PIPELINING. `scrub` takes the credentials
    out of every reply as it arrives and of every result as it leaves."""

    def __init__(self, client: aiosmtplib.SMTP, where: str, *, smtputf8: bool,
                 timeout: float, pipelining: bool = True,
                 scrub: Callable[[str], str] = keep) -> None:
        self._client = client
        # Kept: aiosmtplib forgets it when it closes. (uvloop's transports are not
        # asyncio.Transport subclasses, hence a cast rather than a check.)
        self._transport = cast(asyncio.Transport, client.transport)
        self.where = where  # "host:port", for the operator
        self._smtputf8 = smtputf8
        self._server_utf8 = client.supports_extension("smtputf8")
        self._timeout = timeout
        self.pipelining = pipelining and client.supports_extension("pipelining")
        self._scrub = scrub
        self._replies = ReplyReader(self._transport, scrub)
        self._ahead: tuple[str, str] | None = None  # envelope sent, replies not yet read

    @property
    def usable(self) -> bool:
        return self._replies.usable

    def _commands(self, sender: str, recipient: str) -> tuple[bytes, bytes, bytes] | SendResult:
        """MAIL, RCPT and DATA for one recipient, or why they cannot be sent (a failure)."""
        for address in (sender, recipient):
            if not _ENVELOPE_RE.fullmatch(address):
                return SendResult("failed", None, f"invalid envelope address {address!r}")
        option = b""
        encoding = "ascii"
        if not (sender.isascii() and recipient.isascii()):
            if not self._smtputf8:
                return SendResult("failed", None, "address needs SMTPUTF8 (mail.smtputf8 off)")
            if not self._server_utf8:
                return SendResult("failed", None, f"{self.where} does not offer SMTPUTF8")
            option, encoding = b" SMTPUTF8", "utf-8"
        # Raw commands: the addresses were validated above and need only the brackets.
        return (b"MAIL FROM:<%s>%s\r\n" % (sender.encode(encoding), option),
                b"RCPT TO:<%s>\r\n" % recipient.encode(encoding), b"DATA\r\n")

    async def send(self, sender: str, recipient: str, message: bytes,
                   then: tuple[str, str] | None = None) -> SendResult:
        """Deliver to one recipient; never raises for SMTP or network trouble.

        `then` is the (sender, recipient) of the caller's next message on this connection:
        when pipelining, its envelope goes out in the same write as this message's data
        (RFC 2920 §3.1 allows commands after the end of data), which makes one round trip
        per message instead of two. Only the envelope: its data waits for the next call,
        which must be for that same pair (anything else closes the connection)."""
        result = await self._send(sender, recipient, message, then)
        # The reply is stored in the ledger, shown and logged: replies were cleaned as they
        # arrived, and this catches any text that reached the result another way.
        reply = self._scrub(result.reply)
        return result if reply == result.reply else replace(result, reply=reply)

    async def _send(self, sender: str, recipient: str, message: bytes,
                    then: tuple[str, str] | None) -> SendResult:
        commands = self._commands(sender, recipient)
        if isinstance(commands, SendResult):
            return commands
        ahead, self._ahead = self._ahead, None
        # Replies to an envelope sent ahead are read even from a closed connection: a 421
        # the server sent before closing must still stop the run.
        if ahead is None and not self.usable:
            return SendResult("deferred", None, "connection already closed", close=True)
        if ahead is not None and ahead != (sender, recipient):
            # Its DATA may have been accepted: only closing leaves that state without a
            # message (a lone "." would deliver an empty one).
            self._drop()
            return SendResult("deferred", None, "the envelope sent ahead was for another "
                              "recipient; connection closed", close=True)
        following = self._commands(*then) if then is not None and self.pipelining else None
        message = dot_stuffed(message)
        stage = "MAIL"
        try:
            replies = await (self._replies.read(3, self._timeout) if ahead
                             else self._envelope(commands))
            for stage, ok, reply in zip(_STAGES, _ACCEPT, replies, strict=False):
                if reply.code not in ok:
                    if len(replies) == 3 and replies[2].code == 354:
                        if not 400 <= reply.code < 600:
                            # Not a refusal we understand: the recipient may stand, and a
                            # "." would deliver an empty message. Only closing is safe.
                            self._drop()
                            return SendResult("deferred", None, _one_line(
                                f"{stage}: unexpected reply {reply.code} {reply.message}"),
                                close=True)
                        # Pipelined DATA accepted although the recipient was refused: end
                        # the empty transaction (RFC 2920 §3.1) before resetting.
                        self._replies.write(b".\r\n")
                        await self._replies.read(1, self._timeout)
                    return await self._refused(stage, reply.code, reply.message)
            if len(replies) < 3:
                stage = _STAGES[len(replies)]
                raise self._replies.error or SMTPServerDisconnected("connection lost")
            if not self._replies.usable:  # closed after its DATA was accepted: nothing sent
                raise self._replies.error or SMTPServerDisconnected("connection closed")
            stage = "dot"
            if isinstance(following, tuple):  # one copy of the ~25 KB message, not two
                self._replies.write(b"".join((message, b".\r\n", *following)))
                self._ahead = then
            else:
                self._replies.write(message + b".\r\n")
            end = await self._replies.read(1, self._timeout)
            if not end:
                raise self._replies.error or SMTPServerDisconnected("connection lost")
        except SMTPResponseException as exc:
            return await self._refused(stage, exc.code, exc.message)
        except (SMTPTimeoutError, TimeoutError) as exc:
            return self._lost(stage, f"timed out: {exc}")
        except (SMTPServerDisconnected, OSError) as exc:
            return self._lost(stage, f"connection lost: {exc}")
        except asyncio.CancelledError:
            self._drop()  # mid-transaction state is unknown: never reuse it
            raise
        code, text = end[0]
        if 200 <= code < 300:
            return SendResult("sent", code, _one_line(f"{code} {text}"))
        return await self._refused("end of data", code, text)

    async def _envelope(self, commands: tuple[bytes, bytes, bytes]) -> list[Reply]:
        """MAIL, RCPT, DATA: in one write when pipelining, else each after the previous
        reply. Stops at the first refusal when not pipelining."""
        if self.pipelining:
            self._replies.write(b"".join(commands))
            return await self._replies.read(3, self._timeout)
        replies: list[Reply] = []
        for command, ok in zip(commands, _ACCEPT, strict=True):
            self._replies.write(command)
            got = await self._replies.read(1, self._timeout)
            replies += got
            if not got or got[0].code not in ok:
                break
        return replies

    async def _refused(self, stage: str, code: int, message: str) -> SendResult:
        text = _one_line(f"{stage}: {code} {message}")
        if stage == "dot":  # a reply after the data that is not SMTP: it may have arrived
            return self._lost(stage, text)
        if code == 421 or not 400 <= code < 600:
            # 421: the server is closing the session; anything else is not SMTP we can trust.
            self._drop()
            return SendResult("deferred", code if code > 0 else None, text, close=True)
        status: Literal["deferred", "failed"] = "deferred" if code < 500 else "failed"
        if stage == "end of data":
            return SendResult(status, code, text)  # the transaction is over either way
        try:  # clear the half-open transaction to reuse the session
            self._replies.write(b"RSET\r\n")
            reset = await self._replies.read(1, self._timeout)
            if not reset or reset[0].code != 250:
                raise SMTPServerDisconnected("RSET refused")
        except (SMTPException, OSError, TimeoutError):
            self._drop()
            return SendResult(status, code, text, close=True)
        return SendResult(status, code, text)

    def _drop(self) -> None:
        _hard_close(self._client, self._transport)
        self._transport.abort()

    def _lost(self, stage: str, why: str) -> SendResult:
        self._drop()
        if stage == "dot":
            # The whole message went out and no reply came: it may have been delivered.
            return SendResult("unknown", None, _one_line(f"no reply after the data: {why}"),
                              close=True)
        return SendResult("deferred", None, _one_line(f"{stage}: {why}"), close=True)

    async def close(self) -> None:
        """QUIT if still connected, then drop the connection; never raises."""
        # With an envelope sent ahead the server may be waiting for data, where QUIT would
        # be read as text: closing is the only way out that delivers nothing.
        if self.usable and self._ahead is None:
            with contextlib.suppress(SMTPException, OSError, TimeoutError):
                self._replies.write(b"QUIT\r\n")
                await self._replies.read(1, _QUIT_TIMEOUT)
        self._drop()

    async def __aenter__(self) -> SmtpConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_STAGES = ("MAIL", "RCPT", "DATA")
_ACCEPT: tuple[tuple[int, ...], ...] = ((250,), (250, 251), (354,))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def parse_host(value: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' → (host, port)."""
    if m := re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", value.strip()):
        return m[1], int(m[2] or default_port)
    host, sep, port = value.strip().rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return value.strip(), default_port


class SmtpPool:
    """Opens connections to the first relay that answers; TLS and AUTH as configured."""

    def __init__(self, hosts: list[tuple[str, int]], security: Security = "starttls",
                 username: str = "", password: str = "", timeout: float = 60.0,
                 tls_context: ssl.SSLContext | None = None, smtputf8: bool = False,
                 local_hostname: str | None = None, pipelining: bool = True) -> None:
        if not hosts:
            raise ValueError("SmtpPool needs at least one host")
        if security not in ("starttls", "tls", "none"):
            raise ValueError(f"unknown SMTP security {security!r}")
        self.hosts = list(hosts)
        self.security = security
        self.username = username
        self._password = password
        # Whatever a relay says may repeat the AUTH exchange; every text this pool hands on
        # (results, errors) goes through this first.
        self._scrub: Callable[[str], str] = Scrubber(username, password) if password else keep
        self.timeout = timeout
        self._tls = tls_context
        self.smtputf8 = smtputf8
        # The EHLO name, looked up once: aiosmtplib would otherwise ask DNS per connection.
        self.local_hostname = local_hostname
        self.pipelining = pipelining

    def __repr__(self) -> str:  # no password, ever
        return f"SmtpPool(hosts={self.hosts!r}, security={self.security!r})"

    @classmethod
    def from_settings(cls, settings: Settings,
                      tls_context: ssl.SSLContext | None = None) -> SmtpPool:
        smtp = settings.smtp
        hosts = [(smtp.host, smtp.port)] + [parse_host(h, smtp.port)
                                            for h in smtp.fallback_hosts]
        security = cast(Security, smtp.security)  # validated against the choices on load
        return cls(hosts, security, smtp.username, smtp.password, smtp.timeout, tls_context,
                   settings.mail.smtputf8, pipelining=smtp.pipelining)

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:  # built once: loading the CA store costs milliseconds
            self._tls = ssl.create_default_context()
        return self._tls

    async def connect(self) -> SmtpConnection:
        """A ready connection; SmtpSetupError / SmtpUnavailable when no relay will do."""
        if self.local_hostname is None:
            self.local_hostname = await asyncio.to_thread(socket.getfqdn)
        problems: list[str] = []
        setup_failed = False
        for host, port in self.hosts:
            try:
                return await self._open(host, port)
            except SmtpSetupError as exc:
                setup_failed = True
                problems.append(str(exc))
            except (SMTPException, OSError, TimeoutError) as exc:
                why = self._scrub(str(exc)) or type(exc).__name__  # scrubbed before it is cut
                problems.append(f"{host}:{port}: {_one_line(why)}")
        kind = SmtpSetupError if setup_failed else SmtpUnavailable
        raise kind(self._scrub("; ".join(problems)))

    async def _open(self, host: str, port: int) -> SmtpConnection:
        where = f"{host}:{port}"
        tls = self.security != "none"
        client = aiosmtplib.SMTP(hostname=host, port=port, timeout=self.timeout,
                                 use_tls=self.security == "tls", start_tls=False,
                                 tls_context=self._context() if tls else None,
                                 local_hostname=self.local_hostname)
        try:
            try:
                await client.connect()
                await client.ehlo()
            except SMTPException as exc:
                if isinstance(exc.__cause__, ssl.SSLError):  # implicit TLS: bad certificate
                    raise SmtpSetupError(f"{where}: TLS failed: {exc.__cause__}") from None
                raise
            if self.security == "starttls":
                if not client.supports_extension("starttls"):
                    raise SmtpSetupError(f"{where} does not offer STARTTLS; refusing to send "
                                         "in plain text")
                try:
                    await client.starttls()
                    await client.ehlo()  # RFC 3207: forget what was said before TLS
                except (SMTPException, ssl.SSLError, OSError) as exc:
                    why = self._scrub(str(exc)) or type(exc).__name__
                    raise SmtpSetupError(f"{where}: STARTTLS failed: {_one_line(why)}") from None
            if self.username:
                await self._login(client, where)
        except BaseException:
            _hard_close(client)
            raise
        return SmtpConnection(client, where, smtputf8=self.smtputf8, timeout=self.timeout,
                              pipelining=self.pipelining, scrub=self._scrub)

    async def _login(self, client: aiosmtplib.SMTP, where: str) -> None:
        # The peer actually reached, not the configured name, decides what "local" means.
        peer = client.get_transport_info("peername")
        if self.security == "none" and not _is_loopback(peer[0] if peer else ""):
            raise SmtpSetupError(f"{where}: refusing AUTH without TLS (smtp.security = 'none')")
        if not client.supports_extension("auth"):
            raise SmtpSetupError(f"server at {where} does not offer AUTH; remove [smtp] "
                                 "username/password or use a server that supports it")
        if not client.supported_auth_methods:
            offered = " ".join(client.server_auth_methods) or "no mechanism"
            ours = ", ".join(client.AUTH_METHODS).upper()
            raise SmtpSetupError(f"server at {where} offers AUTH only as {offered}, which "
                                 f"this client cannot use (it speaks {ours})")
        try:
            await client.login(self.username, self._password)
        except SMTPAuthenticationError as exc:
            # The code alone, never the text: relays have been seen to echo the exchange (the
            # password's base64) in it, and this message is stored in every deferred row.
            raise SmtpSetupError(f"{where}: AUTH refused: {exc.code}; check [smtp] username "
                                 "and password") from None
        except SMTPException as exc:
            if isinstance(exc, SMTPServerDisconnected | SMTPTimeoutError):
                raise
            raise SmtpSetupError(f"{where}: authentication failed ({type(exc).__name__})") \
                from None

