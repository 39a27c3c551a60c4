"""Provider webhooks: POST /webhooks/ses, mailgun, postmark, sendgrid; verified, then ingested."""

# What comes in is checked by audience/webhooks.py and audience/sns.py; what is accepted goes
# to `ingest` (the store side) in the thread pool. A provider that is not configured answers
# 404. A refusal answers the code WebhookRefused carries with {"error": reason} and one log
# line naming the provider, the reason and the client address, never a secret or the body.

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from newsletter import log
from newsletter.audience.sns import (
    NOTIFICATION,
    SUBSCRIBE,
    CertCache,
    SnsMessage,
    ses_events,
    sns_message,
    valid_sns_url,
)
from newsletter.audience.webhooks import (
    ProviderEvent,
    WebhookRefused,
    mailgun_delivery,
    postmark_events,
    sendgrid_events,
)
from newsletter.web.requests import BodyTooLarge, ClientAddress, read_capped

NO_STORE = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"
_MAX_TOKENS = 10_000


@dataclass(frozen=True)
class WebhookDeps:
    """What the webhook routes need, as plain values and callables (pipeline.webapp wires them)."""

    # (source "ses"/"mailgun"/"postmark"/"sendgrid", events) -> counts; blocking.
    ingest: Callable[[str, list[ProviderEvent]], dict[str, int]]
    confirm_sns_subscription: Callable[[str], None]  # GETs a checked SubscribeURL; blocking
    fetch_cert: Callable[[str], bytes]  # the PEM at a checked SigningCertURL; blocking
    ses_topic_arns: tuple[str, ...] = ()
    mailgun_signing_key: str = field(default="", repr=False)
    postmark_username: str = ""
    postmark_password: str = field(default="", repr=False)
    sendgrid_public_key: str = ""
    max_age_seconds: int = 600
    max_body_bytes: int = 1_000_000
    # [server] forwarded_allow_ips: whose X-Forwarded-For names the client in log lines.
    client_ip: ClientAddress = field(default_factory=ClientAddress.from_setting)
    now: Callable[[], float] = time.time  # Unix time, for the replay windows


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(data).encode("utf-8"), status, headers=NO_STORE,
                    media_type="application/json")


class _RecentTokens:
    """Mailgun tokens of requests already ingested, kept for the replay window.

    Mailgun signs only timestamp + token, not the event: a captured request could carry
    another event under the same signature while the timestamp is fresh. A token that comes
    back is answered 200 with nothing ingested (the first request was).
    """

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def __contains__(self, token: object) -> bool:
        return token in self.seen

    def add(self, token: str, now: float, window: float) -> None:
        for old in [t for t, at in self.seen.items() if at < now - window]:
            del self.seen[old]
        while len(self.seen) >= _MAX_TOKENS:
            self.seen.pop(next(iter(self.seen)))
        self.seen[token] = now


