"""Manage my subscription: a form that mails a subscriber a signed link to their preferences."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from newsletter import log
from newsletter.audience import subscriptions
from newsletter.audience.subscriptions import AddressError
from newsletter.web.forms import first
from newsletter.web.limits import SlidingWindow, rate_key
from newsletter.web.subscribe import HONEYPOT

if TYPE_CHECKING:
    from newsletter.web.subscribe import _Pages

LINK_ON_ITS_WAY = ("Thank you. If this address is subscribed, an email with a link to its "
                   "preferences is on its way: open it to choose your sections or to "
                   "unsubscribe.")


class _Manage:
    def __init__(self, pages: _Pages) -> None:
        self.pages = pages
        # One mail per address per resend window, like confirmations: the form cannot be
        # used to flood someone's inbox. Counted for every address, known or not.
        self.per_address = SlidingWindow(1, pages.deps.resend_window.total_seconds())

    def _client_refused(self, request: Request, wants_json: bool) -> Response | None:
        """The subscribe form's per-client limit (one budget for both forms), or None."""
        ip = self.pages.deps.client_ip(request)
        retry = self.pages.limiter.hit(rate_key(ip))
        if not retry:
            return None
        log.event("manage_rate_limited", ip=ip)
        return self.pages.message("Too many requests", "Too many requests from your address; "
                                  "please try again later.", 429, wants_json=wants_json,
                                  extra_headers={"retry-after": str(int(retry + 0.999))})

    async def manage(self, request: Request) -> Response:
        pages, deps = self.pages, self.pages.deps
        if request.method != "POST":
            return pages.html("manage.html", honeypot=HONEYPOT)
        wants_json = request.headers.get("content-type", "").startswith("application/json") \
            or "application/json" in request.headers.get("accept", "")
        refused = self._client_refused(request, wants_json)
        if refused is not None:
            return refused
        fields = await pages.read_fields(request, wants_json)
        if isinstance(fields, Response):
            return fields
        done = pages.message("Check your inbox", LINK_ON_ITS_WAY, 202, wants_json=wants_json)
        if first(fields, HONEYPOT):
            log.event("manage_honeypot", ip=deps.client_ip(request))
            return done  # look like success, as the subscribe form does
        email = first(fields, "email")
        try:
            _address, key = subscriptions.normalise_address(email, smtputf8=deps.smtputf8)
        except AddressError as exc:
            if wants_json:
                return pages.message("", exc.reason, 400, wants_json=True)
            return pages.html("manage.html", 400, honeypot=HONEYPOT, error=exc.reason,
                              email=email)
        if self.per_address.hit(key):
            log.event("manage_address_limited")
            return done
        sub = await run_in_threadpool(deps.store.get_subscriber_by_key, key)
        if sub is None or sub.status != "active":
            log.event("manage_request", subscriber=sub.id if sub else None, mail=False)
            return done
        log.event("manage_request", subscriber=sub.id, mail=True)
        url = subscriptions.preferences_url(deps.base_url, subscriptions.preferences_token(
            deps.secret, sub.id, sub.email, deps.now()))
        # After the response, as for confirmations: its timing must not tell who is subscribed.
        done.background = BackgroundTask(self._send, sub.id, sub.email, sub.name, url)
        return done

    def _send(self, subscriber_id: int, email: str, name: str, url: str) -> None:
        send = self.pages.deps.send_preferences_link
        if send is None:
            log.event("manage_mail_unavailable", level=logging.ERROR, subscriber=subscriber_id)
            return
        try:
            send(email, name, url)
        except Exception as exc:  # a background task has nobody to raise to: log it
            log.event("manage_send_failed", level=logging.ERROR, subscriber=subscriber_id,
                      error=f"{type(exc).__name__}: {exc}")


def manage_routes(pages: _Pages) -> list[Route]:
    """GET /manage shows the form; POST /manage mails the link (the same answer for anyone)."""
    return [Route("/manage", _Manage(pages).manage, methods=["GET", "POST"], name="manage")]
