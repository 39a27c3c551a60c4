"""Subscribing, confirming, unsubscribing and preferences: the rules, without HTTP."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import quote

from email_validator import EmailNotValidError, validate_email

from newsletter.audience import tokens
from newsletter.audience.tokens import TokenError
from newsletter.models import SUPPRESSED, Consent, Subscriber

MAX_ADDRESS_CHARS = 254  # RFC 5321's limit on a forward path, less the angle brackets
MAX_NAME_CHARS = 100
METHODS = ("form", "import", "admin")
SMTPUTF8_REFUSED = ("this server's mail relay does not accept internationalised addresses "
                    "(SMTPUTF8)")
# RFC 5322 dot-atom in ASCII: always a valid local part, needing no normalisation.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")
# Bidirectional overrides and isolates render text backwards ("gro.elpmaxe@…") in names.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc, exactly
# Hardening: JSON can carry a lone surrogate ("\ud800"), which no database can store: a name
# holding one made /subscribe and the admin API answer 500.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Subscribers(Protocol):
    """The subscriber queries these rules need (store.subscribers.SubscriberQueries has them)."""

    def get_subscriber(self, subscriber_id: int) -> Subscriber | None: ...
    def get_subscriber_by_key(self, email_key: str) -> Subscriber | None: ...
    def add_subscriber(self, *, email: str, email_key: str, name: str, status: str,
                       now: datetime, consent_method: str, consent_ip: str | None = ...,
                       consent_user_agent: str | None = ..., sections: Sequence[str] = ...,
                       confirmed: bool = ..., consent: Consent | None = ...
                       ) -> Subscriber | None: ...
    def update_subscriber(self, subscriber_id: int, now: datetime, *, expect: Sequence[str] = ...,
                          consent: Consent | None = ..., **values: Any) -> bool: ...
    def activate_subscriber(self, subscriber_id: int, now: datetime, *,
                            expect: Sequence[str] = ..., consent: Consent | None = ...) -> bool: ...
    def claim_confirmation(self, subscriber_id: int, now: datetime, window: timedelta, *,
                           expect: Sequence[str] = ...) -> bool: ...
    def record_consent(self, subscriber_id: int, now: datetime, consent: Consent) -> None: ...
    def unsubscribe_subscriber(self, subscriber_id: int, now: datetime) -> bool: ...
    def set_subscriber_sections(self, subscriber_id: int, sections: Sequence[str],
                                now: datetime) -> bool: ...


class AddressError(ValueError):
    """An address refused, with a reason fit to show the person who typed it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalise_address(raw: Any, *, smtputf8: bool) -> tuple[str, str]:
    """(address to send to, key that identifies the person) or AddressError.

    The key folds case in the local part too: in practice mailboxes ignore it, and two rows
    for Alice@ and alice@ would mean two copies of every issue. IDN domains are keyed by
    their ASCII (punycode) form, so the key does not depend on the smtputf8 setting.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise AddressError("an email address is required")
    if "\r" in raw or "\n" in raw:
        raise AddressError("an email address cannot contain line breaks")
    text = raw.strip()
    if len(text) > MAX_ADDRESS_CHARS:
        raise AddressError(f"an email address cannot be longer than {MAX_ADDRESS_CHARS} "
                           f"characters")
    local, _at, domain_text = text.rpartition("@")
    if _SIMPLE_LOCAL.match(local) and len(local) <= 64:
        # Fast path for an import's million plain addresses: such a local part is valid as
        # it is, and the domain (the costly IDNA check) is validated once per distinct domain.
        domain = _domain(domain_text)
        if isinstance(domain, str):
            raise AddressError(domain)
        local_part, unicode_domain, ascii_domain, needs_utf8 = local, *domain, False
    else:
        try:
            result = validate_email(text, check_deliverability=False, allow_smtputf8=True,
                                    allow_display_name=False)
        except EmailNotValidError as exc:
            raise AddressError(str(exc)) from None
        local_part, unicode_domain = result.local_part, result.domain
        ascii_domain, needs_utf8 = result.ascii_domain, result.smtputf8
    if needs_utf8 and not smtputf8:
        raise AddressError(SMTPUTF8_REFUSED)
    # Without SMTPUTF8 an internationalised domain must travel as punycode.
    email = f"{local_part}@{unicode_domain if smtputf8 else ascii_domain}"
    if len(email) > MAX_ADDRESS_CHARS:
        raise AddressError(f"an email address cannot be longer than {MAX_ADDRESS_CHARS} "
                           f"characters")
    key = f"{local_part.casefold()}@{ascii_domain.lower()}"
    return email, key


@lru_cache(maxsize=4096)
def _domain(domain: str) -> tuple[str, str] | str:
    """(domain as displayed, ASCII domain), or the reason email-validator refuses it."""
    try:
        result = validate_email(f"postmaster@{domain}", check_deliverability=False,
                                allow_smtputf8=True)
    except EmailNotValidError as exc:
        return str(exc)
    return result.domain, result.ascii_domain


def clean_name(raw: Any, limit: int = MAX_NAME_CHARS) -> str:
    """One line of plain text: no control characters, single spaces, at most `limit` chars.

    HTML stays as typed ("<b>" is a name like any other); templates escape it on output.
    """
    if not isinstance(raw, str):
        return ""
    text = _SURROGATE.sub("\ufffd", raw)
    text = _CONTROL.sub(" ", _BIDI.sub("", unicodedata.normalize("NFC", text)))
    return " ".join(text.split())[:limit].rstrip()


def clean_sections(raw: Sequence[Any], available: Sequence[str] | None = None) -> tuple[str, ...]:
    """Distinct section names in order; with `available`, only those (others are dropped)."""
    out: list[str] = []
    for item in raw:
        name = clean_name(item, 200)  # the articles.section column is 200 long
        if name and name not in out and (available is None or name in available):
            out.append(name)
    return tuple(out[:100])


# -- tokens and links ---------------------------------------------------------------------


def _confirm_binding(sub: Subscriber) -> str:
    # The unsubscribe time is signed in: a confirmation link mailed before someone
    # unsubscribed cannot bring them back afterwards; only a newly requested one can.
    when = sub.unsubscribed_at.isoformat() if sub.unsubscribed_at else ""
    return f"{sub.email}\x00{when}"


def confirm_token(secret: bytes, subscriber: Subscriber, now: datetime) -> str:
    return tokens.sign(secret, "confirm", str(subscriber.id), now,
                       extra=_confirm_binding(subscriber))


def unsubscribe_token(secret: bytes, subscriber_id: int, email: str, now: datetime) -> str:
    """Bound to the stored address: the link dies if the subscriber's address changes."""
    return tokens.sign(secret, "unsubscribe", str(subscriber_id), now, extra=email)


