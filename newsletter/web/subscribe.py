"""Subscribe, confirm, unsubscribe (RFC 8058 one-click) and preferences pages over HTTP."""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from jinja2 import ChoiceLoader, Environment, FileSystemLoader
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from newsletter import log
from newsletter.audience import subscriptions, tokens
from newsletter.audience.subscriptions import AddressError, TokenError

if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.store.subscribers import SubscriberStore

Fields = dict[str, list[str]]
CSRF_COOKIE = "newsletter_csrf"
HONEYPOT = "website"  # hidden from people by CSS; bots fill in every field they find
CHECK_INBOX = ("Thank you. If this address can be subscribed, a confirmation email is on its "
               "way: open the link in it to start receiving the newsletter.")
_AGAIN = "You can subscribe again, or use the link in a newer email."
# Every page carries personal tokens in its URL: never send them on as a Referer, never
# cache them, never frame them.
SECURITY_HEADERS = {
    "cache-control": "no-store", "referrer-policy": "no-referrer", "x-frame-options": "DENY",
    "x-content-type-options": "nosniff", "x-robots-tag": "noindex",
    "content-security-policy": "default-src 'none'; style-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"}


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SubscribeDeps:
    """Everything the pages need, as plain values; build with from_settings()."""

    store: SubscriberStore
    secret: bytes
    publication_name: str
    base_url: str
    send_confirmation: Callable[[str, str, str], None]  # (email, name, confirm_url)
    send_preferences_link: Callable[[str, str, str], None] | None = None  # for /manage
    confirm_max_age: timedelta = timedelta(hours=72)
    token_max_age: timedelta = timedelta(days=400)  # unsubscribe and preferences links
    resend_window: timedelta = timedelta(minutes=60)
    rate_per_ip: int = 20
    rate_window: timedelta = timedelta(hours=1)
    smtputf8: bool = False
    max_body_bytes: int = 16 * 1024
    templates_dir: Path | None = None
    now: Callable[[], datetime] = field(default=_utcnow)

    @classmethod
    def from_settings(cls, settings: Settings, *, store: SubscriberStore, secret: bytes,
                      send_confirmation: Callable[[str, str, str], None],
                      send_preferences_link: Callable[[str, str, str], None] | None = None,
                      ) -> SubscribeDeps:
        sub = settings.subscriptions
        folder = settings.newsletter.templates_dir
        return cls(store=store, secret=secret, publication_name=settings.publication.name,
                   base_url=settings.site_url, send_confirmation=send_confirmation,
                   send_preferences_link=send_preferences_link,
                   confirm_max_age=timedelta(hours=sub.confirm_hours),
                   token_max_age=timedelta(days=sub.unsubscribe_days),
                   resend_window=timedelta(minutes=sub.confirm_resend_minutes),
                   rate_per_ip=sub.rate_per_ip, smtputf8=settings.mail.smtputf8,
                   templates_dir=Path(folder) if folder else None)


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


