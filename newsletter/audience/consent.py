"""Admin adds that never override an opt-out silently: the rule the CLI, API and dashboard share."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from newsletter import log
from newsletter.audience.subscriptions import (
    SubscribeOutcome,
    Subscribers,
    clean_name,
    subscribe,
)
from newsletter.errors import NewsletterError
from newsletter.models import SUPPRESSED, Subscriber

MAX_REASON_CHARS = 500
_WHY = {
    "unsubscribed": "unsubscribed",
    "bounced": "marked bounced (its mail server refused it)",
    "complained": "marked complained (the person reported an issue as spam)",
}
# How each door spells the override; the refusal tells the operator exactly what to send.
HINT_CLI = "If the person has asked to subscribe again, add --resubscribe --reason '…'"
HINT_API = 'If the person has asked to subscribe again, send "resubscribe": true with a "reason"'
HINT_DASHBOARD = ("If the person has asked to subscribe again, tick \"resubscribe\" and say "
                  "why in the reason field")
REASON_REQUIRED = "a resubscribe needs a reason: who asked, when and how"


class ConsentRefused(NewsletterError):
    """An admin add that would silently override someone's opt-out: nothing was changed."""

    def __init__(self, subscriber: Subscriber, hint: str) -> None:
        why = _WHY.get(subscriber.status, subscriber.status)
        if subscriber.status == "unsubscribed" and subscriber.unsubscribed_at:
            why += f" since {subscriber.unsubscribed_at:%Y-%m-%d}"
        # The form mails no confirmation to a complained address, so it is no way back.
        form = "" if subscriber.status == "complained" else (
            ", or let them sign up again through the subscribe form")
        super().__init__(f"{subscriber.email}: not added: it is {why}, and nothing was "
                         f"changed. {hint}{form}.")
        self.subscriber = subscriber
        self.hint = hint


def clean_reason(raw: object) -> str:
    return clean_name(raw, MAX_REASON_CHARS)


def admin_add(store: Subscribers, email: Any, name: str = "", *, actor: str,
              now: datetime, hint: str, confirmed: bool = False, resubscribe: bool = False,
              reason: str = "", smtputf8: bool = False,
              resend_window: timedelta = timedelta(hours=1)) -> SubscribeOutcome:
    """subscribe() for an operator (`email` as it came; subscribe() checks it).

    ConsentRefused for an opted-out address unless `resubscribe` with a reason;
    NewsletterError for a resubscribe without one; AddressError for an unusable address.
    """
    reason = clean_reason(reason)
    if resubscribe and not reason:
        raise NewsletterError(f"{email}: {REASON_REQUIRED}")
    outcome = subscribe(store, email, name, method="admin", ip=None, user_agent=None, now=now,
                        confirmed=confirmed, resubscribe=resubscribe, reason=reason,
                        actor=actor, smtputf8=smtputf8, resend_window=resend_window)
    if outcome.state == "suppressed" and outcome.subscriber.status in SUPPRESSED:
        raise ConsentRefused(outcome.subscriber, hint)  # each door reports it its own way
    if outcome.state == "reactivated":
        log.event("subscriber_resubscribed", subscriber=outcome.subscriber.id, actor=actor)
    return outcome


def mail_confirmation(store: Subscribers, sub: Subscriber,
                      send: Callable[[Subscriber], None] | None, now: datetime) -> str | None:
    """Send the double opt-in mail; None when it went out, else why not.

    When none went out, the resend window is released: the person's own request through
    the form can send one at once rather than after the window.
    """
    why = "no mail transport is wired here"
    if send is not None:
        try:
            send(sub)
            return None
        except Exception as exc:  # any transport failure: the subscriber stays pending
            why = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, always
            log.event("confirmation_send_failed", subscriber=sub.id, error=why)
    store.update_subscriber(sub.id, now, confirmation_sent_at=None)
    return why