def preferences_token(secret: bytes, subscriber_id: int, email: str, now: datetime) -> str:
    return tokens.sign(secret, "preferences", str(subscriber_id), now, extra=email)


def _url_prefix(base_url: str, path: str) -> str:
    return f"{base_url.rstrip('/')}/{path}?token="


def _url(base_url: str, path: str, token: str) -> str:
    return _url_prefix(base_url, path) + quote(token, safe="")


def confirm_url(base_url: str, token: str) -> str:
    return _url(base_url, "confirm", token)


def unsubscribe_url(base_url: str, token: str) -> str:
    return _url(base_url, "unsubscribe", token)


def preferences_url(base_url: str, token: str) -> str:
    return _url(base_url, "preferences", token)


def subscriber_links(base_url: str, secret: bytes, subscriber_id: int, email: str,
                     now: datetime) -> tuple[str, str]:
    """(unsubscribe URL, preferences URL) for one recipient of an issue."""
    return issue_links(base_url, secret, now)(subscriber_id, email)


def issue_links(base_url: str, secret: bytes,
                now: datetime) -> Callable[[int, str], tuple[str, str]]:
    """subscriber_links for every recipient of one send, (subscriber id, email) → URLs, with
    the signers and URL prefixes prepared once rather than per message."""
    unsubscribe = tokens.signer(secret, "unsubscribe", now)
    preferences = tokens.signer(secret, "preferences", now)
    # Tokens signed here are base64url, all unreserved characters (RFC 3986): _url's quoting
    # would leave them as they are, so it is skipped per message.
    unsubscribe_at = _url_prefix(base_url, "unsubscribe")
    preferences_at = _url_prefix(base_url, "preferences")

    def links(subscriber_id: int, email: str) -> tuple[str, str]:
        subject = str(subscriber_id)
        return (unsubscribe_at + unsubscribe(subject, email),
                preferences_at + preferences(subject, email))

    return links


