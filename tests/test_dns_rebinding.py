"""DNS rebinding: upstream feeds are fetched from the address that was checked, hop by hop.

The test plays a hostile DNS server for the whole process (socket.getaddrinfo, the boundary
a test cannot reach otherwise): a name answers one address to its first lookup and another
to every later one. Real HTTP(S) servers listen on each of those loopback addresses, on the
same port, so the test sees where each connection really went. 127.0.0.2 and 127.0.0.3 stand
in for public addresses (allowed_networks); 127.0.0.1 is the "internal" server a rebinding
attacker aims at, refused by the check.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from feedserver import FeedServer
from smtpserver import self_signed

from newsletter.collect.netguard import GuardedClient
from newsletter.collect.sources.upstream import (
    FeedState,
    FetchLimits,
    FetchResult,
    fetch_feed,
    open_client,
)

STAND_INS = ("127.0.0.2/32", "127.0.0.3/32")  # "public" for these tests
STRICT = FetchLimits(timeout=5, deadline=10, allowed_networks=STAND_INS)


def rss(title: str) -> bytes:
    return (b'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel>'
            b"<title>T</title><link>https://example.org/</link><description>d</description>"
            b"<item><title>%s</title><link>https://example.org/1</link><guid>g1</guid>"
            b"</item></channel></rss>" % title.encode())


class HostileDNS:
    """Answers names it knows in turn (the last answer repeats); others go to real DNS."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []
        self._lock = threading.Lock()  # asyncio resolves in executor threads
        self._real = socket.getaddrinfo

    def getaddrinfo(self, host: str | bytes | None, port: str | int | None, family: int = 0,
                    type: int = 0, proto: int = 0, flags: int = 0,  # noqa: A002 - stdlib name
                    ) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str,
                                    tuple[str, int]]]:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return self._real(host, port, family, type, proto, flags)  # type: ignore[return-value]
        with self._lock:
            turn = self.lookups.count(name)
            self.lookups.append(name)
        answers = self.answers[name]
        address = answers[min(turn, len(answers) - 1)]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (address, int(port or 0)))]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileDNS]:
    hostile = HostileDNS({})
    monkeypatch.setattr(socket, "getaddrinfo", hostile.getaddrinfo)
    yield hostile


@pytest.fixture
def internal() -> Iterator[FeedServer]:
    """What rebinding aims at: a loopback server with something secret at the same path."""
    with FeedServer() as srv:
        srv.add("/feed.xml", rss("INTERNAL SECRET"))
        yield srv


def fetch(url: str, limits: FetchLimits = STRICT, client: GuardedClient | None = None,
          ) -> FetchResult:
    async def go() -> FetchResult:
        async with client or open_client(limits) as guarded:
            return await fetch_feed(guarded, FeedState(url), limits)

    return asyncio.run(go())


@pytest.mark.parametrize("limits", [
    STRICT,
    # Private networks allowed: the check refuses nothing, but the host is still resolved
    # once and the connection pinned (the checked 127.0.0.2, not the later 127.0.0.1).
    FetchLimits(timeout=5, deadline=10, allow_private_networks=True),
], ids=["strict", "private-allowed"])
def test_the_connection_goes_to_the_checked_address_not_the_rebound_one(
        dns: HostileDNS, internal: FeedServer, limits: FetchLimits) -> None:
    port = internal.port
    dns.answers["feeds.test"] = ["127.0.0.2", "127.0.0.1"]  # checked, then rebound
    with FeedServer(host="127.0.0.2", port=port) as public:
        public.add("/feed.xml", rss("Public"))
        result = fetch(f"http://feeds.test:{port}/feed.xml", limits)
    assert result.status == "ok", result.error
    assert [d.title for d in result.drafts] == ["Public"]
    assert internal.requests == []
    assert [r.headers["host"] for r in public.requests] == [f"feeds.test:{port}"]
    assert dns.lookups == ["feeds.test"]  # once, by the check; the connection did not ask


