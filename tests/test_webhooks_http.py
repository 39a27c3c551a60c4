"""The webhook routes over real HTTP (uvicorn): accepted, refused, unconfigured, too large, GET.

`ingest` is a stub that records what it is given (the store side has its own tests); every
request is signed the way its provider signs, with the signers in tests/helpers/webhooks.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from webserver import running

from newsletter.audience.bounces import COMPLAINT, HARD
from newsletter.audience.webhooks import ProviderEvent
from newsletter.web import create_app
from newsletter.web.webhooks import (
    SENDGRID_SIGNATURE,
    SENDGRID_TIMESTAMP,
    WebhookDeps,
    webhook_routes,
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
    mailgun_body,
    mailgun_failed,
    postmark,
    self_signed,
    ses_bounce,
    sg,
)

PATHS = ("/webhooks/ses", "/webhooks/mailgun", "/webhooks/postmark", "/webhooks/sendgrid")


@dataclass
class Recorder:
    """The deps' callables: what was ingested and confirmed, and a switch to fail."""

    calls: list[tuple[str, list[ProviderEvent]]] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)
    failing: bool = False

    def ingest(self, source: str, events: list[ProviderEvent]) -> dict[str, int]:
        if self.failing:
            raise RuntimeError("database is locked")
        self.calls.append((source, events))
        return {"hard": sum(e.kind == HARD for e in events),
                "complaints": sum(e.kind == COMPLAINT for e in events)}

    def confirm(self, url: str) -> None:
        if self.failing:
            raise OSError("network unreachable")
        self.confirmed.append(url)


@dataclass
class Site:
    http: httpx.Client
    rec: Recorder
    sns: SnsSigner
    sendgrid: SendGridSigner

    def post_sns(self, doc: dict[str, Any]) -> httpx.Response:
        return self.http.post("/webhooks/ses", content=json.dumps(doc),
                              headers={"x-amz-sns-message-type": doc["Type"],
                                       "content-type": "text/plain; charset=UTF-8"})

    def post_sendgrid(self, events: list[dict[str, Any]], *, at: float = NOW) -> httpx.Response:
        body, ts = json.dumps(events).encode(), str(int(at))
        return self.http.post("/webhooks/sendgrid", content=body, headers={
            SENDGRID_SIGNATURE: self.sendgrid.sign(body, ts), SENDGRID_TIMESTAMP: ts,
            "content-type": "application/json"})


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@contextmanager
def serve(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, **overrides: Any) -> Iterator[Site]:
    rec, signer, sendgrid = Recorder(), SnsSigner(rsa_key, self_signed(rsa_key)), SendGridSigner()
    values: dict[str, Any] = {
        "ingest": rec.ingest, "confirm_sns_subscription": rec.confirm,
        "fetch_cert": signer.fetch, "ses_topic_arns": (TOPIC,),
        "mailgun_signing_key": MAILGUN_KEY, "postmark_username": PM_USER,
        "postmark_password": PM_PASSWORD, "sendgrid_public_key": sendgrid.public_b64,
        "now": lambda: NOW}
    values.update(overrides)
    app = create_app(feeds_dir=tmp_path / "feeds", publication_name="Test",
                     feeds_url="http://127.0.0.1/feeds/",
                     extra_routes=webhook_routes(WebhookDeps(**values)))
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        yield Site(http, rec, signer, sendgrid)


