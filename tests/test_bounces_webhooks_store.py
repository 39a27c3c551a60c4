"""Provider webhooks through the whole service (pipeline.web_app over real HTTP) into the store:
each provider's event suppresses the right subscriber once; a replay or a stranger changes
nothing. Signed here as each provider signs (signers in tests/helpers/webhooks.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from webserver import running

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline import sending
from tests.helpers.sending import r, seed
from tests.helpers.webhooks import (
    AUTH,
    PM_PASSWORD,
    PM_USER,
    TOPIC,
    SendGridSigner,
    SnsSigner,
    postmark,
    self_signed,
    ses_bounce,
)


def test_each_provider_suppresses_its_subscriber_once(
        make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    signer = SendGridSigner()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sns = SnsSigner(key, self_signed(key, days=(-400, 400)))  # valid today, too
    # Amazon's certificate host is on the internet: the one boundary served from here.
    monkeypatch.setattr("newsletter.pipeline.sns_fetch.fetch_cert", sns.fetch)
    settings = make_settings(f"""
[mail]
outbox_dir = "{tmp_path / 'outbox'}"
[bounces]
postmark_username = "{PM_USER}"
postmark_password = "{PM_PASSWORD}"
sendgrid_public_key = "{signer.public_b64}"
ses_topic_arns = ["{TOPIC}"]
""")
    store = pipeline.open_store(settings)
    seed(store, 4)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None
    sending.start_sending(settings, store, issue)
    sending.run_worker(settings, store, issue)
    with running(pipeline.web_app(settings, store)) as base, \
            httpx.Client(base_url=base, timeout=30) as http:
        hard = postmark(Email=r(0).upper())
        answer = http.post("/webhooks/postmark", content=hard, headers={"authorization": AUTH})
        assert answer.status_code == 200 and answer.json()["hard"] == 1
        again = http.post("/webhooks/postmark", content=hard, headers={"authorization": AUTH})
        assert again.status_code == 200 and again.json()["duplicates"] == 1
        stranger = http.post("/webhooks/postmark", headers={"authorization": AUTH},
                             content=postmark(Email="stranger@example.org", ID=9))
        assert stranger.json()["not_ours"] == 1
        body = json.dumps([{"email": r(1), "event": "spamreport", "sg_event_id": "sg-1",
                            "timestamp": int(time.time())}]).encode()
        stamp = str(int(time.time()))
        answer = http.post("/webhooks/sendgrid", content=body, headers={
            "x-twilio-email-event-webhook-signature": signer.sign(body, stamp),
            "x-twilio-email-event-webhook-timestamp": stamp})
        assert answer.status_code == 200 and answer.json()["complaints"] == 1
        note = sns.message(message=ses_bounce(recipients=[{
            "emailAddress": r(2), "status": "5.1.1", "action": "failed",
            "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]), at=time.time())
        answer = http.post("/webhooks/ses", content=json.dumps(note))
        assert answer.status_code == 200 and answer.json()["hard"] == 1
        forged = postmark(Email=r(3), ID=10)
        assert http.post("/webhooks/postmark", content=forged,
                         headers={"authorization": "Basic bm9ib2R5Om5vcGU="}).status_code == 401
    # Warned when an event took the issue over a line, not again at every event after it.
    warnings = [m for m in caplog.messages if "bounces.rate_warning" in m]
    assert len([m for m in warnings if "hard-bounce rate 25.00%" in m]) == 1
    assert len([m for m in warnings if "complaint rate 25.00%" in m]) == 1
    assert len(warnings) == 2
    statuses = [store.get_subscriber_by_key(r(i)).status for i in range(4)]
    assert statuses == ["bounced", "complained", "bounced", "active"]
    events = {(e.email, e.kind, e.source, e.issue_number) for e in store.list_bounces()}
    assert events == {(r(0), "hard", "postmark", issue.number),
                      (r(1), "complaint", "sendgrid", issue.number),
                      (r(2), "hard", "ses", issue.number)}
    store.close()
