"""Provider webhooks read purely: SNS/SES, Mailgun, Postmark, SendGrid, each signed its own way.

Keys are made for the tests (RSA and a self-signed certificate for SNS, ECDSA P-256 for
SendGrid, an HMAC key for Mailgun; the signers in tests/helpers/webhooks.py); the clock is the
fixed NOW, so nothing depends on the time of day.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.audience.bounces import COMPLAINT, HARD, SOFT
from newsletter.audience.sns import (
    SNS_MAX_AGE,
    CertCache,
    SnsMessage,
    ses_events,
    sns_message,
    valid_sns_url,
)
from newsletter.audience.webhooks import (
    MAX_EVENTS,
    ProviderEvent,
    WebhookRefused,
    mailgun_delivery,
    mailgun_events,
    postmark_events,
    sendgrid_events,
)
from tests.helpers.webhooks import (
    AUTH,
    CERT_URL,
    MAILGUN_KEY,
    NOW,
    OUR_ID,
    PM_PASSWORD,
    PM_USER,
    TOPIC,
    SendGridSigner,
    SnsSigner,
    basic,
    iso,
    mailgun_body,
    mailgun_failed,
    postmark,
    self_signed,
    ses_bounce,
    sg,
)

MAX_AGE = 600


def refused(code: int, call: Callable[[], object]) -> str:
    """Run `call`, expect WebhookRefused with `code`, and give its reason."""
    with pytest.raises(WebhookRefused) as info:
        call()
    assert info.value.code == code, info.value.reason
    assert info.value.reason
    return info.value.reason


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def sns(rsa_key: rsa.RSAPrivateKey) -> SnsSigner:
    return SnsSigner(rsa_key, self_signed(rsa_key))


# -- Amazon SNS: URLs, signatures, topics, age --------------------------------------------

@pytest.mark.parametrize("url", [
    CERT_URL,
    "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-abc.pem",
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem",
    "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=x",
])
def test_sns_urls_accepted(url: str) -> None:
    assert valid_sns_url(url)


@pytest.mark.parametrize("url", [
    "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
    "http://sns.us-east-1.amazonaws.com/x.pem",
    "https://evil.example/sns.pem",
    "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
    "https://user@sns.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com:8443/x.pem",
    "https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem",
    "https://s3.amazonaws.com/sns/x.pem",
    "https://sns.amazonaws.com/x.pem",
    "https://bucket.s3.us-east-1.amazonaws.com/x.pem",
    "https://sns.us-east-1.amazonaws.com /x.pem",
    "https://SNS.US-EAST-1.AMAZONAWS.COM.evil.example/x.pem",
    "//sns.us-east-1.amazonaws.com/x.pem",
    "", "sns.us-east-1.amazonaws.com",
])
def test_sns_urls_refused(url: str) -> None:
    assert not valid_sns_url(url)


@pytest.mark.parametrize("version", ["1", "2"])
def test_sns_signature_versions_verify(sns: SnsSigner, version: str) -> None:
    msg = sns.verify(sns.message(message='{"a": 1}\nline two', version=version,
                                 Subject="Amazon SES Email Event Notification"))
    assert msg == SnsMessage("Notification", "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324", TOPIC,
                             '{"a": 1}\nline two', "")
    assert sns.fetched == [CERT_URL]


@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_sns_confirmations_sign_url_and_token(sns: SnsSigner, kind: str) -> None:
    doc = sns.message(kind, "You have chosen to subscribe to the topic.", version="2")
    msg = sns.verify(doc)
    assert (msg.type, msg.subscribe_url) == (kind, doc["SubscribeURL"])
    for name, forged in (("SubscribeURL", "https://sns.us-east-1.amazonaws.com/?other"),
                         ("Token", "0000")):
        refused(403, lambda n=name, f=forged: sns.verify({**doc, n: f}))


@pytest.mark.parametrize("change", [
    {"Message": "{}{}"}, {"MessageId": "another"}, {"Timestamp": iso(NOW - 1)},
    {"Subject": "added after signing"}, {"SignatureVersion": "2"},
    {"Signature": base64.b64encode(b"\0" * 256).decode()}, {"Signature": "not base64!"},
])
def test_sns_tampering_is_refused(sns: SnsSigner, change: dict[str, str]) -> None:
    assert "does not verify" in refused(403, lambda: sns.verify({**sns.message(), **change}))


def test_sns_another_key_is_refused(sns: SnsSigner, rsa_key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = SnsSigner(other, sns.cert_pem).message()  # signed by a key the cert does not hold
    refused(403, lambda: sns.verify(forged))


def test_sns_topic_must_be_ours_and_nothing_is_fetched_otherwise(sns: SnsSigner) -> None:
    doc = sns.message(topic="arn:aws:sns:us-east-1:999999999999:someone-else")
    assert "topic" in refused(403, lambda: sns.verify(doc))
    refused(403, lambda: sns_message(json.dumps(sns.message()).encode(), sns.fetch, [], NOW))
    assert sns.fetched == []


@pytest.mark.parametrize("url", [
    "https://sns.us-east-1.amazonaws.com.evil.example/x.pem", "http://sns.us-east-1.amazonaws."
    "com/x.pem", "https://evil.example/sns.pem", "https://sns.us-east-1.amazonaws.com/x.txt",
    "https://sns.us-east-1.amazonaws.com/x.pem?y=1",
])
def test_sns_cert_url_must_be_amazon_before_any_fetch(sns: SnsSigner, url: str) -> None:
    assert "SigningCertURL" in refused(403, lambda: sns.verify(sns.message(cert_url=url)))
    assert sns.fetched == []


def test_sns_age_window(sns: SnsSigner) -> None:
    sns.verify(sns.message(at=NOW - SNS_MAX_AGE + 1))  # an hour of SNS retries is accepted
    sns.verify(sns.message(at=NOW + 60))  # a little clock skew too
    for at in (NOW - SNS_MAX_AGE - 1, NOW + 3600):
        assert "window" in refused(403, lambda a=at: sns.verify(sns.message(at=a)))
    refused(400, lambda: sns.verify({**sns.message(), "Timestamp": "yesterday"}))


def test_sns_certificate_problems(sns: SnsSigner, rsa_key: rsa.RSAPrivateKey) -> None:
    doc = json.dumps(sns.message()).encode()

    def broken(url: str) -> bytes:
        raise OSError("connection refused")

    assert "fetched" in refused(503, lambda: sns_message(doc, broken, [TOPIC], NOW))
    refused(403, lambda: sns_message(doc, lambda url: b"<html>not a cert</html>", [TOPIC], NOW))
    expired = self_signed(rsa_key, days=(-400, -1))
    assert "not valid now" in refused(403, lambda: sns_message(doc, lambda u: expired, [TOPIC],
                                                                NOW))
    ec_key = ec.generate_private_key(ec.SECP256R1())  # SNS signs with RSA, never EC
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    start = datetime.fromtimestamp(NOW, UTC)
    pem = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(ec_key.public_key()).serial_number(1)
           .not_valid_before(start - timedelta(days=1))
           .not_valid_after(start + timedelta(days=1)).sign(ec_key, hashes.SHA256())
           .public_bytes(serialization.Encoding.PEM))
    assert "RSA" in refused(403, lambda: sns_message(doc, lambda u: pem, [TOPIC], NOW))


def test_sns_certificates_are_cached_once_verified(sns: SnsSigner) -> None:
    cache = CertCache(size=2)
    for _ in range(3):
        sns.verify(sns.message(), cache=cache)
    assert sns.fetched == [CERT_URL]
    # A message that fails leaves nothing cached for its URL.
    other = CERT_URL.replace("0123456789", "other")
    refused(403, lambda: sns.verify({**sns.message(cert_url=other), "Message": "x"},
                                    cache=cache))
    assert cache.get(other) is None
    for n in range(3):  # bounded: the oldest goes first
        url = CERT_URL.replace("0123456789", f"n{n}")
        sns.verify(sns.message(cert_url=url), cache=cache)
    assert cache.get(CERT_URL) is None and cache.get(CERT_URL.replace("0123456789", "n2"))


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]", b'"text"', b"\xff\xfe", b"[" * 100_000, b'{"Type": 3}',
    b'{"Type": "Notification"}', b'{"Type": "Other"}', json.dumps({
        "Type": "Notification", "MessageId": "m", "TopicArn": TOPIC, "Message": ["x"],
        "Timestamp": iso(NOW)}).encode(),
])
def test_sns_malformed_is_refused_400(sns: SnsSigner, body: bytes) -> None:
    refused(400, lambda: sns_message(body, sns.fetch, [TOPIC], NOW))
    assert sns.fetched == []


def test_sns_unknown_signature_version(sns: SnsSigner) -> None:
    refused(400, lambda: sns.verify({**sns.message(), "SignatureVersion": "3"}))


# -- SES notifications inside SNS ---------------------------------------------------------

def ses(message: str, message_id: str = "sns-1") -> SnsMessage:
    return SnsMessage("Notification", message_id, TOPIC, message)


def test_ses_permanent_bounce_with_two_recipients() -> None:
    events = ses_events(ses(ses_bounce(recipients=[
        {"emailAddress": "Jane@Example.com", "status": "5.1.1",
         "diagnosticCode": "smtp; 550 5.1.1 <jane@example.com>... User unknown"},
        {"emailAddress": "bob@example.net", "diagnosticCode": "smtp; 550 5.2.1 disabled"},
        {"emailAddress": "jane@example.com"},  # named twice: counted once
    ], commonHeaders={"messageId": OUR_ID, "subject": "Issue 42"})))
    assert events == [
        ProviderEvent("jane@example.com", HARD, "5.1.1",
                      "smtp; 550 5.1.1 <jane@example.com>... User unknown",
                      "sns-1:jane@example.com", OUR_ID),
        ProviderEvent("bob@example.net", HARD, "5.2.1", "smtp; 550 5.2.1 disabled",
                      "sns-1:bob@example.net", OUR_ID)]


@pytest.mark.parametrize(("bounce_type", "kind"), [
    ("Permanent", HARD), ("Transient", SOFT), ("Undetermined", SOFT), ("NewType", SOFT)])
def test_ses_bounce_types(bounce_type: str, kind: str) -> None:
    [event] = ses_events(ses(ses_bounce(bounce_type, [{"emailAddress": "a@example.com"}])))
    assert (event.kind, event.status, event.diagnostic) == (kind, "", f"{bounce_type}/General")
    assert event.message_id == ""  # no headers included: SES's own messageId is not ours


def test_ses_complaint_and_event_publishing_form() -> None:
    complaint = {"eventType": "Complaint",  # event publishing names it eventType
                 "complaint": {"complainedRecipients": [{"emailAddress": "c@example.org"}],
                               "complaintFeedbackType": "abuse"},
                 "mail": {"headers": [{"name": "From", "value": "x@news.example.org"},
                                      {"name": "Message-ID", "value": OUR_ID}]}}
    assert ses_events(ses(json.dumps(complaint))) == [
        ProviderEvent("c@example.org", COMPLAINT, "", "abuse", "sns-1:c@example.org", OUR_ID)]


@pytest.mark.parametrize("kind", ["Delivery", "Send", "Open", "DeliveryDelay", "Reject"])
def test_ses_other_notifications_give_nothing(kind: str) -> None:
    assert ses_events(ses(json.dumps({"notificationType": kind, "mail": {}}))) == []


@pytest.mark.parametrize("message", [
    "not json", "[]", json.dumps({"notificationType": "Bounce", "bounce": {}}),
    json.dumps({"notificationType": "Bounce", "bounce": {"bouncedRecipients": "a@b.c"}}),
    json.dumps({"notificationType": "Bounce", "bounce": {"bouncedRecipients": ["a@b.c"]}}),
    json.dumps({"notificationType": "Bounce", "bounce": {"bouncedRecipients": [{}]}}),
    json.dumps({"notificationType": "Complaint", "complaint": {"complainedRecipients": [
        {"emailAddress": "not an address"}]}}),
    json.dumps({"notificationType": "Bounce", "bounce": {"bouncedRecipients": [
        {"emailAddress": f"u{n}@example.com"} for n in range(MAX_EVENTS + 1)]}}),
    json.dumps({"notificationType": "Bounce", "mail": [], "bounce": {}}),
])
def test_ses_malformed_is_refused_400(message: str) -> None:
    refused(400, lambda: ses_events(ses(message)))


# -- Mailgun ------------------------------------------------------------------------------

def test_mailgun_permanent_failure_is_hard() -> None:
    assert mailgun_events(mailgun_body(mailgun_failed()), MAILGUN_KEY, NOW, MAX_AGE) == [
        ProviderEvent("alice@example.com", HARD, "5.1.1", "5.1.1 The email account does not "
                      "exist", "G9Bn5sl1TC6nu79C8C0bwg", OUR_ID)]


@pytest.mark.parametrize(("severity", "reason", "kind"), [
    ("temporary", "generic", SOFT), ("permanent", "old", SOFT),
    ("permanent", "suppress-bounce", HARD), ("permanent", "suppress-complaint", COMPLAINT),
    ("permanent", "suppress-unsubscribe", None), ("sideways", "generic", SOFT),
])
def test_mailgun_failure_kinds(severity: str, reason: str, kind: str | None) -> None:
    data = mailgun_failed(severity, reason, **{"delivery-status": {
        "code": 421, "description": "Service unavailable, try later"}})
    events = mailgun_events(mailgun_body(data), MAILGUN_KEY, NOW, MAX_AGE)
    assert [e.kind for e in events] == ([kind] if kind else [])
    if kind == SOFT:  # no enhanced code given: its class comes from the SMTP code
        assert (events[0].status, events[0].diagnostic) == ("4.0.0",
                                                             "Service unavailable, try later")


def test_mailgun_complaint_and_other_events() -> None:
    data = {"event": "complained", "id": "c-1", "recipient": "bob@example.org",
            "message": {"headers": {"message-id": OUR_ID}}}
    assert mailgun_events(mailgun_body(data), MAILGUN_KEY, NOW, MAX_AGE) == [
        ProviderEvent("bob@example.org", COMPLAINT, "", "complained", "c-1", OUR_ID)]
    for event in ("delivered", "opened", "clicked", "accepted", "unsubscribed", "new-thing"):
        body = mailgun_body({"event": event, "id": "x", "recipient": "bob@example.org"})
        assert mailgun_events(body, MAILGUN_KEY, NOW, MAX_AGE) == []


def test_mailgun_delivery_gives_the_token() -> None:
    body = mailgun_body(mailgun_failed(), token="tok-" + "x" * 46)
    assert mailgun_delivery(body, MAILGUN_KEY, NOW, MAX_AGE).token == "tok-" + "x" * 46


def test_mailgun_signature_checks() -> None:
    good = json.loads(mailgun_body(mailgun_failed()))
    assert "does not verify" in refused(403, lambda: mailgun_events(
        mailgun_body(mailgun_failed(), key="another-key"), MAILGUN_KEY, NOW, MAX_AGE))
    for name, value in (("timestamp", str(int(NOW) - 1)), ("token", "u" * 50),
                        ("signature", "0" * 64), ("signature", "é" * 64)):
        forged = {**good, "signature": {**good["signature"], name: value}}
        refused(403, lambda f=forged: mailgun_events(json.dumps(f).encode(), MAILGUN_KEY, NOW,
                                                     MAX_AGE))
    refused(403, lambda: mailgun_events(mailgun_body(mailgun_failed(), key=""), "", NOW,
                                        MAX_AGE))
    for sig in (None, "x", {"timestamp": "1", "token": "t"}, {"token": 5, "signature": "s"}):
        body = json.dumps({**good, "signature": sig}).encode()
        refused(401, lambda b=body: mailgun_events(b, MAILGUN_KEY, NOW, MAX_AGE))
    body = json.dumps({**good, "signature": {**good["signature"], "timestamp": "soon"}}).encode()
    refused(400, lambda: mailgun_events(body, MAILGUN_KEY, NOW, MAX_AGE))


def test_mailgun_replay_window() -> None:
    data = mailgun_failed()
    mailgun_events(mailgun_body(data, at=NOW - MAX_AGE), MAILGUN_KEY, NOW, MAX_AGE)
    for at in (NOW - MAX_AGE - 1, NOW + MAX_AGE + 1):
        assert "window" in refused(403, lambda a=at: mailgun_events(
            mailgun_body(data, at=a), MAILGUN_KEY, NOW, MAX_AGE))


@pytest.mark.parametrize("data", [
    None, [], "failed", {"event": 7}, {"event": "failed", "id": "x", "severity": "permanent"},
    {**mailgun_failed(), "recipient": "nobody"}, {**mailgun_failed(), "id": ""},
    {**mailgun_failed(), "id": None}, {**mailgun_failed(), "delivery-status": "550"},
    {**mailgun_failed(), "message": {"headers": []}},
])
def test_mailgun_malformed_event_data_is_refused_400(data: object) -> None:
    refused(400, lambda: mailgun_events(mailgun_body(data), MAILGUN_KEY, NOW, MAX_AGE))


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"\xff", b"[" * 100_000, b"1e999999"])
def test_mailgun_malformed_json_is_refused_400(body: bytes) -> None:
    refused(400, lambda: mailgun_events(body, MAILGUN_KEY, NOW, MAX_AGE))


# -- Postmark -----------------------------------------------------------------------------

def test_postmark_hard_bounce() -> None:
    assert postmark_events(postmark(), AUTH, PM_USER, PM_PASSWORD) == [ProviderEvent(
        "john@example.com", HARD, "5.1.1", "smtp;550 5.1.1 The email account that you tried to "
        "reach does not exist.", "4323372036854775807", "")]


@pytest.mark.parametrize(("type_", "kind"), [
    ("BadEmailAddress", HARD), ("SoftBounce", SOFT), ("Transient", SOFT), ("DnsError", SOFT),
    ("Blocked", SOFT), ("Unknown", SOFT), ("SpamComplaint", COMPLAINT),
    ("AutoResponder", None), ("Unsubscribe", None), ("Subscribe", None),
    ("ChallengeVerification", None), ("AddressChange", None), ("ManuallyDeactivated", None),
    ("DMARCPolicy", None), ("SMTPApiError", None), ("NotYetInvented", None),
])
def test_postmark_bounce_types(type_: str, kind: str | None) -> None:
    events = postmark_events(postmark(type_=type_, Details=""), AUTH, PM_USER, PM_PASSWORD)
    assert [e.kind for e in events] == ([kind] if kind else [])


def test_postmark_spam_complaint_and_other_records() -> None:
    [event] = postmark_events(postmark("SpamComplaint", "SpamComplaint", ID=42), AUTH, PM_USER,
                              PM_PASSWORD)
    assert (event.kind, event.event_id, event.status) == (COMPLAINT, "42", "")
    for record in ("Delivery", "Open", "Click", "SubscriptionChange"):
        assert postmark_events(postmark(record), AUTH, PM_USER, PM_PASSWORD) == []


@pytest.mark.parametrize("header", [
    "", "Basic", basic(PM_USER, "wrong"), basic("someone", PM_PASSWORD),
    basic(PM_USER, PM_PASSWORD + "x"), f"Bearer {AUTH[6:]}", "Basic !!!!", "Basic " +
    base64.b64encode(b"no colon").decode(), "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
])
def test_postmark_credentials_are_checked_first(header: str) -> None:
    refused(401, lambda: postmark_events(b"not even json", header, PM_USER, PM_PASSWORD))


def test_postmark_unconfigured_refuses_everyone() -> None:
    refused(401, lambda: postmark_events(postmark(), basic("", ""), "", ""))
    assert postmark_events(postmark(), "basic " + AUTH[6:], PM_USER, PM_PASSWORD)  # any case


@pytest.mark.parametrize("body", [
    b"{", b"[]", b"\xff", postmark(Email=None), postmark(Email="not-an-address"),
    postmark(ID=True), postmark(ID=1.5), postmark(ID=""), postmark(Type=["HardBounce"]),
    postmark(RecordType=1), postmark(Email="x" * 400 + "@example.com"),
])
def test_postmark_malformed_is_refused_400(body: bytes) -> None:
    refused(400, lambda: postmark_events(body, AUTH, PM_USER, PM_PASSWORD))


# -- SendGrid -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sendgrid() -> SendGridSigner:
    return SendGridSigner()


def sendgrid_call(signer: SendGridSigner, events: object, *, at: float = NOW,
                  key: str | None = None) -> list[ProviderEvent]:
    body, timestamp = json.dumps(events).encode(), str(int(at))
    return sendgrid_events(body, signer.sign(body, timestamp), timestamp,
                           signer.public_b64 if key is None else key, NOW, MAX_AGE)


def test_sendgrid_event_kinds(sendgrid: SendGridSigner) -> None:
    events = sendgrid_call(sendgrid, [
        sg("processed"), sg("delivered"), sg("open"), sg("click"),
        sg("bounce", 1, type="bounce", status="5.1.1", reason="550 5.1.1 User unknown"),
        sg("bounce", 2, type="blocked", status="4.0.0", reason="blocked by policy"),
        sg("bounce", 3, reason="550 mailbox unavailable"),
        sg("dropped", 4, reason="Bounced Address"), sg("dropped", 5, reason="Invalid"),
        sg("dropped", 6, reason="Unsubscribed Address"),
        sg("dropped", 7, reason="Spam Reporting Address"),
        sg("dropped", 8, reason="Invalid SMTPAPI header"),
        sg("deferred", 9, response="421 4.7.0 try again later", attempt="3"),
        sg("spamreport", 10),
    ])
    assert [(e.recipient, e.kind, e.status) for e in events] == [
        ("user1@example.com", HARD, "5.1.1"), ("user2@example.com", SOFT, "4.0.0"),
        ("user3@example.com", HARD, ""), ("user4@example.com", HARD, ""),
        ("user5@example.com", HARD, ""), ("user7@example.com", COMPLAINT, ""),
        ("user9@example.com", SOFT, "4.7.0"), ("user10@example.com", COMPLAINT, "")]
    assert events[0].event_id == "sg-bounce-1" and events[0].message_id == OUR_ID
    assert events[0].diagnostic == "550 5.1.1 User unknown"


def test_sendgrid_pem_key_accepted(sendgrid: SendGridSigner) -> None:
    assert sendgrid_call(sendgrid, [sg("spamreport")], key=sendgrid.public_pem)


def test_sendgrid_signature_checks(sendgrid: SendGridSigner) -> None:
    body, ts = json.dumps([sg("spamreport")]).encode(), str(int(NOW))
    signature = sendgrid.sign(body, ts)
    key = sendgrid.public_b64
    checks: list[tuple[int, Callable[[], object]]] = [
        (403, lambda: sendgrid_events(body + b" ", signature, ts, key, NOW, MAX_AGE)),
        (403, lambda: sendgrid_events(body.replace(b"User1", b"User2"), signature, ts, key,
                                      NOW, MAX_AGE)),
        (403, lambda: sendgrid_events(body, signature, str(int(NOW) - 1), key, NOW, MAX_AGE)),
        (403, lambda: sendgrid_events(body, signature, ts, SendGridSigner().public_b64, NOW,
                                      MAX_AGE)),
        (403, lambda: sendgrid_events(body, "bm90IGEgc2lnbmF0dXJl", ts, key, NOW, MAX_AGE)),
        (403, lambda: sendgrid_events(body, "%%%", ts, key, NOW, MAX_AGE)),
        (401, lambda: sendgrid_events(body, "", ts, key, NOW, MAX_AGE)),
        (401, lambda: sendgrid_events(body, signature, "", key, NOW, MAX_AGE)),
        (400, lambda: sendgrid_events(body, signature, "12:00", key, NOW, MAX_AGE)),
    ]
    for code, call in checks:
        refused(code, call)


@pytest.mark.parametrize("key", [
    "", "not base64 !", base64.b64encode(b"garbage").decode(),
    base64.b64encode(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode(),
])
def test_sendgrid_unusable_configured_key(sendgrid: SendGridSigner, key: str) -> None:
    assert "key" in refused(403, lambda: sendgrid_call(sendgrid, [sg("spamreport")], key=key))


def test_sendgrid_replay_window(sendgrid: SendGridSigner) -> None:
    assert sendgrid_call(sendgrid, [sg("spamreport")], at=NOW - MAX_AGE)
    for at in (NOW - MAX_AGE - 1, NOW + MAX_AGE + 1):
        refused(403, lambda a=at: sendgrid_call(sendgrid, [sg("spamreport")], at=a))


@pytest.mark.parametrize("events", [
    {"event": "bounce"}, "bounce", [["bounce"]], [sg("bounce", sg_event_id=None)],
    [sg("spamreport", email=None)], [sg("spamreport", email=["a@b.c"])],
    [sg("bounce", type=5)], [sg("spamreport")] * (MAX_EVENTS + 1),
])
def test_sendgrid_malformed_is_refused_400(sendgrid: SendGridSigner, events: object) -> None:
    refused(400, lambda: sendgrid_call(sendgrid, events))


def test_sendgrid_signed_garbage_is_refused_400(sendgrid: SendGridSigner) -> None:
    for body in (b"[", b"\xff\xfe", b"[" * 100_000):
        ts = str(int(NOW))
        refused(400, lambda b=body, t=ts: sendgrid_events(
            b, sendgrid.sign(b, t), t, sendgrid.public_b64, NOW, MAX_AGE))


def test_a_thousand_events_are_fine(sendgrid: SendGridSigner) -> None:
    events = [sg("spamreport", n) for n in range(MAX_EVENTS)]
    assert len(sendgrid_call(sendgrid, events)) == MAX_EVENTS


# -- whatever a verified sender puts in: a value or WebhookRefused, nothing else ---------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["event", "id", "recipient", "severity", "reason", "email", "type",
                         "sg_event_id", "delivery-status", "message", "headers", "code",
                         "emailAddress", "bounceType", "notificationType", "eventType",
                         "bounce", "complaint", "bouncedRecipients", "complainedRecipients",
                         "mail", "commonHeaders", "messageId", "RecordType", "Email", "ID",
                         "Type", "Details", "smtp-id", "status", "diagnosticCode"]),
        inner, max_size=6),
    max_leaves=20)
VALUES = st.one_of(JSON, st.fixed_dictionaries({"event": st.sampled_from(
    ["failed", "complained", "bounce", "dropped", "deferred", "spamreport"]),
    "recipient": st.text(max_size=20), "email": st.text(max_size=20), "id": JSON,
    "sg_event_id": JSON, "severity": JSON, "type": JSON, "reason": JSON}))


def only_refused(call: Callable[[], list[ProviderEvent]]) -> None:
    try:
        events = call()
    except WebhookRefused as exc:
        assert exc.code == 400, exc.reason
        return
    for e in events:
        assert e.kind in (HARD, SOFT, COMPLAINT) and e.event_id and "@" in e.recipient
        assert e.recipient == e.recipient.lower() and len(e.recipient) <= 320
        assert len(e.diagnostic) <= 300 and e.diagnostic.isprintable()


@settings(max_examples=150, deadline=None)
@given(data=VALUES)
def test_fuzz_signed_mailgun_and_sendgrid_and_postmark(data: object) -> None:
    signer = SENDGRID_FUZZ
    only_refused(lambda: mailgun_events(mailgun_body(data), MAILGUN_KEY, NOW, MAX_AGE))
    only_refused(lambda: sendgrid_call(signer, data))
    only_refused(lambda: sendgrid_call(signer, [data]))
    body = json.dumps(data).encode()
    only_refused(lambda: postmark_events(body, AUTH, PM_USER, PM_PASSWORD))


@settings(max_examples=150, deadline=None)
@given(data=VALUES, bounce=JSON)
def test_fuzz_ses_notifications(data: object, bounce: object) -> None:
    only_refused(lambda: ses_events(ses(json.dumps(data))))
    for kind, key, recipients in (("Bounce", "bounce", "bouncedRecipients"),
                                  ("Complaint", "complaint", "complainedRecipients")):
        doc = {"notificationType": kind, key: {recipients: [bounce]}, "mail": data}
        only_refused(lambda d=doc: ses_events(ses(json.dumps(d))))


SENDGRID_FUZZ = SendGridSigner()
