"""Guards for fetching untrusted URLs: scheme/address checks and bounded, decompressed reads."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import zlib
from collections.abc import Awaitable, Callable, Mapping

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
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


async def check_url(url: str, allow_private_networks: bool = False,
                    resolver: Resolver | None = None) -> None:
    """Refuse `url` unless it is http(s) and every address its host resolves to is public.

    Every address must pass, not just one, because the HTTP client may connect to any of
    them. This does not stop DNS rebinding (the name may resolve differently when the
    client connects a moment later); pinning the connection to the checked address would,
    and is out of scope here.
    """
    _, host, port = split_url(url)
    if allow_private_networks:
        return
    try:
        addresses = await (resolver or system_resolver)(host, port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeURLError(f"cannot resolve host {host!r}: {exc}") from None
    if not addresses:
        raise UnsafeURLError(f"host {host!r} resolved to no address")
    for address in addresses:
        reason = forbidden_reason(address)
        if reason:
            raise UnsafeURLError(f"refusing {host!r}: {reason} (private networks not allowed)")


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
