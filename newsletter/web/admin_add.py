"""An operator's add, shared by the admin API and the dashboard: typed fields, consent kept."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from newsletter.audience import consent, subscriptions
from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.web.admin_http import AdminDeps


def add_subscriber(deps: AdminDeps, data: dict[str, Any], actor: str,
                   hint: str) -> tuple[int, dict[str, Any]]:
    """An admin add from the API or dashboard: (HTTP status, answer), HttpError for bad
    fields, consent.ConsentRefused for an opted-out address without an explicit resubscribe."""
    from newsletter.web.admin_http import HttpError, subscriber_json

    email, name = data.get("email"), data.get("name", "")
    confirmed, resubscribe = data.get("confirmed", False), data.get("resubscribe", False)
    reason = data.get("reason", "")
    if not isinstance(name, str) or not isinstance(reason, str):
        raise HttpError(400, '"name" and "reason" must be strings')
    if not isinstance(confirmed, bool) or not isinstance(resubscribe, bool):
        raise HttpError(400, '"confirmed" and "resubscribe" must be true or false')
    now = datetime.now(UTC)
    try:
        outcome = consent.admin_add(deps.store, email, name, actor=actor, now=now, hint=hint,
                                    confirmed=confirmed, resubscribe=resubscribe,
                                    reason=reason, smtputf8=deps.smtputf8)
    except subscriptions.AddressError as exc:
        raise HttpError(400, f"{email!r}: {exc.reason}") from None
    except consent.ConsentRefused:
        raise
    except NewsletterError as exc:  # a resubscribe without a reason
        raise HttpError(400, str(exc)) from None
    sub, mailed = outcome.subscriber, False
    if outcome.send_confirmation:
        mailed = consent.mail_confirmation(deps.store, sub, deps.send_confirmation, now) is None
    return (201 if outcome.state == "new" else 200,
            {"state": outcome.state, "confirmation_sent": mailed,
             "subscriber": subscriber_json(deps.store.get_subscriber(sub.id) or sub)})
