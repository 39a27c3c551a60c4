"""Provider webhooks read, purely: Mailgun, Postmark and SendGrid requests verified and parsed."""

# Bytes and header values in, ProviderEvents out; nothing here stores, sends or fetches. Every
# request that is not from the provider, or not understood, raises WebhookRefused with the HTTP
# status to answer; no other exception escapes. Amazon SES (through SNS) is in audience/sns.py.
# Events that say nothing about an address failing ("delivered", "opened", ...) give no
# ProviderEvent (an empty list), never an error: providers send them to the same URL.

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from newsletter.audience.bounces import COMPLAINT, HARD, SOFT
from newsletter.audience.keys import sendgrid_key

MAX_EVENTS = 1_000  # per request; SendGrid batches far fewer, so more is not a real provider
MAX_RECIPIENT = 320
MAX_DIAGNOSTIC = 300
MAX_EVENT_ID = 400  # a provider's id, or SES's MessageId joined with a recipient
MAX_TIMESTAMP_DIGITS = 12
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\d)(?!\.\d)")
_MESSAGE_ID = re.compile(r"^<[!-;=?-~]{1,996}>$")  # printable ASCII, no '<' or '>' inside


@dataclass(frozen=True)
class ProviderEvent:
    """One recipient's failure or complaint as a provider reports it, verified."""

    recipient: str  # lower-case, at most MAX_RECIPIENT characters
    kind: str  # HARD, SOFT or COMPLAINT
    status: str  # enhanced status code such as "5.1.1"; "" when none is given or derivable
    diagnostic: str  # one printable line, at most MAX_DIAGNOSTIC characters
    event_id: str  # the provider's id of this event: the store refuses it twice
    message_id: str  # our Message-ID ("<...>") when the provider reports it, else ""


class WebhookRefused(Exception):
    """A request that is not from the provider or not understood; `code` is the HTTP status.

    400: malformed or not understood; 401: no (or wrong) credentials; 403: credentials that do
    not verify, a stale timestamp, a topic or certificate we do not accept; 503: a signing
    certificate could not be fetched (the provider should retry).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


# -- shared by every provider (audience/sns.py too) ---------------------------------------


def load_json(raw: bytes | str) -> Any:
    """The parsed document; WebhookRefused(400) for anything json refuses, deep nesting too."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8 and huge integers
        raise WebhookRefused(400, "the body is not valid JSON") from None


def one_line(value: object, limit: int = MAX_DIAGNOSTIC) -> str:
    """Text a log line or a page can show: printable characters on one line, shortened."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return ""
    text = " ".join(str(value).split())
    return "".join(ch for ch in text if ch.isprintable())[:limit]


def text_of(obj: dict[str, Any], key: str) -> str:
    """obj[key] when it is a string; "" when absent or null; WebhookRefused for other types."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebhookRefused(400, f"{key} is not a string")
    return value


def dict_of(obj: dict[str, Any], key: str) -> dict[str, Any]:
    """obj[key] when it is an object; {} when absent or null; WebhookRefused otherwise."""
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebhookRefused(400, f"{key} is not an object")
    return value


def status_from(*texts: object, smtp_code: object = None) -> str:
    """The first enhanced status code (RFC 3463) in `texts`, else the class of an SMTP code."""
    for text in texts:
        if isinstance(text, str) and (m := _STATUS.search(text)):
            return f"{m[1]}.{int(m[2])}.{int(m[3])}"
    if isinstance(smtp_code, str) and smtp_code.isdigit() and len(smtp_code) == 3:
        smtp_code = int(smtp_code)
    if isinstance(smtp_code, int) and not isinstance(smtp_code, bool) \
            and 400 <= smtp_code < 600:
        return f"{smtp_code // 100}.0.0"  # 550 says permanent, not which 5.x.x
    return ""


