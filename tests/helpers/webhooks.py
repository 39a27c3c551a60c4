"""Provider webhook bodies signed as SNS/SES, Mailgun, Postmark and SendGrid sign them, at NOW."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from newsletter.audience.sns import SnsMessage, sns_message

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-bounces"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0123456789.pem"
OUR_ID = "<42.17.abc@news.example.org>"


# -- signers: each provider's scheme, written from its documentation ----------------------

MAILGUN_KEY = "mailgun-signing-key-0123456789"


def mailgun_body(event_data: object, *, key: str = MAILGUN_KEY, at: float = NOW,
                 token: str = "t" * 50) -> bytes:
    """Mailgun: hex HMAC-SHA256 of timestamp + token (no separator) with the signing key."""
    timestamp = str(int(at))
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps({"signature": {"timestamp": timestamp, "token": token,
                                     "signature": signature},
                       "event-data": event_data}).encode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class SendGridSigner:
    """SendGrid: ECDSA P-256 with SHA-256 over timestamp + raw body, base64 DER signature."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_b64(self) -> str:  # what SendGrid's settings page shows
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    @property
    def public_pem(self) -> str:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, body: bytes, timestamp: str) -> str:
        der = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(der).decode()


def self_signed(key: rsa.RSAPrivateKey, *, days: tuple[int, int] = (-1, 365)) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    start = datetime.fromtimestamp(NOW, UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start + timedelta(days=days[0]))
            .not_valid_after(start + timedelta(days=days[1]))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# AWS: for a Notification the signed fields are Message, MessageId, Subject (when there is
# one), Timestamp, TopicArn, Type; for the two confirmations Message, MessageId, SubscribeURL,
# Timestamp, Token, TopicArn, Type. Each as "Name\nvalue\n", in that order.
SIGNED_FIELDS = {
    "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "SubscriptionConfirmation": ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"],
}
SIGNED_FIELDS["UnsubscribeConfirmation"] = SIGNED_FIELDS["SubscriptionConfirmation"]


@dataclass
class SnsSigner:
    key: rsa.RSAPrivateKey
    cert_pem: bytes
    fetched: list[str] = field(default_factory=list)

    def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        return self.cert_pem

    def message(self, kind: str = "Notification", message: str = "{}", *, version: str = "1",
                at: float = NOW, topic: str = TOPIC, cert_url: str = CERT_URL,
                message_id: str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
                **extra: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"Type": kind, "MessageId": message_id, "TopicArn": topic,
                               "Message": message, "Timestamp": iso(at), **extra}
        if kind != "Notification":
            doc.setdefault("Token", "2336412f37fb687f5d51e6e241d164b05333")
            doc.setdefault("SubscribeURL", "https://sns.us-east-1.amazonaws.com/?Action="
                           f"ConfirmSubscription&TopicArn={topic}&Token=2336412f37")
        signed = "".join(f"{name}\n{doc[name]}\n" for name in SIGNED_FIELDS[kind] if name in doc)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(signed.encode(), padding.PKCS1v15(), algorithm)
        doc.update(SignatureVersion=version, Signature=base64.b64encode(signature).decode(),
                   SigningCertURL=cert_url)
        return doc

    def verify(self, doc: dict[str, Any], **kwargs: Any) -> SnsMessage:
        return sns_message(json.dumps(doc).encode(), self.fetch, [TOPIC], NOW, **kwargs)


# -- event bodies, one or two a provider --------------------------------------------------

def ses_bounce(bounce_type: str = "Permanent", recipients: list[Any] | None = None,
               **mail: Any) -> str:
    if recipients is None:
        recipients = [{"emailAddress": "Jane@Example.com", "status": "5.1.1", "action": "failed",
                       "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User unknown"}]
    return json.dumps({
        "notificationType": "Bounce",
        "bounce": {"bounceType": bounce_type, "bounceSubType": "General",
                   "bouncedRecipients": recipients, "timestamp": "2027-01-15T07:59:00.000Z",
                   "feedbackId": "0000013786031775-fea503bc-7497-49e1-881b-a0379bb037d3-000000"},
        "mail": {"timestamp": "2027-01-15T07:58:00.000Z", "source": "news@news.example.org",
                 "messageId": "0000013786031775-163e3910-53eb-4c8e-a04a-f29debf88a84-000000",
                 "destination": ["jane@example.com"], **mail}})


def mailgun_failed(severity: str = "permanent", reason: str = "bounce",
                   **extra: Any) -> dict[str, Any]:
    return {"event": "failed", "id": "G9Bn5sl1TC6nu79C8C0bwg", "timestamp": NOW - 5,
            "severity": severity, "reason": reason, "recipient": "Alice@Example.com",
            "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist",
                                "description": "", "attempt-no": 1},
            "message": {"headers": {"message-id": OUR_ID[1:-1], "subject": "Issue 42"}},
            **extra}


PM_USER, PM_PASSWORD = "postmark", "correct horse battery staple"
AUTH = basic(PM_USER, PM_PASSWORD)


def postmark(record: str = "Bounce", type_: str = "HardBounce", **extra: Any) -> bytes:
    return json.dumps({
        "RecordType": record, "MessageStream": "outbound", "ID": 4323372036854775807,
        "Type": type_, "TypeCode": 1, "Name": "Hard bounce", "Tag": "issue-42",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "ServerID": 23,
        "Description": "The server was unable to deliver your message.",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": "John@Example.com", "From": "news@news.example.org",
        "BouncedAt": "2027-01-15T07:59:00Z", "Inactive": True, "CanActivate": True, **extra,
    }).encode()


def sg(event: str, n: int = 1, **extra: Any) -> dict[str, Any]:
    return {"email": f"User{n}@Example.com", "timestamp": int(NOW) - 10, "event": event,
            "sg_event_id": f"sg-{event}-{n}", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0",
            "smtp-id": OUR_ID, **extra}
