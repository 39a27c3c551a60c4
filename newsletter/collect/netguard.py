"""Guards for fetching untrusted URLs: address checks, a client pinned to them, bounded reads."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
import zlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Mapping,
)
from typing import Any, NamedTuple

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses a connection to it could reach. Injectable so the hop-by-hop
# checks can be tested with names that "resolve" anywhere (a boundary fake, like DNS itself).
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOWED_SCHEMES = frozenset({"http", "https"})

# NAT64 (RFC 6052) embeds an IPv4 address in the low 32 bits; a NAT64 gateway would
# forward 64:ff9b::a00:1 to 10.0.0.1, so the embedded address is what must be judged.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeURLError(ValueError):
    """A URL the fetcher refuses to contact; the message is one line for the operator."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client address is the one traffic ends up at
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden_reason(address: str | IPAddress) -> str | None:
    """Why an address must not be contacted from a server (None when it is public)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = forbidden_reason(inner)
            return f"{reason} (embedded in {ip})" if reason else None
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        # Catches what the flags above miss, e.g. carrier-grade NAT 100.64.0.0/10.
        (not ip.is_global, "not globally routable"),
    )
    for flagged, name in checks:
        if flagged:
            return f"{ip} is a {name} address"
    return None


def split_url(url: str) -> tuple[str, str, int]:
    """Scheme, ASCII host and port of an absolute http(s) URL, or UnsafeURLError."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeURLError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ALLOWED_SCHEMES:
        scheme = parsed.scheme or "(none)"
        raise UnsafeURLError(f"scheme {scheme!r} is not allowed (http/https only)")
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, which is what DNS wants
    if not host:
        raise UnsafeURLError(f"URL {url!r} has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed.scheme, host, port


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address getaddrinfo gives for (host, port), IPv6 zone ids dropped."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(sockaddr[0]).split("%", 1)[0] for *_, sockaddr in infos]


class Checked(NamedTuple):
    """A URL's host and port, and the addresses it resolved to, each of which passed the check."""

    host: str
    port: int
    addresses: tuple[str, ...]


async def check_url(url: str, allow_private_networks: bool = False,
                    resolver: Resolver | None = None,
                    allowed_networks: Iterable[IPNetwork] = ()) -> Checked:
    """Resolve `url`'s host once; refuse it unless http(s) and every address may be contacted.

    Every address must pass, not just one, because a connection may go to any of them. The
    host is resolved even when private networks are allowed: the answer is what GuardedClient
    pins the connection to, so a name that resolves elsewhere a moment later (DNS rebinding)
    changes nothing. `allowed_networks` pass even when not public (e.g. one intranet host).
    """
    _, host, port = split_url(url)
    try:
        answer = await (resolver or system_resolver)(host, port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeURLError(f"cannot resolve host {host!r}: {exc}") from None
    addresses: list[str] = []
    for address in answer:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise UnsafeURLError(f"host {host!r} resolved to {address!r}, not an address") from None
        reason = None if allow_private_networks else forbidden_reason(ip)
        if reason and not any(ip in network for network in allowed_networks):
            raise UnsafeURLError(f"refusing {host!r}: {reason} (private networks not allowed)")
        if str(ip) not in addresses:
            addresses.append(str(ip))
    if not addresses:
        raise UnsafeURLError(f"host {host!r} resolved to no address")
    return Checked(host, port, tuple(addresses))


# -- the client: every connection goes to an address check_url passed ------------------------

# Most specific first: httpx's error for each error of the httpcore pool under the transport.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout), (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout), (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError), (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError), (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Generator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _HTTPX_ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections to the addresses pinned for (host, port), never resolving the name.

    TLS is started on the returned stream by httpcore with the host name as server_hostname,
    so SNI and certificate verification are against the name, not the address.
    """

    def __init__(self, pins: Mapping[tuple[str, int], tuple[str, ...]]) -> None:
        self._pins = pins
        self._network = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        addresses = self._pins.get((host, port))
        if not addresses:  # a request that skipped the check: refuse rather than resolve
            raise httpcore.ConnectError(f"refusing to connect to {host}:{port}: not checked")
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._network.connect_tcp(address, port, timeout, local_address,
                                                       socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def sleep(self, seconds: float) -> None:
        await self._network.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _PinnedTransport(httpx.AsyncBaseTransport):
    """httpx's HTTP transport over an httpcore pool whose network backend is _PinnedBackend.

    httpx (0.28) cannot be given a network backend, so this is its default transport again,
    on the public APIs of both libraries: no proxy, HTTP/1.1, keep-alive for 5 s.
    """

    def __init__(self, pins: Mapping[tuple[str, int], tuple[str, ...]],
                 ssl_context: ssl.SSLContext, max_connections: int) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=max_connections, keepalive_expiry=5.0,
            network_backend=_PinnedBackend(pins))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        core = httpcore.Request(
            request.method,
            httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                         target=url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(response.status, headers=response.headers,
                              stream=_Body(response.stream), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


class GuardedClient:
    """An HTTP client that connects only to addresses it has checked, so DNS rebinding fails.

    `send` resolves the URL's host once, checks every address (check_url), pins (host, port)
    to them and sends; the transport connects to a pinned address and never resolves the name
    again (a host nobody checked is refused). The Host header, SNI and certificate
    verification keep the name. Proxy variables and .netrc are ignored. An async context
    manager; the policy is fixed per client, so a pooled connection never crosses policies.
    """

    def __init__(self, *, allow_private_networks: bool = False, resolver: Resolver | None = None,
                 allowed_networks: Iterable[str] = (), max_connections: int = 8,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.allow_private_networks = allow_private_networks
        self.resolver = resolver
        self.allowed_networks = tuple(ipaddress.ip_network(n) for n in allowed_networks)
        self._pins: dict[tuple[str, int], tuple[str, ...]] = {}
        # httpx's own default trust (certifi), not SSL_CERT_FILE/DIR from the environment.
        tls = ssl_context or httpx.create_ssl_context(trust_env=False)
        transport = _PinnedTransport(self._pins, tls, max(1, max_connections))
        # trust_env=False: no proxy (it would connect instead of us) and no .netrc credentials.
        self._http = httpx.AsyncClient(transport=transport, follow_redirects=False,
                                       trust_env=False)

    async def send(self, url: str, headers: Mapping[str, str], timeout: float) -> httpx.Response:
        """GET `url`, streamed and without following redirects, once its host passed the check."""
        checked = await check_url(url, self.allow_private_networks, self.resolver,
                                  self.allowed_networks)
        self._pins[checked.host, checked.port] = checked.addresses
        request = self._http.build_request("GET", url, headers=headers,
                                           timeout=httpx.Timeout(timeout))
        return await self._http.send(request, stream=True, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> GuardedClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


_ELEMENT_START_RE = re.compile(rb"<\w")
_ENTITY_DECL_RE = re.compile(rb"<!\s*ENTITY", re.IGNORECASE)


def declares_xml_entities(body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether the prolog (all before the first element) declares XML entities.

    Hardening: expat caps entity amplification, but when it gives up feedparser re-parses
    with its "loose" parser, which expands the plain-text entities of the prolog itself: a
    5 MB "quadratic blow-up" feed became a 2.5 GB title. Feeds never need entities, so the
    collector refuses them. Judged on the text as feedparser decodes it (UTF-16, a declared
    charset), not only on the raw bytes.
    """
    from feedparser.encodings import convert_to_utf8

    texts = [body]
    with contextlib.suppress(Exception):  # feedparser's own failure: the raw bytes still count
        texts.append(convert_to_utf8(dict(headers), body, {}))
    for data in texts:
        start = _ELEMENT_START_RE.search(data)
        if _ENTITY_DECL_RE.search(data, 0, start.start() if start else len(data)):
            return True
    return False


class BodyTooLarge(Exception):
    """The decoded body went past the byte cap; reading stopped there."""


class _Inflater:
    """Decompresses gzip/deflate a bounded slice at a time so a bomb never inflates in memory."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._raw_deflate = False
        self._started = False
        self._done = False  # past the end of the stream: trailing bytes are ignored, like httpx
        self._obj = self._new()

    def _new(self) -> zlib._Decompress:
        if self.encoding == "deflate":
            return zlib.decompressobj(-zlib.MAX_WBITS if self._raw_deflate else zlib.MAX_WBITS)
        return zlib.decompressobj(zlib.MAX_WBITS | 16)

    def feed(self, data: bytes, room: int) -> bytes:
        """Inflate `data`, returning at most `room + 1` bytes (one extra tells of overflow)."""
        out = bytearray()
        while data and not self._done and len(out) <= room:
            try:
                out += self._obj.decompress(data, room + 1 - len(out))
            except zlib.error as exc:
                # Some servers send raw deflate without the zlib header; httpx tolerates it too.
                if self.encoding == "deflate" and not self._started and not self._raw_deflate:
                    self._raw_deflate = True
                    self._obj = self._new()
                    continue
                raise ValueError(f"corrupt {self.encoding} body: {exc}") from None
            self._started = True
            if self._obj.eof:
                data = self._obj.unused_data
                if self.encoding == "gzip" and data[:1] == b"\x1f":
                    self._obj = self._new()  # another gzip member follows
                else:
                    self._done = True
            else:
                data = self._obj.unconsumed_tail
        return bytes(out)


async def read_body(response: httpx.Response, max_bytes: int) -> bytes:
    """The decoded body of a streamed response, or BodyTooLarge past `max_bytes` decoded bytes.

    Reads raw bytes and inflates them here with an output bound, rather than through
    `aiter_bytes()`, whose decoder inflates a whole network chunk at once (64 KiB of a gzip
    bomb becomes ~64 MiB before any cap can look at it).
    """
    codings = [
        c.strip().lower()
        for c in response.headers.get("content-encoding", "").split(",")
        if c.strip() and c.strip().lower() != "identity"
    ]
    codings = ["gzip" if c == "x-gzip" else c for c in codings]
    if len(codings) > 1 or (codings and codings[0] not in ("gzip", "deflate")):
        raise ValueError(f"unsupported Content-Encoding {response.headers['content-encoding']!r}")
    inflater = _Inflater(codings[0]) if codings else None
    body = bytearray()
    async for chunk in response.aiter_raw():
        room = max_bytes - len(body)
        body += inflater.feed(chunk, room) if inflater else chunk
        if len(body) > max_bytes:
            raise BodyTooLarge(f"body exceeds {max_bytes} bytes")
    return bytes(body)