def test_a_redirect_to_another_host_is_resolved_checked_and_pinned_anew(
        dns: HostileDNS, internal: FeedServer) -> None:
    port = internal.port
    dns.answers["feeds.test"] = ["127.0.0.2"]
    dns.answers["mirror.test"] = ["127.0.0.3", "127.0.0.1"]  # the second hop's host rebinds
    with FeedServer(host="127.0.0.2", port=port) as first, \
            FeedServer(host="127.0.0.3", port=port) as mirror:
        first.redirect("/feed.xml", f"http://mirror.test:{port}/feed.xml")
        mirror.add("/feed.xml", rss("Mirrored"))
        result = fetch(f"http://feeds.test:{port}/feed.xml")
    assert result.status == "ok", result.error
    assert [d.title for d in result.drafts] == ["Mirrored"]
    assert internal.requests == []
    assert [r.headers["host"] for r in mirror.requests] == [f"mirror.test:{port}"]
    assert dns.lookups == ["feeds.test", "mirror.test"]


def test_a_redirect_to_a_host_that_now_resolves_inside_is_refused(
        dns: HostileDNS, internal: FeedServer) -> None:
    port = internal.port
    # The first hop's own name, looked up again for the second hop, now answers loopback.
    dns.answers["feeds.test"] = ["127.0.0.2", "127.0.0.1"]
    with FeedServer(host="127.0.0.2", port=port) as public:
        public.redirect("/start", f"http://feeds.test:{port}/feed.xml")
        result = fetch(f"http://feeds.test:{port}/start")
    assert result.status == "error"
    assert result.error == ("refusing 'feeds.test': 127.0.0.1 is a loopback address "
                            "(private networks not allowed)")
    assert [r.path for r in public.requests] == ["/start"] and internal.requests == []


# -- HTTPS: the pinned address, the host's name for SNI and the certificate check ------------


def tls_server_context(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, bytes]:
    cert, key = self_signed(name)
    (tmp_path / f"{name}.pem").write_bytes(cert)
    (tmp_path / f"{name}.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
    return ctx, cert


def trusting(*certs: bytes) -> GuardedClient:
    """A strict client whose only trusted roots are `certs` (self-signed, so their own CA)."""
    ctx = ssl.create_default_context(cadata="".join(c.decode() for c in certs))
    return GuardedClient(allowed_networks=STAND_INS, ssl_context=ctx)


def test_https_on_the_pinned_address_verifies_the_host_name(dns: HostileDNS,
                                                            tmp_path: Path) -> None:
    server_ctx, cert = tls_server_context(tmp_path, "feeds.test")
    internal_ctx, _ = tls_server_context(tmp_path, "feeds.test")
    dns.answers["feeds.test"] = ["127.0.0.2", "127.0.0.1"]
    with FeedServer(tls=internal_ctx) as internal, \
            FeedServer(host="127.0.0.2", port=internal.port, tls=server_ctx) as public:
        internal.add("/feed.xml", rss("INTERNAL SECRET"))
        public.add("/feed.xml", rss("Over TLS"))
        result = fetch(f"https://feeds.test:{public.port}/feed.xml", client=trusting(cert))
    assert result.status == "ok", result.error
    assert [d.title for d in result.drafts] == ["Over TLS"]
    assert public.server_names == ["feeds.test"]  # SNI: the name, though we dialled an address
    assert [r.headers["host"] for r in public.requests] == [f"feeds.test:{public.port}"]
    assert internal.requests == [] and internal.server_names == []
    assert dns.lookups == ["feeds.test"]


@pytest.mark.parametrize("cert_for", ["127.0.0.2", "other.test"])
def test_https_refuses_a_certificate_not_for_the_host_name(dns: HostileDNS, tmp_path: Path,
                                                           cert_for: str) -> None:
    # A certificate for the pinned address itself does not do: it is checked against the name.
    server_ctx, cert = tls_server_context(tmp_path, cert_for)
    dns.answers["feeds.test"] = ["127.0.0.2"]
    with FeedServer(host="127.0.0.2", tls=server_ctx) as public:
        public.add("/feed.xml", rss("Should not be read"))
        result = fetch(f"https://feeds.test:{public.port}/feed.xml", client=trusting(cert))
    assert result.status == "error" and result.error is not None
    assert result.error.startswith("network error: [SSL: CERTIFICATE_VERIFY_FAILED]")
    assert "Hostname mismatch, certificate is not valid for 'feeds.test'" in result.error
    assert public.server_names == ["feeds.test"] and public.requests == []
