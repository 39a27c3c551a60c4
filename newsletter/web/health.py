"""A database outage on the web: /healthz says so (briefly cached), pages answer 503."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter import log


class Health:
    """GET /healthz. `check` gives None when the database answers, else a reason safe to
    show anyone. It runs in a thread (it waits on the network), one at a time, and at most
    once per `cache_seconds`: every request in between gets the last answer, so a flood of
    health checks cannot become a load on the database. One that has not answered within
    `timeout` counts as down (a database behind a dropped route never says no)."""

    def __init__(self, check: Callable[[], str | None] | None, *, cache_seconds: float = 2.0,
                 timeout: float = 2.0) -> None:
        self.check, self.cache_seconds, self.timeout = check, cache_seconds, timeout
        self.answer: str | None = None
        self.answered_at = float("-inf")
        self.running: asyncio.Future[str | None] | None = None

    async def endpoint(self, _request: Request) -> PlainTextResponse:
        reason = await self.reason()
        # no-store: a cached "ok" would hide an outage from the monitor.
        headers = {"cache-control": "no-store"}
        if reason:
            return PlainTextResponse(reason, status_code=503, headers=headers)
        return PlainTextResponse("ok", headers=headers)

    async def reason(self) -> str | None:
        if self.check is None:
            return None
        if time.monotonic() - self.answered_at < self.cache_seconds:
            return self.answer
        if self.running is None or self.running.done():
            self.running = asyncio.ensure_future(asyncio.to_thread(self._run, self.check))
        try:  # shielded: a check still waiting is joined by the next request, not repeated
            answer = await asyncio.wait_for(asyncio.shield(self.running), self.timeout)
        except TimeoutError:
            answer = f"database unreachable (no answer within {self.timeout:g} s)"
        self.answer, self.answered_at = answer, time.monotonic()
        return answer

    @staticmethod
    def _run(check: Callable[[], str | None]) -> str | None:
        try:
            return check()
        except Exception as exc:  # noqa: BLE001 - a broken check is an unhealthy service
            return f"health check failed: {type(exc).__name__}"


class OutageResponses:
    """ASGI middleware: a request that found the database out of reach (`when` says which
    errors those are) gets 503 and a Retry-After, and the log one line at most every
    `quiet` seconds, not a 500 with a traceback each; the page works once it is back."""

    def __init__(self, app: ASGIApp, when: Callable[[BaseException], bool],
                 quiet: float = 10.0) -> None:
        self.app, self.when, self.quiet = app, when, quiet
        self.logged_at = float("-inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started or not self.when(exc):
                raise
            if time.monotonic() - self.logged_at >= self.quiet:
                self.logged_at = time.monotonic()
                log.event("web.db_unreachable", level=30, path=scope.get("path", ""),
                          error=" ".join(str(getattr(exc, "orig", exc)).split())[:300],
                          action="503 until it is back")
            response = PlainTextResponse("database unreachable; try again shortly",
                                         status_code=503, headers={"retry-after": "5",
                                                                   "cache-control": "no-store"})
            await response(scope, receive, send)