def resolve_token(store: Subscribers, secret: bytes, token: str, purpose: str, *,
                  now: datetime, max_age: timedelta) -> Subscriber:
    """The subscriber a valid token belongs to, or TokenError."""
    found: dict[str, Subscriber] = {}

    def binding(claimed_purpose: str, subject: str) -> str | None:
        if not subject.isdigit() or len(subject) > 18:
            return None
        sub = store.get_subscriber(int(subject))
        if sub is None:
            return None
        found["sub"] = sub
        # By the purpose the token claims, so that a genuine token used on the wrong page is
        # reported as such rather than as a forgery.
        return _confirm_binding(sub) if claimed_purpose == "confirm" else sub.email

    tokens.verify(secret, token, purpose, max_age, now, extra=binding)
    return found["sub"]


# -- the rules ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeOutcome:
    """What happened; only the caller's logs and the admin CLI may tell it apart.

    state: "new", "pending", "active", "activated" (pending → active), "reactivated"
    (suppressed → active by an admin's explicit resubscribe), "suppressed" (left
    unsubscribed/bounced/complained).
    """

    subscriber: Subscriber
    state: str
    send_confirmation: bool
    previous_status: str | None = None  # set when an admin changed the status


def _clip(value: str | None, limit: int) -> str | None:
    cleaned = clean_name(value, limit) if value else ""
    return cleaned or None


def subscribe(store: Subscribers, email: str, name: str = "", *, method: str,
              ip: str | None, user_agent: str | None, now: datetime, confirmed: bool = False,
              sections: Sequence[str] = (), smtputf8: bool = False,
              resend_window: timedelta = timedelta(hours=1), resubscribe: bool = False,
              reason: str = "", actor: str = "") -> SubscribeOutcome:
    """Record a request to subscribe; raise AddressError for an unusable address.

    Rules: a new address starts pending (active when `confirmed`, i.e. an admin vouches).
    A form request for a pending, unsubscribed or bounced address asks for a (new)
    confirmation, at most one per `resend_window`; confirming is the person's own opt-in
    again. Import and admin adds never touch unsubscribed, bounced or complained rows, not
    even `confirmed` ones: only `resubscribe` (an admin, explicitly, with a `reason`) brings
    one back, and it implies `confirmed`. A complained address gets no confirmation email
    from the form: the form cannot tell the person from someone who wants to annoy them,
    and another complaint hurts delivery. Each grant of consent is recorded with `actor`
    and `reason` (see schema.consent_events).
    """
    if method not in METHODS:
        raise ValueError(f"unknown consent method {method!r}")
    if resubscribe and (method != "admin" or not reason.strip()):
        raise ValueError("resubscribe is for an admin, with a reason")
    confirmed = confirmed or resubscribe
    address, key = normalise_address(email, smtputf8=smtputf8)
    name = clean_name(name)
    sections = clean_sections(sections)
    consent: dict[str, Any] = {"consent_at": now, "consent_method": method,
                               "consent_ip": _clip(ip, 64) if method == "form" else None,
                               "consent_user_agent": _clip(user_agent, 500)
                               if method == "form" else None}

    def record(action: str, previous: str | None = None) -> Consent:
        return Consent(action, actor=actor, reason=reason, previous_status=previous,
                       ip=consent["consent_ip"], user_agent=consent["consent_user_agent"])

    sub = store.get_subscriber_by_key(key)
    if sub is None:
        sub = store.add_subscriber(email=address, email_key=key, name=name,
                                   status="active" if confirmed else "pending", now=now,
                                   consent_method=method, consent_ip=consent["consent_ip"],
                                   consent_user_agent=consent["consent_user_agent"],
                                   sections=sections, confirmed=confirmed,
                                   consent=record(method))
        if sub is not None:
            send = not confirmed and store.claim_confirmation(sub.id, now, resend_window)
            return SubscribeOutcome(_fresh(store, sub), "new", send)
        sub = store.get_subscriber_by_key(key)  # inserted by a concurrent request
        if sub is None:  # and removed again at once: vanishingly rare, let the caller retry
            raise AddressError("please try again")
    changes: dict[str, Any] = {"name": name} if name else {}
    if sections:
        changes["sections"] = sections
    if confirmed and (sub.status == "pending" or (resubscribe and sub.status in SUPPRESSED)):
        action = "admin" if sub.status == "pending" else "resubscribe"
        changed = store.update_subscriber(
            sub.id, now, expect=(sub.status,), consent=record(action, sub.status),
            status="active", confirmed_at=now, hard_bounces=0, **changes, **consent)
        if not changed:  # the status moved meanwhile: decide again on what is stored now
            return subscribe(store, email, name, method=method, ip=ip, user_agent=user_agent,
                             now=now, confirmed=confirmed, sections=sections,
                             smtputf8=smtputf8, resend_window=resend_window,
                             resubscribe=resubscribe, reason=reason, actor=actor)
        state = "activated" if sub.status == "pending" else "reactivated"
        return SubscribeOutcome(_fresh(store, sub), state, False, sub.status)
    if sub.status == "active":
        if confirmed:  # an admin may correct the name and sections it vouches for
            store.update_subscriber(sub.id, now, **changes)
            return SubscribeOutcome(_fresh(store, sub), "active", False)
        # Nobody else may change an active subscriber's name or sections without their link.
        return SubscribeOutcome(sub, "active", False)
    if sub.status == "pending" or (method == "form" and sub.status in ("unsubscribed",
                                                                         "bounced")):
        store.update_subscriber(sub.id, now, expect=(sub.status,), **changes, **consent)
        send = store.claim_confirmation(sub.id, now, resend_window, expect=(sub.status,))
        if send and method == "form":  # once per window, however often the form is sent
            store.record_consent(sub.id, now, record("form", sub.status))
        state = "pending" if sub.status == "pending" else "suppressed"
        return SubscribeOutcome(_fresh(store, sub), state, send)
    return SubscribeOutcome(sub, "suppressed", False)


