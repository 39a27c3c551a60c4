"""Mail about a subscription (confirm, manage link), sent at once through the set transport."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from newsletter.config import Settings
from newsletter.deliver.mail import identity_from_settings
from newsletter.models import Subscriber, now_utc
from newsletter.pipeline.sending import send_one


def confirmation_sender(settings: Settings) -> Callable[[str, str, str], None]:
    """The double opt-in mail, sent through the configured transport (SMTP or outbox)."""
    from newsletter.audience.emails import confirmation_email

    folder = settings.newsletter.templates_dir

    def compose(name: str, confirm_url: str) -> tuple[str, str]:
        return confirmation_email(
            publication=settings.publication.name, name=name, confirm_url=confirm_url,
            valid_hours=settings.subscriptions.confirm_hours,
            templates_dir=Path(folder) if folder else None)

    return _notice_sender(settings, compose, "confirm", "confirmation mail")


def preferences_link_sender(settings: Settings) -> Callable[[str, str, str], None]:
    """The mail /manage sends a subscriber: (address, name, preferences URL), same transport."""
    from newsletter.audience.emails import preferences_link_email

    folder = settings.newsletter.templates_dir

    def compose(name: str, url: str) -> tuple[str, str]:
        return preferences_link_email(publication=settings.publication.name, name=name,
                                      preferences_url=url,
                                      templates_dir=Path(folder) if folder else None)

    return _notice_sender(settings, compose, "manage", "preferences link mail")


def _notice_sender(settings: Settings, compose: Callable[[str, str], tuple[str, str]],
                   kind: str, what: str) -> Callable[[str, str, str], None]:
    from newsletter.deliver.mail import notice_message

    identity = identity_from_settings(settings)

    def send(address: str, name: str, url: str) -> None:
        subject, text = compose(name, url)
        now = now_utc()
        token = hashlib.sha256(f"{address}:{now.isoformat()}".encode()).hexdigest()[:16]
        message = notice_message(identity=identity, to_address=address, to_name=name,
                                 subject=subject, text=text, date=now,
                                 message_id=f"<{kind}.{token}@{identity.message_id_domain}>")
        send_one(settings, address, message, what=what)

    return send


def subscriber_confirmation(settings: Settings, secret: bytes) -> Callable[[Subscriber], None]:
    """confirmation_sender for a stored subscriber: the link is signed here, now."""
    from newsletter.audience.subscriptions import confirm_token, confirm_url

    mail = confirmation_sender(settings)

    def send(sub: Subscriber) -> None:
        token = confirm_token(secret, sub, now_utc())
        mail(sub.email, sub.name, confirm_url(settings.site_url, token))

    return send
