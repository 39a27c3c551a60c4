"""Mail about a subscription (confirm, manage link), sent at once through the set transport."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from newsletter.config import Settings
from newsletter.deliver.mail import ListFields, identity_from_settings, notice_message
from newsletter.errors import NewsletterError
from newsletter.models import Subscriber, now_utc
from newsletter.pipeline.sending import send_one


def confirmation_sender(settings: Settings) -> Callable[[str, str, str], None]:
    """The double opt-in mail, sent through the configured transport (SMTP or outbox).

    It carries List-Id but no List-Unsubscribe: it is about exactly one list (RFC 2369 asks
    for the list fields on a list's replies to one person, and the id lets the person's mail
    filters tell which list asks), while the person is not on it, so there is nothing to
    unsubscribe from; its text says to ignore it if they did not ask.
    """
    from newsletter.audience.emails import confirmation_email

    folder = settings.newsletter.templates_dir

    def compose(name: str, confirm_url: str) -> tuple[str, str]:
        return confirmation_email(
            publication=settings.publication.name, name=name, confirm_url=confirm_url,
            valid_hours=settings.subscriptions.confirm_hours,
            templates_dir=Path(folder) if folder else None)

    return _notice_sender(settings, compose, "confirm", "confirmation mail", "id")


def preferences_link_sender(settings: Settings) -> Callable[[str, str, str], None]:
    """The mail /manage sends a subscriber: (address, name, preferences URL), same transport.
    It goes to someone on the list, so it carries every list field, one-click unsubscribe too."""
    from newsletter.audience.emails import preferences_link_email
    from newsletter.audience.tokens import load_or_create_secret

    folder = settings.newsletter.templates_dir
    secret = load_or_create_secret(settings)

    def compose(name: str, url: str) -> tuple[str, str]:
        return preferences_link_email(publication=settings.publication.name, name=name,
                                      preferences_url=url,
                                      templates_dir=Path(folder) if folder else None)

    def unsubscribe(address: str, url: str, now: datetime) -> str:
        """The one-click unsubscribe link of the subscriber the preferences link is for."""
        from newsletter.audience import subscriptions, tokens

        # The caller knows the subscriber only through the link it signed (its token names
        # them, bound to this address): checked, never trusted as text.
        token = parse_qs(urlsplit(url).query).get("token", [""])[0]
        try:
            subject = tokens.verify(secret, token, "preferences",
                                    timedelta(days=settings.subscriptions.unsubscribe_days),
                                    now, extra=address)
        except tokens.TokenError as exc:
            raise NewsletterError(f"preferences link for {address} does not verify "
                                  f"({exc.reason}); not sent") from None
        return subscriptions.unsubscribe_url(settings.site_url, subscriptions.unsubscribe_token(
            secret, int(subject), address, now))

    return _notice_sender(settings, compose, "manage", "preferences link mail", "unsubscribe",
                          unsubscribe)


def _notice_sender(settings: Settings, compose: Callable[[str, str], tuple[str, str]],
                   kind: str, what: str, list_fields: ListFields,
                   unsubscribe: Callable[[str, str, datetime], str] | None = None,
                   ) -> Callable[[str, str, str], None]:
    """(address, name, url) → one message built by deliver/mail.py like every issue (DKIM,
    Message-ID, Date, the list fields named), sent from [mail] from_address: a bounce of
    one-off mail has no delivery to record, so it needs no VERP return path."""

    def send(address: str, name: str, url: str) -> None:
        # Per message: a replaced DKIM key is used at once, and an unusable one fails this
        # mail (the caller reports it) rather than the whole site at start.
        identity = identity_from_settings(settings)
        subject, text = compose(name, url)
        now = now_utc()
        token = hashlib.sha256(f"{address}:{now.isoformat()}".encode()).hexdigest()[:16]
        message = notice_message(identity=identity, to_address=address, to_name=name,
                                 subject=subject, text=text, date=now,
                                 message_id=f"<{kind}.{token}@{identity.message_id_domain}>",
                                 list_fields=list_fields,
                                 unsubscribe_url=unsubscribe(address, url, now)
                                 if unsubscribe else "")
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