class _Refused(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


_TOO_LARGE = (413, "The request is too large.")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _Refused(*_TOO_LARGE)  # refuse before reading a byte of it
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked bodies declare no length: count them
        size += len(chunk)
        if size > limit:
            raise _Refused(*_TOO_LARGE)
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse(request: Request, body: bytes) -> Fields:
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
        raise _Refused(400, "The form could not be read.") from None
    return fields


def _first(fields: Fields, name: str) -> str:
    values = fields.get(name) or [""]
    return values[0]


def _client_ip(request: Request) -> str:
    # uvicorn puts the visitor here from X-Forwarded-For only when the proxy's address is in
    # [server] forwarded_allow_ips (default: loopback); otherwise this is the proxy.
    return request.client.host if request.client else "unknown"


def _rate_key(ip: str) -> str:
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


class _Pages:
    def __init__(self, deps: SubscribeDeps) -> None:
        self.deps = deps
        self.home_url = deps.base_url.rstrip("/") + "/"
        self.limiter = SlidingWindow(deps.rate_per_ip, deps.rate_window.total_seconds())
        loaders = [FileSystemLoader(str(deps.templates_dir))] if deps.templates_dir else []
        loaders.append(FileSystemLoader(str(subscriptions.DEFAULT_TEMPLATES)))
        # Autoescape: names, addresses and section titles are visitor- or feed-supplied.
        self.env = Environment(loader=ChoiceLoader(loaders), autoescape=True)

    # -- responses ------------------------------------------------------------------------

    def html(self, template: str, code: int = 200, **values: Any) -> HTMLResponse:
        page = self.env.get_template(f"web/{template}").render(
            publication=self.deps.publication_name, home_url=self.home_url, **values)
        return HTMLResponse(page, code, headers=SECURITY_HEADERS)

    def message(self, title: str, text: str, status: int = 200, *, wants_json: bool = False,
                extra_headers: dict[str, str] | None = None, **values: Any) -> Response:
        headers = {**SECURITY_HEADERS, **(extra_headers or {})}
        if wants_json:
            body = {"ok": status < 400, "message" if status < 400 else "error": text}
            return JSONResponse(body, status, headers=headers)
        response = self.html("message.html", status, title=title, text=text, **values)
        response.headers.update(extra_headers or {})
        return response

    def bad_link(self, what: str, exc: TokenError, request: Request) -> Response:
        log.event("subscriber_link_refused", page=request.url.path, reason=exc.reason)
        # A preferences link can be asked for again: /manage mails a fresh one.
        again = {"link_url": self.home_url + "manage", "link_text": "Email me a new link"} \
            if what == "preferences" else {}
        return self.message("This link does not work",
                            f"This {what} link is not valid, or it has expired. {_AGAIN}", 400,
                            **again)

    async def read_fields(self, request: Request, wants_json: bool = False, *,
                          lenient: bool = False) -> Fields | Response:
        """The request's fields, or the error response to send instead.

        `lenient`: an unreadable (but not oversized) body counts as no fields.
        """
        try:
            body = await _read_body(request, self.deps.max_body_bytes)
            return await _parse(request, body)
        except _Refused as exc:
            if lenient and exc.code == 400:
                return {}
            return self.message("Sorry", exc.text, exc.code, wants_json=wants_json)

    # -- /subscribe -----------------------------------------------------------------------

    async def subscribe(self, request: Request) -> Response:
        if request.method != "POST":
            return self.html("subscribe.html", honeypot=HONEYPOT)
        ctype = request.headers.get("content-type", "")
        wants_json = ctype.startswith("application/json") or \
            "application/json" in request.headers.get("accept", "")
        ip = _client_ip(request)
        retry = self.limiter.hit(_rate_key(ip))
        if retry:
            log.event("subscribe_rate_limited", ip=ip)
            return self.message("Too many requests", "Too many requests from your address; "
                                "please try again later.", 429, wants_json=wants_json,
                                extra_headers={"retry-after": str(int(retry + 0.999))})
        fields = await self.read_fields(request, wants_json)
        if isinstance(fields, Response):
            return fields
        done = self.message("Check your inbox", CHECK_INBOX, 202, wants_json=wants_json)
        if _first(fields, HONEYPOT):
            log.event("subscribe_honeypot", ip=ip)
            return done  # look like success, so the bot learns nothing
        email, name = _first(fields, "email"), _first(fields, "name")
        deps, now = self.deps, self.deps.now()
        try:
            outcome = await run_in_threadpool(
                subscriptions.subscribe, deps.store, email, name, method="form", ip=ip,
                user_agent=request.headers.get("user-agent"), now=now,
                smtputf8=deps.smtputf8, resend_window=deps.resend_window)
        except AddressError as exc:
            if wants_json:
                return self.message("", exc.reason, 400, wants_json=True)
            return self.html("subscribe.html", 400, honeypot=HONEYPOT, error=exc.reason,
                             email=email, name=name)
        sub = outcome.subscriber
        log.event("subscribe_request", subscriber=sub.id, state=outcome.state,
                  mail=outcome.send_confirmation)
        if outcome.send_confirmation:
            url = subscriptions.confirm_url(
                deps.base_url, subscriptions.confirm_token(deps.secret, sub, now))
            # After the response: its timing must not tell whether a mail was sent.
            done.background = BackgroundTask(self._send, sub.id, sub.email, sub.name, url)
        return done

    def _send(self, subscriber_id: int, email: str, name: str, url: str) -> None:
        try:
            self.deps.send_confirmation(email, name, url)
        except Exception as exc:  # a background task has nobody to raise to: log it
            log.event("confirmation_send_failed", level=logging.ERROR, subscriber=subscriber_id,
                      error=f"{type(exc).__name__}: {exc}")
            # Let the next request try again instead of waiting out the resend window.
            self.deps.store.update_subscriber(subscriber_id, self.deps.now(),
                                              confirmation_sent_at=None)

    # -- /confirm -------------------------------------------------------------------------

    async def confirm(self, request: Request) -> Response:
        deps = self.deps
        if request.method == "HEAD":  # link checkers probe with HEAD: that is not a click
            return Response(headers=SECURITY_HEADERS)
        try:
            outcome = await run_in_threadpool(
                subscriptions.confirm, deps.store, deps.secret,
                request.query_params.get("token", ""), now=deps.now(),
                max_age=deps.confirm_max_age)
        except TokenError as exc:
            return self.bad_link("confirmation", exc, request)
        if outcome.changed:
            log.event("subscriber_confirmed", subscriber=outcome.subscriber.id)
            return self.message("You are subscribed",
                                f"Thank you: your subscription to {deps.publication_name} "
                                f"is confirmed.")
        return self.message("Already confirmed", "Your subscription was already confirmed; "
                            "there is nothing more to do.")

    # -- /unsubscribe ---------------------------------------------------------------------

    async def unsubscribe(self, request: Request) -> Response:
        deps = self.deps
        token = request.query_params.get("token", "")
        if request.method != "POST":
            # A GET never unsubscribes: mail scanners and link previews follow links.
            try:
                sub = await run_in_threadpool(
                    subscriptions.resolve_token, deps.store, deps.secret, token,
                    "unsubscribe", now=deps.now(), max_age=deps.token_max_age)
            except TokenError as exc:
                return self.bad_link("unsubscribe", exc, request)
            return self.html("unsubscribe.html", token=token, email=sub.email,
                             done=sub.status in ("unsubscribed", "complained"))
        # RFC 8058 one-click: the token in the URL is the authority; no cookie, no CSRF
        # token, no redirect. The body ("List-Unsubscribe=One-Click") is read only to cap
        # it: an odd body from some mail provider must not stop the unsubscribe.
        fields = await self.read_fields(request, lenient=True)
        if isinstance(fields, Response):
            return fields
        token = token or _first(fields, "token")
        try:
            outcome = await run_in_threadpool(subscriptions.unsubscribe, deps.store,
                                              deps.secret, token, now=deps.now(),
                                              max_age=deps.token_max_age)
        except TokenError as exc:
            return self.bad_link("unsubscribe", exc, request)
        if outcome.changed:
            log.event("subscriber_unsubscribed", subscriber=outcome.subscriber.id,
                      one_click=_first(fields, "List-Unsubscribe") == "One-Click")
        return self.html("unsubscribe.html", token=token, email=outcome.subscriber.email,
                         done=True)

    # -- /preferences ---------------------------------------------------------------------

    def _csrf(self, subscriber_id: int, nonce: str, now: datetime) -> str:
        return tokens.sign(self.deps.secret, "preferences-form", str(subscriber_id), now,
                           extra=nonce)

    def _csrf_ok(self, request: Request, fields: Fields, subscriber_id: int) -> bool:
        nonce = request.cookies.get(CSRF_COOKIE, "")
        if len(nonce) < 32:
            return False
        try:
            subject = tokens.verify(self.deps.secret, _first(fields, "csrf"), "preferences-form",
                                    timedelta(days=1), self.deps.now(), extra=nonce)
        except TokenError:
            return False
        return subject == str(subscriber_id)

    async def preferences(self, request: Request) -> Response:
        deps, now = self.deps, self.deps.now()
        token = request.query_params.get("token", "")
        fields: Fields = {}
        if request.method == "POST":
            got = await self.read_fields(request)
            if isinstance(got, Response):
                return got
            fields = got
        try:
            sub = await run_in_threadpool(subscriptions.resolve_token, deps.store, deps.secret,
                                          token, "preferences", now=now,
                                          max_age=deps.token_max_age)
        except TokenError as exc:
            return self.bad_link("preferences", exc, request)
        available = await run_in_threadpool(deps.store.sections)
        saved, error = False, ""
        if request.method == "POST":
            if not self._csrf_ok(request, fields, sub.id):
                log.event("preferences_csrf_refused", subscriber=sub.id)
                return self.message("Please try again", "This form has expired or was not "
                                    "sent from this site. Open the link in your email again.",
                                    403)
            chosen_now = fields.get("sections", [])
            if available and not set(chosen_now) & set(available):
                # Nothing ticked would be stored as "every section": ask instead of guessing.
                error = "Choose at least one section, or unsubscribe below."
            else:
                outcome = await run_in_threadpool(
                    subscriptions.update_preferences, deps.store, deps.secret, token,
                    chosen_now, now=now, max_age=deps.token_max_age, available=available)
                sub, saved = outcome.subscriber, True
        # Double-submit: the cookie's nonce is signed into the form; a forged cross-site
        # POST has neither. The URL token already authorises, so this is defence in depth.
        nonce = request.cookies.get(CSRF_COOKIE, "")
        nonce = nonce if len(nonce) == 32 and nonce.isalnum() else secrets.token_hex(16)
        chosen = set(sub.sections or available)
        unsubscribe = subscriptions.unsubscribe_url(
            deps.base_url, subscriptions.unsubscribe_token(deps.secret, sub.id, sub.email, now))
        response = self.html("preferences.html", 400 if error else 200, token=token,
                             email=sub.email, subscriber_status=sub.status,
                             csrf=self._csrf(sub.id, nonce, now),
                             sections=[(name, name in chosen) for name in available],
                             saved=saved, error=error, unsubscribe_url=unsubscribe)
        response.set_cookie(CSRF_COOKIE, nonce, max_age=86_400, path="/preferences",
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response


def subscribe_routes(*, deps: SubscribeDeps,
                     more: Sequence[Callable[[_Pages], list[Route]]] = ()) -> list[Route]:
    """The routes to pass to create_app(extra_routes=...); `more` adds pages sharing these
    pages' templates and per-client limit (web.manage.manage_routes)."""
    pages = _Pages(deps)
    return [
        *(route for add in more for route in add(pages)),
        Route("/subscribe", pages.subscribe, methods=["GET", "POST"], name="subscribe"),
        Route("/confirm", pages.confirm, methods=["GET"], name="confirm"),
        Route("/unsubscribe", pages.unsubscribe, methods=["GET", "POST"], name="unsubscribe"),
        Route("/preferences", pages.preferences, methods=["GET", "POST"], name="preferences"),
    ]