def _fresh(store: Subscribers, sub: Subscriber) -> Subscriber:
    return store.get_subscriber(sub.id) or sub


@dataclass(frozen=True, slots=True)
class TokenOutcome:
    subscriber: Subscriber
    changed: bool  # False: it was already so (a replayed link is harmless)
    previous_status: str | None = None  # confirm: what it was before ("unsubscribed": back)


def confirm(store: Subscribers, secret: bytes, token: str, *, now: datetime,
            max_age: timedelta) -> TokenOutcome:
    """Activate the subscriber a confirmation link belongs to; replaying it changes nothing."""
    sub = resolve_token(store, secret, token, "confirm", now=now, max_age=max_age)
    if sub.status == "active":
        return TokenOutcome(sub, False)
    if sub.status == "complained":
        raise TokenError("expired")  # only an admin brings back someone who complained
    changed = store.activate_subscriber(sub.id, now, expect=("pending", "unsubscribed", "bounced"),
                                        consent=Consent("confirm", previous_status=sub.status))
    return TokenOutcome(_fresh(store, sub), changed, sub.status)


def unsubscribe(store: Subscribers, secret: bytes, token: str, *, now: datetime,
                max_age: timedelta) -> TokenOutcome:
    """Unsubscribe at once (RFC 8058 one-click); doing it twice is fine."""
    sub = resolve_token(store, secret, token, "unsubscribe", now=now, max_age=max_age)
    changed = store.unsubscribe_subscriber(sub.id, now)
    return TokenOutcome(_fresh(store, sub), changed)


def update_preferences(store: Subscribers, secret: bytes, token: str,
                       sections: Sequence[str], *, now: datetime, max_age: timedelta,
                       available: Sequence[str]) -> TokenOutcome:
    """Keep only the chosen sections (none chosen means every section)."""
    sub = resolve_token(store, secret, token, "preferences", now=now, max_age=max_age)
    chosen = clean_sections(sections, available)
    if set(chosen) == set(available):
        chosen = ()  # all of today's sections means all, including tomorrow's new ones
    store.set_subscriber_sections(sub.id, chosen, now)
    return TokenOutcome(_fresh(store, sub), chosen != sub.sections)


# -- the confirmation email ---------------------------------------------------------------
