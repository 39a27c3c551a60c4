"""Subscribe, confirm, unsubscribe (RFC 8058 one-click) and preferences pages over HTTP."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from newsletter import log, templating
from newsletter.audience import subscriptions, tokens
from newsletter.audience.subscriptions import AddressError
from newsletter.audience.tokens import TokenError
from newsletter.web.forms import Fields, Refused, first, parse_fields
from newsletter.web.limits import SlidingWindow, rate_key
from newsletter.web.requests import BodyTooLarge, ClientAddress, read_capped

if TYPE_CHECKING:
    from newsletter.config import Settings
    from newsletter.models import Subscriber
    from newsletter.store.database import Store as SubscriberStore

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
    # (subscriber, status before) after the person's own confirm press; None: no welcome.
    send_welcome: Callable[[Subscriber, str | None], None] | None = None
    confirm_max_age: timedelta = timedelta(hours=72)
    token_max_age: timedelta = timedelta(days=400)  # unsubscribe and preferences links
    resend_window: timedelta = timedelta(minutes=60)
    rate_per_ip: int = 20
    rate_window: timedelta = timedelta(hours=1)
    smtputf8: bool = False
    max_body_bytes: int = 16 * 1024
    templates_dir: Path | None = None
    # [server] forwarded_allow_ips: whose X-Forwarded-For names the visitor.
    client_ip: ClientAddress = field(default_factory=ClientAddress.from_setting)
    now: Callable[[], datetime] = field(default=_utcnow)

    @classmethod
    def from_settings(cls, settings: Settings, *, store: SubscriberStore, secret: bytes,
                      send_confirmation: Callable[[str, str, str], None],
                      send_preferences_link: Callable[[str, str, str], None] | None = None,
                      send_welcome: Callable[[Subscriber, str | None], None] | None = None,
                      ) -> SubscribeDeps:
        sub = settings.subscriptions
        folder = settings.newsletter.templates_dir
        return cls(store=store, secret=secret, publication_name=settings.publication.name,
                   base_url=settings.site_url, send_confirmation=send_confirmation,
                   send_preferences_link=send_preferences_link, send_welcome=send_welcome,
                   confirm_max_age=timedelta(hours=sub.confirm_hours),
                   token_max_age=timedelta(days=sub.unsubscribe_days),
                   resend_window=timedelta(minutes=sub.confirm_resend_minutes),
                   rate_per_ip=sub.rate_per_ip, smtputf8=settings.mail.smtputf8,
                   templates_dir=Path(folder) if folder else None,
                   client_ip=ClientAddress.from_setting(settings.server.forwarded_allow_ips))


class _Pages:
    def __init__(self, deps: SubscribeDeps) -> None:
        self.deps = deps
        self.home_url = deps.base_url.rstrip("/") + "/"
        self.limiter = SlidingWindow(deps.rate_per_ip, deps.rate_window.total_seconds())
        # Autoescape: names, addresses and section titles are visitor- or feed-supplied.
        self.env = templating.environment(deps.templates_dir, autoescape=True)

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
        again: dict[str, Any] = {}
        if what == "preferences":
            again = {"link_url": self.home_url + "manage", "link_text": "Email me a new link"}
        return self.message("This link does not work",
                            f"This {what} link is not valid, or it has expired. {_AGAIN}", 400,
                            **again)

    async def read_fields(self, request: Request, wants_json: bool = False, *,
                          lenient: bool = False) -> Fields | Response:
        """The request's fields, or the error response to send instead.

        `lenient`: an unreadable (but not oversized) body counts as no fields.
        """
        try:
            body = await read_capped(request, self.deps.max_body_bytes)
            return await parse_fields(request, body)
        except BodyTooLarge:
            return self.message("Sorry", "The request is too large.", 413, wants_json=wants_json)
        except Refused as exc:
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
        ip = self.deps.client_ip(request)
        retry = self.limiter.hit(rate_key(ip))
        if retry:
            log.event("subscribe_rate_limited", ip=ip)
            return self.message("Too many requests", "Too many requests from your address; "
                                "please try again later.", 429, wants_json=wants_json,
                                extra_headers={"retry-after": str(int(retry + 0.999))})
        fields = await self.read_fields(request, wants_json)
        if isinstance(fields, Response):
            return fields
        done = self.message("Check your inbox", CHECK_INBOX, 202, wants_json=wants_json)
        if first(fields, HONEYPOT):
            log.event("subscribe_honeypot", ip=ip)
            return done  # look like success, so the bot learns nothing
        email, name = first(fields, "email"), first(fields, "name")
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
        """GET and HEAD show the address and a button; only the button's POST confirms.

        Mail scanners (Microsoft Safe Links and the like) fetch every link in a message, and
        some run the page's scripts and send what they POST, so the page never submits
        itself: the person presses the button. The signed token in the form is the proof
        (a forged cross-site POST has none), so no CSRF cookie is needed.
        """
        if request.method != "POST":
            return await self._confirm_page(request)
        deps = self.deps
        fields = await self.read_fields(request)
        if isinstance(fields, Response):
            return fields
        token = first(fields, "token") or request.query_params.get("token", "")
        try:
            outcome = await run_in_threadpool(
                subscriptions.confirm, deps.store, deps.secret, token, now=deps.now(),
                max_age=deps.confirm_max_age)
        except TokenError as exc:
            return self.bad_link("confirmation", exc, request)
        if outcome.changed:
            log.event("subscriber_confirmed", subscriber=outcome.subscriber.id)
            done = self.message("You are subscribed",
                                f"Thank you: your subscription to {deps.publication_name} "
                                f"is confirmed.")
            # Only the POST that moved the row to active gets here (a replay, or a second
            # press racing it, finds it active): one welcome per confirmation, after the page.
            if deps.send_welcome is not None:
                done.background = BackgroundTask(self._welcome, outcome.subscriber,
                                                 outcome.previous_status)
            return done
        return self._already_subscribed()

    def _welcome(self, sub: Subscriber, previous_status: str | None) -> None:
        assert self.deps.send_welcome is not None
        try:
            self.deps.send_welcome(sub, previous_status)
        except Exception as exc:  # the person is subscribed all the same: log it, once
            log.event("welcome_send_failed", level=logging.ERROR, subscriber=sub.id,
                      error=f"{type(exc).__name__}: {exc}")

    async def _confirm_page(self, request: Request) -> Response:
        deps = self.deps
        token = request.query_params.get("token", "")
        try:  # reads only: a scanner's GET neither confirms nor uses the link up
            sub = await run_in_threadpool(
                subscriptions.resolve_token, deps.store, deps.secret, token, "confirm",
                now=deps.now(), max_age=deps.confirm_max_age)
            if sub.status == "complained":  # as subscriptions.confirm would refuse it
                raise TokenError("expired")
        except TokenError as exc:
            return self.bad_link("confirmation", exc, request)
        if sub.status == "active":  # the person's second visit, after pressing the button
            return self._already_subscribed()
        return self.html("confirm.html", token=token, email=sub.email)

    def _already_subscribed(self) -> Response:
        return self.message("You are already subscribed",
                            f"This address already receives {self.deps.publication_name}: "
                            f"there is nothing more to do.")

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
        token = token or first(fields, "token")
        try:
            outcome = await run_in_threadpool(subscriptions.unsubscribe, deps.store,
                                              deps.secret, token, now=deps.now(),
                                              max_age=deps.token_max_age)
        except TokenError as exc:
            return self.bad_link("unsubscribe", exc, request)
        if outcome.changed:
            log.event("subscriber_unsubscribed", subscriber=outcome.subscriber.id,
                      one_click=first(fields, "List-Unsubscribe") == "One-Click")
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
            subject = tokens.verify(self.deps.secret, first(fields, "csrf"), "preferences-form",
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
        Route("/confirm", pages.confirm, methods=["GET", "POST"], name="confirm"),
        Route("/unsubscribe", pages.unsubscribe, methods=["GET", "POST"], name="unsubscribe"),
        Route("/preferences", pages.preferences, methods=["GET", "POST"], name="preferences"),
    ]
