"""Amazon SES through SNS, purely: SNS message signatures verified, SES notifications read."""

# The caller fetches the signing certificate (`fetch_cert`, over HTTPS with the system's CA
# store): what makes it Amazon's is that it comes over TLS from an sns.<region>.amazonaws.com
# URL, which valid_sns_url insists on before anything is fetched. The string signed is the one
# AWS documents: "Name\nvalue\n" for each field of the message type, in this order.

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from newsletter.audience.bounces import COMPLAINT, HARD, SOFT
from newsletter.audience.webhooks import (
    MAX_EVENTS,
    ProviderEvent,
    WebhookRefused,
    dict_of,
    load_json,
    our_message_id,
    provider_event,
    recipient_of,
    status_from,
    text_of,
)

# SNS retries an HTTP endpoint for at most an hour (the ceiling of its delivery policy) and
# signs each message once, at publication: an hour of retries plus five minutes of clock skew.
SNS_MAX_AGE = 3_900
SNS_MAX_AHEAD = 300  # a Timestamp further in the future is refused as well
NOTIFICATION = "Notification"
SUBSCRIBE = "SubscriptionConfirmation"
UNSUBSCRIBE = "UnsubscribeConfirmation"
_SIGNED = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIBE: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                "Type"),
}
_SIGNED[UNSUBSCRIBE] = _SIGNED[SUBSCRIBE]
_OPTIONAL = frozenset({"Subject"})
# sns.<region>.amazonaws.com or .amazonaws.com.cn, exactly: no user info, no port, nothing
# after it that a URL parser could read as the host.
_SNS_HOST = re.compile(r"^sns\.[a-z0-9]+(?:-[a-z0-9]+)+\.amazonaws\.com(?:\.cn)?$")
_MAX_URL = 2_048


def valid_sns_url(url: str) -> bool:
    """True for an https URL on an SNS endpoint (a SigningCertURL or a SubscribeURL)."""
    if not isinstance(url, str) or not url or len(url) > _MAX_URL or not url.isascii() \
            or any(ch.isspace() or ch == "\\" or not ch.isprintable() for ch in url):
        return False
    parts = urlsplit(url)
    return parts.scheme == "https" and _SNS_HOST.match(parts.netloc) is not None


def _cert_url_ok(url: str) -> bool:
    parts = urlsplit(url)
    return valid_sns_url(url) and parts.path.endswith(".pem") and not parts.query \
        and not parts.fragment


@dataclass(frozen=True)
class SnsMessage:
    """A verified SNS message from an accepted topic."""

    type: str  # NOTIFICATION, SUBSCRIBE or UNSUBSCRIBE
    message_id: str
    topic_arn: str
    message: str
    subscribe_url: str = ""  # confirmations only; check valid_sns_url before visiting it