@pytest.fixture
def site(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Iterator[Site]:
    with serve(tmp_path, rsa_key) as s:
        yield s


def test_each_provider_is_accepted_and_ingested(site: Site) -> None:
    notification = site.sns.message(message=ses_bounce(commonHeaders={"messageId": OUR_ID}))
    r = site.post_sns(notification)
    assert r.status_code == 200 and r.json() == {"events": 1, "hard": 1, "complaints": 0}
    assert r.headers["cache-control"] == "no-store"
    r = site.http.post("/webhooks/mailgun", content=mailgun_body(mailgun_failed()),
                       headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["hard"] == 1
    r = site.http.post("/webhooks/postmark", content=postmark("SpamComplaint", "SpamComplaint"),
                       headers={"authorization": AUTH})
    assert r.status_code == 200 and r.json()["complaints"] == 1
    r = site.post_sendgrid([sg("delivered"), sg("bounce", 2, type="bounce"), sg("spamreport")])
    assert r.status_code == 200 and r.json() == {"events": 2, "hard": 1, "complaints": 1}
    assert [(source, [e.recipient for e in events]) for source, events in site.rec.calls] == [
        ("ses", ["jane@example.com"]), ("mailgun", ["alice@example.com"]),
        ("postmark", ["john@example.com"]),
        ("sendgrid", ["user2@example.com", "user1@example.com"])]
    assert site.rec.calls[0][1][0].message_id == OUR_ID


def test_refusals_answer_their_code_log_and_ingest_nothing(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="newsletter")
    cases = [
        (site.post_sns(site.sns.message(topic="arn:aws:sns:us-east-1:1:other")), 403, "ses"),
        (site.post_sns({**site.sns.message(), "Message": "tampered"}), 403, "ses"),
        (site.post_sns(site.sns.message(cert_url="https://evil.example/sns.pem")), 403, "ses"),
        (site.http.post("/webhooks/ses", content=b"{"), 400, "ses"),
        (site.http.post("/webhooks/mailgun", content=mailgun_body(mailgun_failed(),
                                                                   key="wrong")), 403, "mailgun"),
        (site.http.post("/webhooks/mailgun", content=mailgun_body(
            mailgun_failed(), at=NOW - 601)), 403, "mailgun"),
        (site.http.post("/webhooks/postmark", content=postmark(),
                        headers={"authorization": basic(PM_USER, "guess")}), 401, "postmark"),
        (site.http.post("/webhooks/postmark", content=postmark()), 401, "postmark"),
        (site.post_sendgrid([sg("spamreport")], at=NOW - 3600), 403, "sendgrid"),
        (site.http.post("/webhooks/sendgrid", content=b"[]"), 401, "sendgrid"),
    ]
    for response, code, provider in cases:
        assert response.status_code == code, (provider, response.text)
        assert response.json()["error"]
        assert f"webhook.refused provider={provider}" in caplog.text
    assert site.rec.calls == []
    assert site.sns.fetched == [CERT_URL]  # for the tampered message only: the others failed first
    assert "ip=127.0.0.1" in caplog.text
    for secret in (MAILGUN_KEY, PM_PASSWORD, "guess", "tampered"):
        assert secret not in caplog.text


def test_unconfigured_providers_answer_404(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    with serve(tmp_path, rsa_key, ses_topic_arns=(), mailgun_signing_key="",
               postmark_username="", postmark_password="", sendgrid_public_key="") as s:
        for path in PATHS:
            r = s.http.post(path, content=b"{}", headers={"authorization": AUTH})
            assert r.status_code == 404 and "not configured" in r.json()["error"], path
        assert s.rec.calls == [] and s.sns.fetched == []
    with serve(tmp_path, rsa_key, postmark_password="") as s:  # a user without a password
        assert s.http.post("/webhooks/postmark", content=postmark(),
                           headers={"authorization": basic(PM_USER, "")}).status_code == 404


def test_bodies_over_the_cap_get_413(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    with serve(tmp_path, rsa_key, max_body_bytes=2_000) as s:
        big = mailgun_body({**mailgun_failed(), "padding": "x" * 3_000})
        for path in PATHS:
            assert s.http.post(path, content=big, headers={"authorization": AUTH}
                               ).status_code == 413, path

            def chunks(body: bytes = big) -> Iterator[bytes]:  # no Content-Length: counted
                yield from (body[i:i + 500] for i in range(0, len(body), 500))

            assert s.http.post(path, content=chunks(), headers={"authorization": AUTH}
                               ).status_code == 413, path
        assert s.rec.calls == []
        assert s.http.post("/webhooks/mailgun", content=mailgun_body(mailgun_failed())
                           ).status_code == 200


def test_other_methods_change_nothing(site: Site) -> None:
    for path in PATHS:
        for method in ("GET", "HEAD", "PUT", "DELETE"):
            r = site.http.request(method, path, content=mailgun_body(mailgun_failed()))
            assert r.status_code == 405, (method, path)
    assert site.rec.calls == [] and site.rec.confirmed == []


def test_sns_subscription_is_confirmed_after_verification(site: Site,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="newsletter")
    doc = site.sns.message("SubscriptionConfirmation", "You have chosen to subscribe.")
    r = site.post_sns(doc)
    assert r.status_code == 200 and site.rec.confirmed == [doc["SubscribeURL"]]
    # Signed and from our topic, but pointing somewhere else: not visited.
    elsewhere = site.sns.message("SubscriptionConfirmation", "x",
                                 SubscribeURL="https://evil.example/?Action=ConfirmSubscription")
    assert site.post_sns(elsewhere).status_code == 403
    forged = {**doc, "SubscribeURL": doc["SubscribeURL"] + "&more=1"}  # changed after signing
    assert site.post_sns(forged).status_code == 403
    other_topic = site.sns.message("SubscriptionConfirmation", "x", topic=TOPIC + "-other")
    assert site.post_sns(other_topic).status_code == 403
    assert site.rec.confirmed == [doc["SubscribeURL"]]
    r = site.post_sns(site.sns.message("UnsubscribeConfirmation", "You have unsubscribed."))
    assert r.status_code == 200 and "webhook.sns_unsubscribed" in caplog.text
    assert site.rec.confirmed == [doc["SubscribeURL"]] and site.rec.calls == []
    # One certificate URL, fetched once: later messages use the cache.
    assert site.sns.fetched == [site.sns.fetched[0]]


def test_mailgun_token_seen_again_is_not_ingested_again(site: Site) -> None:
    body = mailgun_body(mailgun_failed())
    assert site.http.post("/webhooks/mailgun", content=body).json()["hard"] == 1
    r = site.http.post("/webhooks/mailgun", content=body)
    assert r.status_code == 200 and r.json() == {"events": 0, "replayed": 1}
    assert len(site.rec.calls) == 1


def test_a_failing_ingest_answers_503_and_the_retry_succeeds(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    site.rec.failing = True
    body = mailgun_body(mailgun_failed())
    assert site.http.post("/webhooks/mailgun", content=body).status_code == 503
    confirmation = site.sns.message("SubscriptionConfirmation", "x")
    assert site.post_sns(confirmation).status_code == 503
    assert "webhook.ingest_failed" in caplog.text and "sns_confirm_failed" in caplog.text
    site.rec.failing = False
    assert site.http.post("/webhooks/mailgun", content=body).status_code == 200
    assert site.post_sns(confirmation).status_code == 200
    assert len(site.rec.calls) == 1 and len(site.rec.confirmed) == 1


def test_events_that_are_not_bounces_touch_nothing(site: Site) -> None:
    r = site.http.post("/webhooks/mailgun", content=mailgun_body(
        {"event": "delivered", "id": "d", "recipient": "a@example.com"}))
    assert r.status_code == 200 and r.json() == {"events": 0}
    r = site.post_sns(site.sns.message(message=json.dumps({"notificationType": "Delivery"})))
    assert r.status_code == 200 and r.json() == {"events": 0}
    assert site.rec.calls == []


def test_sendgrid_accepts_the_pem_form_of_its_key(tmp_path: Path,
                                                  rsa_key: rsa.RSAPrivateKey) -> None:
    signer = SendGridSigner()
    with serve(tmp_path, rsa_key, sendgrid_public_key=signer.public_pem) as s:
        s.sendgrid = signer
        assert s.post_sendgrid([sg("spamreport")]).status_code == 200
        assert len(s.rec.calls) == 1
