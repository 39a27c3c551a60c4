"""The welcome a person gets once, on confirming: what comes, how often, and their own links."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from newsletter.config import Settings
from newsletter.models import Subscriber, now_utc
from newsletter.pipeline.rhythm import issue_rhythm, prepared_rhythm
from newsletter.pipeline.schedule import next_issue_at
from newsletter.store.database import Store
from newsletter.words import friendly_time, joined

WelcomeSender = Callable[[Subscriber, str | None], None]
"""(the subscriber just confirmed, their status before it) → the welcome sent, or raises."""

# What the web archive shows (web/archive.py PUBLIC_STATUSES): the latest of these is linked.
_PUBLIC = ("sending", "sent")
# The statuses of someone who was on the list before: they get "Welcome back".
_RETURNING = ("unsubscribed", "bounced")


def welcome_sender(settings: Settings, store: Store, secret: bytes) -> WelcomeSender | None:
    """The welcome, sent at once through the configured transport like the confirmation
    before it; None when [subscriptions] welcome = false.

    It goes to someone now on the list, so it is built like an issue by deliver/mail.py:
    List-Id, one-click List-Unsubscribe, Message-ID, Date and the DKIM signature. Its
    envelope sender is [mail] from_address, as for every one-off mail: there is no issue
    delivery for a VERP bounce to be recorded against.
    """
    if not settings.subscriptions.welcome:
        return None
    from newsletter.audience.emails import welcome_email
    from newsletter.audience.subscriptions import subscriber_links
    from newsletter.deliver.mail import identity_from_settings, notice_message
    from newsletter.pipeline.sending import send_one

    folder = settings.newsletter.templates_dir

    def send(sub: Subscriber, previous_status: str | None) -> None:
        now = now_utc()
        identity = identity_from_settings(settings)  # per message, as notices.py says why
        unsubscribe, preferences = subscriber_links(settings.site_url, secret, sub.id,
                                                    sub.email, now)
        subject, text = welcome_email(
            publication=settings.publication.name, name=sub.name,
            returning=previous_status in _RETURNING,
            values={**welcome_values(settings, store, sub, now),
                    "preferences_url": preferences, "unsubscribe_url": unsubscribe},
            templates_dir=Path(folder) if folder else None)
        token = hashlib.sha256(f"{sub.email}:{now.isoformat()}".encode()).hexdigest()[:16]
        message = notice_message(identity=identity, to_address=sub.email, to_name=sub.name,
                                 subject=subject, text=text, date=now,
                                 message_id=f"<welcome.{token}@{identity.message_id_domain}>",
                                 list_fields="unsubscribe", unsubscribe_url=unsubscribe)
        send_one(settings, sub.email, message, what="welcome mail")

    return send


def welcome_values(settings: Settings, store: Store, sub: Subscriber,
                   now: datetime) -> dict[str, object]:
    """What email/welcome.txt says besides the person's links: the publication, its rhythm
    and next issue, the sections they get, the latest issue in the archive."""
    latest = store.list_issues(limit=1, statuses=_PUBLIC)
    chosen = list(sub.sections)
    sections = chosen or store.sections()  # none chosen: every section, as preferences say
    review = settings.newsletter.review
    # The earliest time promised: in review mode only an approved issue's.
    when = next_issue_at(settings, store, now)
    rhythm = issue_rhythm(settings, now)
    return {"description": settings.publication.description,
            "rhythm": rhythm, "review": review,
            "prepared": prepared_rhythm(rhythm) if review else "",
            "next_issue": friendly_time(when, now) if when else "",
            "sections": sections, "sections_text": joined(sections, limit=len(sections)),
            "every_section": not chosen,
            "latest_issue_url": f"{settings.site_url}issues/{latest[0].number}"
            if latest else "",
            "latest_issue_subject": latest[0].subject if latest else "",
            "home_url": settings.site_url,
            "postal_address": settings.publication.postal_address}
