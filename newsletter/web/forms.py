"""A visitor's form over HTTP: a capped body, its fields, and a per-address rate limit."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable
from urllib.parse import parse_qsl

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

Fields = dict[str, list[str]]


class SlidingWindow:
    """At most `limit` hits per key in any `window` seconds, in memory, per process.

    Memory is bounded: at most `max_keys` keys are tracked, the least recently seen
    forgotten first, so a flood from many addresses cannot exhaust it.
    """

    def __init__(self, limit: int, window: float, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.max_keys, self.clock = limit, window, max_keys, clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Record a hit; 0 if allowed, else the seconds until one would be."""
        now = self.clock()
        with self._lock:
            hits = self._hits.pop(key, None) or deque()
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            self._hits[key] = hits
            if len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
            if len(hits) >= self.limit:
                return max(hits[0] + self.window - now, 1.0)
            hits.append(now)
            return 0.0


class Refused(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


TOO_LARGE = (413, "The request is too large.")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Refused(*TOO_LARGE)  # refuse before reading a byte of it
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked bodies declare no length: count them
        size += len(chunk)
        if size > limit:
            raise Refused(*TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_fields(request: Request, body: bytes) -> Fields:
    """Form fields from urlencoded, multipart (RFC 8058 prefers it) or a JSON object."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: Fields = {}
    try:
        if ctype == "application/json":
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            for key, value in data.items():
                values = value if isinstance(value, list) else [value]
                fields[key] = [v for v in values if isinstance(v, str)]
        elif ctype == "multipart/form-data":
            async def once() -> AsyncGenerator[bytes, None]:
                yield body

            form = await MultiPartParser(request.headers, once(), max_files=0,
                                         max_fields=100).parse()
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields.setdefault(key, []).append(value)
        elif body:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
            for key, value in pairs:
                fields.setdefault(key, []).append(value)
    except (ValueError, MultiPartException):  # bad JSON or UTF-8, too many fields, files
        raise Refused(400, "The form could not be read.") from None
    return fields


def first(fields: Fields, name: str) -> str:
    values = fields.get(name) or [""]
    return values[0]


def client_ip(request: Request) -> str:
    # uvicorn puts the visitor here from X-Forwarded-For only when the proxy's address is in
    # [server] forwarded_allow_ips (default: loopback); otherwise this is the proxy.
    return request.client.host if request.client else "unknown"


def rate_key(ip: str) -> str:
    """The IPv6 /64 a host usually gets whole, so rotating within it does not evade limits."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)
