"""Reading requests the same way everywhere: the client's address and a size-capped body."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from starlette.requests import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# uvicorn's own default when neither the setting nor FORWARDED_ALLOW_IPS says otherwise.
_DEFAULT_PROXIES = ("127.0.0.1", "::1")
_MAX_ADDRESS_CHARS = 64  # an X-Forwarded-For entry is stored as consent_ip: keep it short


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


@dataclass(frozen=True)
class ClientAddress:
    """The visitor's address: the peer, or what a trusted proxy says in X-Forwarded-For.

    Built from `[server] forwarded_allow_ips`, the list uvicorn is given too. When uvicorn
    has already replaced the peer by the visitor, reading the header again gives the same
    answer (the visitor is not a trusted proxy, or every hop was), so the two agree.
    """

    proxies: tuple[Network, ...] = ()
    trust_all: bool = False

    @classmethod
    def from_setting(cls, allowed: Iterable[str] = ()) -> ClientAddress:
        """Empty: FORWARDED_ALLOW_IPS from the environment, else loopback (as uvicorn)."""
        entries = [e.strip() for e in allowed if e.strip()]
        if not entries:
            entries = [e.strip() for e in os.environ.get(
                "FORWARDED_ALLOW_IPS", ",".join(_DEFAULT_PROXIES)).split(",") if e.strip()]
        networks = []
        for entry in entries:
            if entry != "*":
                try:  # config check already refused bad entries; the environment may not
                    networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    continue
        return cls(tuple(networks), "*" in entries)

    def trusted(self, host: str) -> bool:
        if self.trust_all:
            return True
        addr = _ip(host)
        return addr is not None and any(addr in net for net in self.proxies)

    def __call__(self, request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        header = request.headers.get("x-forwarded-for")
        if not header or not self.trusted(peer):
            return peer
        hops = [h.strip() for h in header.split(",") if h.strip()]
        if not hops:
            return peer
        # The nearest hop a trusted proxy did not add is the visitor; earlier entries
        # are whatever the visitor chose to send.
        chosen = next((h for h in reversed(hops) if not self.trusted(h)), hops[0])
        return chosen[:_MAX_ADDRESS_CHARS]


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


async def capped_stream(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks; BodyTooLarge past `limit` bytes, declared or counted."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise BodyTooLarge(limit)  # before reading a byte of it
    size = 0
    async for chunk in request.stream():  # chunked bodies declare no length: count them
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        yield chunk


async def read_capped(request: Request, limit: int) -> bytes:
    return b"".join([chunk async for chunk in capped_stream(request, limit)])