def our_message_id(value: object) -> str:
    """A Message-ID as "<...>" (providers often drop the brackets); "" when it is not one."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    if not text.startswith("<"):
        text = f"<{text}>"
    return text if _MESSAGE_ID.match(text) else ""


def provider_event(recipient: object, kind: str, *, event_id: object, status: str = "",
                   diagnostic: object = "", message_id: str = "") -> ProviderEvent:
    """A checked ProviderEvent; WebhookRefused(400) when the recipient or the id is unusable."""
    return ProviderEvent(recipient_of(recipient), kind, status, one_line(diagnostic),
                         _event_id(event_id), message_id)


def recipient_of(value: object) -> str:
    """The address an event names, lower-cased; WebhookRefused(400) when there is none."""
    if not isinstance(value, str):
        raise WebhookRefused(400, "an event names no recipient")
    text = value.strip()
    if "<" in text:  # "Name <addr>" from a provider that keeps the display name
        text = parseaddr(text)[1]
    text = text.lower()
    if not 3 <= len(text) <= MAX_RECIPIENT or "@" not in text \
            or any(ch.isspace() or not ch.isprintable() for ch in text):
        raise WebhookRefused(400, "an event names no valid recipient")
    return text


def _event_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # Postmark's record IDs are numbers
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_EVENT_ID \
            or any(ch.isspace() or not ch.isprintable() for ch in value):
        raise WebhookRefused(400, "an event has no usable id")
    return value


def _fresh(timestamp: int, now: float, max_age: int) -> None:
    # Both directions: a timestamp far ahead is as suspicious as one far behind.
    if abs(now - timestamp) > max_age:
        raise WebhookRefused(403, "the timestamp is outside the accepted window (a replay?)")


def _digits(value: object, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() \
            or len(value) > MAX_TIMESTAMP_DIGITS:
        raise WebhookRefused(400, f"the {what} is not a Unix time")
    return int(value)


def _digest(text: str) -> bytes:
    # Digests of both sides, compared in constant time: neither content nor length leaks.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


# -- Mailgun ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailgunDelivery:
    """A verified Mailgun request: its signature token (random, one per request) and events."""

    token: str
    events: tuple[ProviderEvent, ...]


def mailgun_delivery(body: bytes, signing_key: str, now: float,
                     max_age: int) -> MailgunDelivery:
    """Verify Mailgun's HMAC-SHA256 over timestamp + token, then read its event-data."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise WebhookRefused(400, "the body is not a JSON object")
    signature = doc.get("signature")
    if not isinstance(signature, dict):
        raise WebhookRefused(401, "the request carries no signature")
    timestamp, token, given = (signature.get(k) for k in ("timestamp", "token", "signature"))
    if not isinstance(token, str) or not isinstance(given, str) or not 1 <= len(token) <= 200:
        raise WebhookRefused(401, "the request carries no signature")
    ts = _digits(timestamp, "timestamp")
    signed = (timestamp if isinstance(timestamp, str) else str(ts)) + token
    expected = hmac.new(signing_key.encode("utf-8"), signed.encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()
    if not signing_key or not hmac.compare_digest(_digest(expected), _digest(given)):
        raise WebhookRefused(403, "the signature does not verify")
    _fresh(ts, now, max_age)
    data = doc.get("event-data")
    if not isinstance(data, dict):
        raise WebhookRefused(400, "event-data is not an object")
    return MailgunDelivery(token, tuple(_mailgun_event(data)))


def mailgun_events(body: bytes, signing_key: str, now: float,
                   max_age: int) -> list[ProviderEvent]:
    """The events of one verified Mailgun webhook request (a request holds one event)."""
    return list(mailgun_delivery(body, signing_key, now, max_age).events)


def _mailgun_event(data: dict[str, Any]) -> list[ProviderEvent]:
    event = text_of(data, "event")
    if event == "complained":
        kind = COMPLAINT
    elif event == "failed":
        severity, reason = text_of(data, "severity"), text_of(data, "reason")
        if reason == "suppress-unsubscribe":
            return []  # not sent because the address unsubscribed at Mailgun: no failure
        if reason == "suppress-complaint":
            kind = COMPLAINT  # not sent because this address complained before
        elif severity == "permanent" and reason != "old":
            kind = HARD
        else:
            # Temporary, or given up after retries ("old"), or a severity Mailgun added
            # later: each counts as a soft bounce, which suppresses only when repeated.
            kind = SOFT
    else:
        return []
    delivery = dict_of(data, "delivery-status")
    message, description = text_of(delivery, "message"), text_of(delivery, "description")
    status = "" if kind == COMPLAINT else status_from(
        text_of(delivery, "enhanced-code"), message, description,
        smtp_code=delivery.get("code"))
    headers = dict_of(dict_of(data, "message"), "headers")
    return [provider_event(
        data.get("recipient"), kind, event_id=data.get("id"), status=status,
        diagnostic=description or message or text_of(data, "reason") or event,
        message_id=our_message_id(headers.get("message-id")))]


# -- Postmark -----------------------------------------------------------------------------

# Postmark's bounce Types by what they say about the address. Types not named here
# (AutoResponder, Subscribe, Unsubscribe, AddressChange, ChallengeVerification,
# OpenRelayTest, ManuallyDeactivated, Unconfirmed, InboundError, SMTPApiError, DMARCPolicy,
# TemplateRenderingFailed, ...) are replies, operator actions or failures of our own sending,
# not the address failing: no event.
_POSTMARK_KINDS = {
    "HardBounce": HARD, "BadEmailAddress": HARD,
    "SoftBounce": SOFT, "Transient": SOFT, "DnsError": SOFT, "Blocked": SOFT,
    "SpamNotification": SOFT, "VirusNotification": SOFT, "Unknown": SOFT,
    "SpamComplaint": COMPLAINT,
}


def postmark_events(body: bytes, authorization: str, username: str,
                    password: str) -> list[ProviderEvent]:
    """Check the webhook URL's basic auth, then read one Bounce or SpamComplaint record.

    Postmark signs nothing and sends no timestamp: a replayed record passes here and is
    refused later, because the store records each event_id (the record ID) once.
    """
    scheme, _, encoded = authorization.strip().partition(" ")
    try:
        given = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        given = ""
    if scheme.lower() != "basic" or not username or not password or ":" not in given:
        raise WebhookRefused(401, "the request carries no valid basic credentials")
    if not hmac.compare_digest(_digest(given), _digest(f"{username}:{password}")):
        raise WebhookRefused(401, "the request carries no valid basic credentials")
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise WebhookRefused(400, "the body is not a JSON object")
    record = text_of(doc, "RecordType")
    if record == "SpamComplaint":
        kind: str | None = COMPLAINT
    elif record == "Bounce":
        kind = _POSTMARK_KINDS.get(text_of(doc, "Type"))
    else:
        return []  # Delivery, Open, Click, SubscriptionChange: nothing came back
    if kind is None:
        return []
    details, description = text_of(doc, "Details"), text_of(doc, "Description")
    # Postmark's MessageID is its own id, not our Message-ID header: message_id stays "".
    return [provider_event(
        doc.get("Email"), kind, event_id=doc.get("ID"),
        status="" if kind == COMPLAINT else status_from(details, description),
        diagnostic=details or description or text_of(doc, "Type") or record)]


# -- SendGrid -----------------------------------------------------------------------------


def sendgrid_events(body: bytes, signature: str, timestamp: str, public_key: str,
                    now: float, max_age: int) -> list[ProviderEvent]:
    """Verify SendGrid's ECDSA signature over timestamp + body, then read its event array."""
    if not signature or not timestamp:
        raise WebhookRefused(401, "the request carries no signature")
    ts = _digits(timestamp, "timestamp")
    try:
        key = sendgrid_key(public_key)
    except ValueError:
        raise WebhookRefused(403, "no valid SendGrid verification key is configured") from None
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, timestamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise WebhookRefused(403, "the signature does not verify") from None
    _fresh(ts, now, max_age)
    doc = load_json(body)
    if not isinstance(doc, list):
        raise WebhookRefused(400, "the body is not a JSON array")
    if len(doc) > MAX_EVENTS:
        raise WebhookRefused(400, f"more than {MAX_EVENTS} events in one request")
    events = []
    for item in doc:
        if not isinstance(item, dict):
            raise WebhookRefused(400, "an event is not a JSON object")
        events.extend(_sendgrid_event(item))
    return events


# "dropped" reasons that say something about the address; the rest (unsubscribed, invalid
# SMTPAPI header, ...) are about us or the list: no event.
_SENDGRID_DROPPED = {"bounced address": HARD, "invalid": HARD,
                     "spam reporting address": COMPLAINT}


def _sendgrid_event(item: dict[str, Any]) -> list[ProviderEvent]:
    event = text_of(item, "event")
    reason = text_of(item, "reason")
    if event == "bounce":
        # "bounce" is permanent; "blocked" (and "expired", or a type SendGrid adds later) is
        # the receiving side refusing for now, which suppresses only when repeated.
        kind: str | None = HARD if text_of(item, "type") in ("", "bounce") else SOFT
    elif event == "deferred":
        kind = SOFT
    elif event == "spamreport":
        kind = COMPLAINT
    elif event == "dropped":
        kind = _SENDGRID_DROPPED.get(" ".join(reason.lower().split()))
    else:
        return []  # processed, delivered, open, click, unsubscribe, group_*
    if kind is None:
        return []
    response = text_of(item, "response")
    status = "" if kind == COMPLAINT else status_from(
        text_of(item, "status"), reason, response)
    return [provider_event(
        item.get("email"), kind, event_id=item.get("sg_event_id"), status=status,
        diagnostic=reason or response or event,
        message_id=our_message_id(item.get("smtp-id")))]
