"""Answer only the Host names the settings name, and redirect by path, never by Host."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from newsletter import log

# Load balancers probe with whatever Host they like (AWS and Kubernetes send the target's
# own IP address, an HTTP/1.0 probe none at all); the answer names no host and links nowhere.
HEALTH_PATH = "/healthz"
_PASSED = "newsletter.host_passed"  # set in the scope by the app behind the check
_REPORTED_MAX = 20  # distinct refused hosts logged per process: a scan must not flood the log


def local_location(path: str, query: bytes | str = b"") -> bytes:
    """A Location header value that is a path on this site: never a host.

    "//evil.example/" would be read by a browser as a host name, so leading slashes collapse.
    """
    if isinstance(query, str):
        query = query.encode("latin-1")
    location = ("/" + path.lstrip("/")).encode("utf-8")
    return location + b"?" + query if query else location


class _Passed:
    """Marks the request as one whose Host was accepted, then serves it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_PASSED] = True
        await self.app(scope, receive, send)


class HostCheck:
    """Starlette's TrustedHostMiddleware for every path but the health check.

    A refused request gets its 400 "Invalid host header" (the header is never repeated back)
    and one log line per distinct host, so an operator who left a name out can see which.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        # www_redirect off: it would build a redirect from the request's own Host.
        self.checked = TrustedHostMiddleware(_Passed(app), allowed_hosts=list(allowed_hosts),
                                             www_redirect=False)
        self.allowed = ", ".join(allowed_hosts)
        self.reported: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        await self.checked(scope, receive, send)
        if not scope.get(_PASSED):
            self._report(scope)

    def _report(self, scope: Scope) -> None:
        raw = dict(scope["headers"]).get(b"host", b"(none)").decode("latin-1")
        host = "".join(c if c.isprintable() else "?" for c in raw[:100])
        if host in self.reported or len(self.reported) >= _REPORTED_MAX:
            return
        self.reported.add(host)
        log.event("web.host_refused", level=logging.WARNING, host=host, allowed=self.allowed,
                  how="add it to [server] allowed_hosts if it is one of this site's names")


class SlashRedirect:
    """The router's fallback: `/issues` → `/issues/` (and back) when only the other matches.

    It stands in for Starlette's redirect_slashes, whose Location is built from the Host
    header (`Host: evil.example` made `/issues` redirect to http://evil.example/issues/);
    this one is a path, so it is the same whatever Host or X-Forwarded-Host was sent.
    """

    def __init__(self, routes: Sequence[BaseRoute], then: ASGIApp) -> None:
        self.routes = routes
        self.then = then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "/")
        if scope["type"] == "http" and path != "/":
            other = path.rstrip("/") if path.endswith("/") else path + "/"
            probe = {**scope, "path": other}
            if other and any(route.matches(probe)[0] is not Match.NONE for route in self.routes):
                await redirect(send, local_location(other, scope.get("query_string", b"")))
                return
        await self.then(scope, receive, send)


async def redirect(send: Send, location: bytes, status: int = 307) -> None:
    """A redirect to a path of our own (see local_location), never to a host; 307 keeps a
    POST a POST, as Starlette's own slash redirect does."""
    body = b"Redirecting"
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"location", location), (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