class CertCache:
    """Signing certificates that verified a message, by URL: at most `size`, oldest out first.

    SNS signs with a handful of certificates, so a small cache spares a fetch per message.
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._certs: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()  # the web layer verifies in a thread pool

    def get(self, url: str) -> x509.Certificate | None:
        with self._lock:
            return self._certs.get(url)

    def put(self, url: str, cert: x509.Certificate) -> None:
        with self._lock:
            self._certs.pop(url, None)
            while len(self._certs) >= self.size:
                self._certs.pop(next(iter(self._certs)))
            self._certs[url] = cert


def sns_message(body: bytes, fetch_cert: Callable[[str], bytes], topic_arns: Sequence[str],
                now: float, *, cache: CertCache | None = None,
                max_age: int = SNS_MAX_AGE) -> SnsMessage:
    """Verify an SNS POST body (topic, certificate URL, age, signature); WebhookRefused if not.

    Cheap checks come first, so a request for a topic we do not accept fetches nothing.
    """
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise WebhookRefused(400, "the body is not a JSON object")
    kind = text_of(doc, "Type")
    if kind not in _SIGNED:
        raise WebhookRefused(400, "not an SNS message type we know")
    # A field is signed when present (Subject is the one that may be absent).
    fields = {name: text_of(doc, name) for name in _SIGNED[kind] if doc.get(name) is not None}
    if any(not fields.get(name) for name in _SIGNED[kind] if name not in _OPTIONAL):
        raise WebhookRefused(400, "a field the signature covers is missing")
    if fields["TopicArn"] not in topic_arns:
        raise WebhookRefused(403, "the topic is not one we accept")
    version, cert_url = text_of(doc, "SignatureVersion"), text_of(doc, "SigningCertURL")
    if version not in ("1", "2"):
        raise WebhookRefused(400, "an unknown SignatureVersion")
    if not _cert_url_ok(cert_url):
        raise WebhookRefused(403, "the SigningCertURL is not an SNS certificate URL")
    _check_age(fields["Timestamp"], now, max_age)
    try:
        signature = base64.b64decode(text_of(doc, "Signature"), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRefused(403, "the signature does not verify") from None
    signed = "".join(f"{name}\n{value}\n" for name, value in fields.items())
    cert = _certificate(cert_url, fetch_cert, cache, now)
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise WebhookRefused(403, "the signing certificate holds no usable key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise WebhookRefused(403, "the signing certificate does not hold an RSA key")
    # SignatureVersion 1 is SHA1withRSA by definition; 2 is SHA256withRSA.
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
    try:
        key.verify(signature, signed.encode("utf-8", "surrogatepass"), padding.PKCS1v15(),
                   algorithm)
    except (InvalidSignature, ValueError, UnicodeError):
        raise WebhookRefused(403, "the signature does not verify") from None
    if cache is not None:
        cache.put(cert_url, cert)
    return SnsMessage(kind, fields["MessageId"], fields["TopicArn"], fields["Message"],
                      fields.get("SubscribeURL", ""))


def _check_age(timestamp: str, now: float, max_age: int) -> None:
    try:
        when = datetime.fromisoformat(timestamp)
    except ValueError:
        raise WebhookRefused(400, "the Timestamp is not a date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # SNS writes Z; a bare time is read as UTC too
    age = now - when.timestamp()
    if age > max_age or age < -SNS_MAX_AHEAD:
        raise WebhookRefused(403, "the Timestamp is outside the accepted window (a replay?)")


def _certificate(url: str, fetch_cert: Callable[[str], bytes], cache: CertCache | None,
                 now: float) -> x509.Certificate:
    cert = cache.get(url) if cache is not None else None
    if cert is None:
        try:
            pem = fetch_cert(url)
        except Exception as exc:  # whatever the fetcher raises, the provider should retry
            raise WebhookRefused(503, f"the signing certificate could not be fetched "
                                      f"({type(exc).__name__})") from None
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except (ValueError, TypeError):
            raise WebhookRefused(403, "the SigningCertURL holds no certificate") from None
    moment = datetime.fromtimestamp(now, UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise WebhookRefused(403, "the signing certificate is not valid now")
    return cert


# -- what SES says inside a Notification --------------------------------------------------


def ses_events(msg: SnsMessage) -> list[ProviderEvent]:
    """The bounces and complaints of one SES notification (or event publishing record)."""
    doc = load_json(msg.message)
    if not isinstance(doc, dict):
        raise WebhookRefused(400, "the SES notification is not a JSON object")
    kind = text_of(doc, "notificationType") or text_of(doc, "eventType")
    message_id = _ses_message_id(dict_of(doc, "mail"))
    if kind == "Bounce":
        bounce = dict_of(doc, "bounce")
        bounce_type = text_of(bounce, "bounceType")
        # Permanent is the only bounce SES will not retry; Transient and Undetermined (and
        # any type SES adds) count as soft, which suppresses only when repeated.
        event_kind = HARD if bounce_type == "Permanent" else SOFT
        fallback = "/".join(t for t in (bounce_type, text_of(bounce, "bounceSubType")) if t)
        recipients = _recipients(bounce, "bouncedRecipients")
    elif kind == "Complaint":
        complaint = dict_of(doc, "complaint")
        event_kind = COMPLAINT
        fallback = text_of(complaint, "complaintFeedbackType") or "complaint"
        recipients = _recipients(complaint, "complainedRecipients")
    else:
        return []  # Delivery, Send, Reject, Open, Click, DeliveryDelay, ...: not a bounce
    events: list[ProviderEvent] = []
    seen: set[str] = set()
    for item in recipients:
        diagnostic = text_of(item, "diagnosticCode")
        status = "" if event_kind == COMPLAINT else status_from(
            text_of(item, "status"), diagnostic)
        recipient = recipient_of(item.get("emailAddress"))
        if recipient in seen:
            continue  # a recipient named twice counts once
        seen.add(recipient)
        # One SNS message can name several recipients: each gets its own id.
        events.append(provider_event(recipient, event_kind,
                                     event_id=f"{msg.message_id}:{recipient}", status=status,
                                     diagnostic=diagnostic or fallback, message_id=message_id))
    return events


def _recipients(obj: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = obj.get(key)
    if not isinstance(items, list) or not items:
        raise WebhookRefused(400, f"{key} is missing")
    if len(items) > MAX_EVENTS:
        raise WebhookRefused(400, f"more than {MAX_EVENTS} recipients in one notification")
    if not all(isinstance(item, dict) for item in items):
        raise WebhookRefused(400, f"{key} holds something other than objects")
    return items


def _ses_message_id(mail: dict[str, Any]) -> str:
    # SES keeps our headers in mail.commonHeaders and mail.headers when the identity is set
    # to include them; mail.messageId is SES's own id, not ours.
    common = dict_of(mail, "commonHeaders")
    found = our_message_id(common.get("messageId"))
    if found:
        return found
    headers = mail.get("headers")
    if isinstance(headers, list):
        for header in headers[:MAX_EVENTS]:
            if isinstance(header, dict) and isinstance(header.get("name"), str) \
                    and header["name"].lower() == "message-id":
                return our_message_id(header.get("value"))
    return ""
