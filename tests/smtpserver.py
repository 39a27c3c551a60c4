"""A real aiosmtpd server on 127.0.0.1 in a thread that misbehaves on cue, for SMTP tests."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPLIES = {
    252: "252 2.1.5 Cannot verify the user, will try delivery",  # accepted, oddly worded
    421: "421 4.7.0 Too many messages, closing connection",
    450: "450 4.2.1 Mailbox busy, try again later",
    451: "451 4.3.0 Local error in processing",
    452: "452 4.5.3 Too many recipients",
    550: "550 5.1.1 No such user here",
    552: "552 5.3.4 Message too big",
    553: "553 5.1.3 Mailbox name not allowed",
    554: "554 5.7.1 Message rejected as spam",
}
_FOREVER = 3600.0  # "hang": the client times out and closes, which cancels the wait


@dataclass(frozen=True)
class Received:
    """One message the server accepted the data of (whatever it then replied)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # as received, dot-stuffing removed, CRLF line ends
    tls: bool
    user: str | None  # AUTH login, if any


def self_signed(host: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for `host` (an IP address or a DNS name), valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _over_tls(server: SMTP) -> bool:
    """STARTTLS sets session.ssl; implicit TLS only shows on the transport."""
    transport = server.transport
    return bool(server.session and server.session.ssl) or (
        transport is not None and transport.get_extra_info("ssl_object") is not None)


class _Handler:
    """aiosmtpd hooks; every scripted misbehaviour lives here."""

    def __init__(self, owner: SmtpTestServer) -> None:
        self.o = owner

    async def _pause(self) -> None:
        if self.o.delay:
            await asyncio.sleep(self.o.delay)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # aiosmtpd reads pipelined commands fine but does not say so; real relays do.
        session.host_name = hostname
        if self.o.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        self.o._log("MAIL", server)
        await self._pause()
        if self.o.auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if self.o.close_after is not None and self.o._count.get(id(session), 0) >= \
                self.o.close_after:
            # Closed on the next loop turn, after aiosmtpd has written this reply.
            assert server.transport is not None
            server.loop.call_soon(server.transport.close)
            return REPLIES[421]
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        self.o._log("RCPT", server)
        await self._pause()
        if address in self.o.drop_on_rcpt:
            await self._drop(server)
        if address in self.o.rcpt_codes:
            if self.o.rcpt_codes[address] < 400:  # an acceptance in unusual words
                envelope.rcpt_tos.append(address)
            return REPLIES[self.o.rcpt_codes[address]]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.o._log("DATA", server)
        auth = session.auth_data
        user = auth.login.decode() if isinstance(auth, LoginPassword) else None
        got = Received(envelope.mail_from or "", tuple(envelope.rcpt_tos),
                       bytes(envelope.original_content or b""), _over_tls(server), user)
        with self.o._lock:
            self.o._messages.append(got)
            self.o._count[id(session)] = self.o._count.get(id(session), 0) + 1
        await self._pause()
        rcpts = set(envelope.rcpt_tos)
        if self.o.hang_after_data is True or rcpts & set(self.o.hang_after_data or ()):
            await asyncio.sleep(_FOREVER)
        fault = self.o.fault_after_data(rcpts) if self.o.fault_after_data else None
        if rcpts & self.o.drop_after_data or fault == "drop":
            await self._drop(server)
        if fault == "421":
            assert server.transport is not None
            server.loop.call_soon(server.transport.close)
            return REPLIES[421]
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.o.data_codes:
                return REPLIES[self.o.data_codes[rcpt]]
        return "250 2.0.0 OK queued"

    async def _drop(self, server: SMTP) -> None:
        assert server.transport is not None
        server.transport.close()  # connection_lost() then cancels this handler
        await asyncio.sleep(_FOREVER)


class _BrokenStartTls(SMTP):
    """Advertises STARTTLS (it has a tls_context) but refuses to start it."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("454 4.7.0 TLS not available due to temporary reason")


class _EchoesAuth(SMTP):
    """Repeats the client's AUTH exchange (as sent, and decoded) in every reply after it,
    the AUTH failure included, as some relays have been seen to."""

    async def push(self, status: Any) -> None:
        said = self.event_handler.o._exchanges.get(id(self.session))
        if said and isinstance(status, str) and not status.startswith("334"):
            status = f"{status} [{said}]"
        await super().push(status)


class _Controller(Controller):
    def __init__(self, owner: SmtpTestServer, **kwargs: Any) -> None:
        super().__init__(_Handler(owner), hostname="127.0.0.1", port=0, **kwargs)
        self.owner = owner

    def factory(self) -> SMTP:
        cls = _BrokenStartTls if self.owner.tls == "broken" else SMTP
        cls = _EchoesAuth if self.owner.echo_auth else cls
        smtpd = cls(self.handler, **self.SMTP_kwargs)
        self.owner._sessions.append(smtpd)
        return smtpd

    def _trigger_server(self) -> None:
        # Port 0 lets the kernel pick a free port; aiosmtpd needs to know it to probe.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class SmtpTestServer:
    """`with SmtpTestServer(rcpt_codes={"x@y": 550}) as srv:` → srv.host, srv.port, srv.messages.

    tls: None (plain), "starttls" (self-signed, offered), "broken" (offered, then refused with
    454) or "implicit" (TLS from the first byte). srv.cert_pem is the certificate to trust.
    """

    close_after: int | None = None  # 421 + close on MAIL once a session brought this many
    rcpt_codes: dict[str, int] = field(default_factory=dict)  # RCPT TO: → reply code
    data_codes: dict[str, int] = field(default_factory=dict)  # reply after the data
    drop_on_rcpt: set[str] = field(default_factory=set)  # close, no reply, at RCPT
    drop_after_data: set[str] = field(default_factory=set)  # close, no reply, after the dot
    # Asked after each message's dot (with its recipients): "drop" closes without a reply,
    # "421" answers 421 and closes, None replies as usual. For random faults (chaos tests).
    fault_after_data: Callable[[set[str]], str | None] | None = None
    hang_after_data: bool | set[str] = False  # no reply after the dot (all, or these)
    delay: float = 0.0  # seconds before each MAIL / RCPT / DATA reply
    pipelining: bool = True  # offer PIPELINING (RFC 2920) in the EHLO reply
    auth: tuple[str, str] | None = None  # (user, password) required before MAIL
    echo_auth: bool = False  # every reply after AUTH repeats what the client sent in it
    tls: Literal["starttls", "broken", "implicit"] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    cert_pem: bytes = b""
    commands: list[tuple[str, bool]] = field(default_factory=list)  # (verb, over TLS)
    times: list[tuple[str, float]] = field(default_factory=list)  # (verb, time.monotonic())
    _messages: list[Received] = field(default_factory=list)
    _sessions: list[SMTP] = field(default_factory=list)
    _count: dict[int, int] = field(default_factory=dict)  # messages per session
    _exchanges: dict[int, str] = field(default_factory=dict)  # session → its AUTH, echoed
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: _Controller | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def _log(self, verb: str, server: SMTP) -> None:
        with self._lock:
            self.commands.append((verb, _over_tls(server)))
            self.times.append((verb, time.monotonic()))

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate (and nothing else)."""
        return ssl.create_default_context(cadata=self.cert_pem.decode("ascii"))

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, data: Any) -> AuthResult:
        ok = (self.auth is not None and isinstance(data, LoginPassword)
              and (data.login, data.password) == tuple(x.encode() for x in self.auth))
        if self.echo_auth and isinstance(data, LoginPassword):
            user, pw = data.login, data.password
            sent = (base64.b64encode(b"\0" + user + b"\0" + pw) if mechanism == "PLAIN"
                    else base64.b64encode(user) + b" " + base64.b64encode(pw))
            said = f"AUTH {mechanism} {sent.decode()} = user {user.decode()} password {pw.decode()}"
            before = self._exchanges.get(id(session))  # clients try one mechanism, then another
            self._exchanges[id(session)] = f"{before}; {said}" if before else said
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    def __enter__(self) -> SmtpTestServer:
        kwargs: dict[str, Any] = {"server_hostname": "smtp.test", "ready_timeout": 5.0}
        if self.auth:
            # Checked in handle_MAIL rather than with auth_required=True, which warns.
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory()
            cert, key = self_signed(self.host)
            self.cert_pem = cert
            (Path(self._tmp.name) / "c.pem").write_bytes(cert)
            (Path(self._tmp.name) / "k.pem").write_bytes(key)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(Path(self._tmp.name) / "c.pem", Path(self._tmp.name) / "k.pem")
            kwargs["ssl_context" if self.tls == "implicit" else "tls_context"] = ctx
        self._controller = _Controller(self, **kwargs)
        self._controller.start()
        self.port = self._controller.port
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._controller is not None
        controller, self._controller = self._controller, None
        # Close every session and let the loop finish closing their sockets before it
        # stops, so no transport is left for the garbage collector to warn about.
        fut = asyncio.run_coroutine_threadsafe(self._close_sessions(), controller.loop)
        fut.result(timeout=5)
        controller.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    async def _close_sessions(self) -> None:
        for smtpd in self._sessions:
            if smtpd.transport is not None:
                smtpd.transport.close()
        for _ in range(5):
            await asyncio.sleep(0.01)