class _Webhooks:
    def __init__(self, deps: WebhookDeps) -> None:
        self.deps = deps
        self.certs = CertCache()
        self.tokens = _RecentTokens()

    def endpoint(self, provider: str, configured: bool,
                 handle: Callable[[Request, bytes], Awaitable[Response]]) -> Callable[
                     [Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            if not configured:
                return _json({"error": f"the {provider} webhook is not configured"}, 404)
            try:
                body = await read_capped(request, self.deps.max_body_bytes)
                return await handle(request, body)
            except BodyTooLarge as exc:
                self.refused(provider, request, str(exc))
                return _json({"error": str(exc)}, 413)
            except WebhookRefused as exc:
                self.refused(provider, request, exc.reason)
                return _json({"error": exc.reason}, exc.code)

        return run

    def refused(self, provider: str, request: Request, reason: str) -> None:
        log.event("webhook.refused", level=logging.WARNING, provider=provider, reason=reason,
                  ip=self.deps.client_ip(request))

    async def ingest(self, source: str, events: list[ProviderEvent]) -> Response:
        counts: dict[str, int] = {}
        if events:  # "delivered", "opened" and the like: nothing to record
            try:
                counts = await run_in_threadpool(self.deps.ingest, source, events)
            except Exception as exc:  # the provider retries a 503; say why in the log
                log.event("webhook.ingest_failed", level=logging.ERROR, provider=source,
                          error=type(exc).__name__)
                return _json({"error": "the events could not be recorded now"}, 503)
        return _json({"events": len(events), **counts})

    # -- one handler per provider -------------------------------------------------------

    async def mailgun(self, request: Request, body: bytes) -> Response:
        deps = self.deps
        delivery = mailgun_delivery(body, deps.mailgun_signing_key, deps.now(),
                                    deps.max_age_seconds)
        if delivery.token in self.tokens:
            log.event("webhook.replayed", level=logging.WARNING, provider="mailgun",
                      ip=deps.client_ip(request))
            return _json({"events": 0, "replayed": 1})
        response = await self.ingest("mailgun", list(delivery.events))
        if response.status_code == 200:
            self.tokens.add(delivery.token, deps.now(), deps.max_age_seconds)
        return response

    async def postmark(self, request: Request, body: bytes) -> Response:
        deps = self.deps
        events = postmark_events(body, request.headers.get("authorization", ""),
                                 deps.postmark_username, deps.postmark_password)
        return await self.ingest("postmark", events)

    async def sendgrid(self, request: Request, body: bytes) -> Response:
        deps = self.deps
        events = sendgrid_events(body, request.headers.get(SENDGRID_SIGNATURE, ""),
                                 request.headers.get(SENDGRID_TIMESTAMP, ""),
                                 deps.sendgrid_public_key, deps.now(), deps.max_age_seconds)
        return await self.ingest("sendgrid", events)

    async def ses(self, request: Request, body: bytes) -> Response:
        deps = self.deps
        # In the thread pool: the signing certificate may have to be fetched.
        msg: SnsMessage = await run_in_threadpool(
            sns_message, body, deps.fetch_cert, deps.ses_topic_arns, deps.now(),
            cache=self.certs)
        if msg.type == NOTIFICATION:
            return await self.ingest("ses", ses_events(msg))
        if msg.type == SUBSCRIBE:
            return await self.subscribe(request, msg)
        log.event("webhook.sns_unsubscribed", level=logging.WARNING, topic=msg.topic_arn,
                  ip=deps.client_ip(request))
        return _json({"unsubscribed": msg.topic_arn})

    async def subscribe(self, request: Request, msg: SnsMessage) -> Response:
        if not valid_sns_url(msg.subscribe_url):
            raise WebhookRefused(403, "the SubscribeURL is not an SNS URL")
        try:
            await run_in_threadpool(self.deps.confirm_sns_subscription, msg.subscribe_url)
        except Exception as exc:  # SNS sends the confirmation again if this is not a 2xx
            log.event("webhook.sns_confirm_failed", level=logging.ERROR, topic=msg.topic_arn,
                      error=type(exc).__name__)
            return _json({"error": "the subscription could not be confirmed now"}, 503)
        log.event("webhook.sns_subscribed", topic=msg.topic_arn, ip=self.deps.client_ip(request))
        return _json({"confirmed": msg.topic_arn})


def webhook_routes(deps: WebhookDeps) -> list[BaseRoute]:
    """POST /webhooks/{ses,mailgun,postmark,sendgrid}; other methods get 405 and change nothing."""
    hooks = _Webhooks(deps)
    table = [
        ("ses", bool(deps.ses_topic_arns), hooks.ses),
        ("mailgun", bool(deps.mailgun_signing_key), hooks.mailgun),
        ("postmark", bool(deps.postmark_username and deps.postmark_password), hooks.postmark),
        ("sendgrid", bool(deps.sendgrid_public_key), hooks.sendgrid),
    ]
    return [Route(f"/webhooks/{name}", hooks.endpoint(name, configured, handle),
                  methods=["POST"], name=f"webhook_{name}")
            for name, configured, handle in table]
