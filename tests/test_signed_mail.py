"""Every kind of message the service sends is DKIM-signed, with Message-ID, Date, list fields.

Each message is received by a real SMTP server, from the door a person or an operator uses
(the subscribe and manage forms over real HTTP, the command line in a subprocess, a delivery
run), and verified with dkimpy as a receiver would, the key published in a stub DNS.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from smtpserver import Received, SmtpTestServer
from webserver import running

from newsletter import pipeline
from newsletter.audience import subscriptions as subs
from newsletter.config import Settings
from newsletter.deliver.dkim import DkimSigner
from newsletter.deliver.mail import MailIdentity, MessageTemplate, notice_message
from newsletter.pipeline import sending
from newsletter.store.database import Store
from tests.helpers.sending import r, seed
from tests.helpers.signing import (
    DOMAIN,
    LIST_FIELDS,
    SELECTOR,
    check_signed,
    cli,
    mail_settings,
    parsed,
    signed_fields,
    verifies,
)


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def wait_for_mail(srv: SmtpTestServer, count: int = 1, seconds: float = 15) -> list[Received]:
    deadline = time.monotonic() + seconds
    while len(srv.messages) < count:
        assert time.monotonic() < deadline, f"{len(srv.messages)} of {count} messages came"
        time.sleep(0.02)  # polling interval inside a deadline
    return srv.messages


@contextmanager
def website(settings: Settings) -> Iterator[tuple[httpx.Client, Store]]:
    store = pipeline.open_store(settings)
    try:
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as client:
            yield client, store
    finally:
        store.close()


def test_confirmation_from_the_form_is_signed_and_names_its_list_only(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv:
        settings = mail_settings(make_settings, tmp_path, srv, key_pem)
        with website(settings) as (client, _store):
            answer = client.post("/subscribe", data={"email": "ada@example.org", "name": "Ada"})
            assert answer.status_code < 400
            (got,) = wait_for_mail(srv)
    assert got.mail_from == f"news@{DOMAIN}" and got.rcpt_tos == ("ada@example.org",)
    # About one list, to someone not on it: List-Id, nothing to unsubscribe from yet.
    text = check_signed(got, key_pem, lists=("list-id",))
    assert "/confirm?token=" in text and "ignore this" in text
    assert "content-transfer-encoding" in signed_fields(got.data)


def test_confirmation_from_the_command_line_is_signed(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv:
        settings = mail_settings(make_settings, tmp_path, srv, key_pem)
        done = cli(settings, "subscribers", "add", "nell@example.org", "--name", "Nell")
        assert done.returncode == 0, done.stderr
        (got,) = wait_for_mail(srv)
    assert "/confirm?token=" in check_signed(got, key_pem, lists=("list-id",))


def test_preferences_link_is_signed_and_its_one_click_unsubscribe_works(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv:
        settings = mail_settings(make_settings, tmp_path, srv, key_pem)
        with website(settings) as (client, store):
            sub = subs.subscribe(store, "bo@example.org", "Bo", method="admin", ip=None,
                                 user_agent=None, now=datetime.now(UTC),
                                 confirmed=True).subscriber
            assert client.post("/manage", data={"email": "bo@example.org"}).status_code == 202
            (got,) = wait_for_mail(srv)
            text = check_signed(got, key_pem, lists=LIST_FIELDS)
            assert "/preferences?token=" in text
            msg = parsed(got.data)
            assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            https, mailto = re.findall(r"<([^<>]+)>", msg["List-Unsubscribe"])
            assert mailto == f"mailto:news@{DOMAIN}?subject=unsubscribe"
            # What a mail provider's unsubscribe button does (RFC 8058): one POST, no cookie.
            url = urlsplit(https)
            assert https.startswith(settings.site_url + "unsubscribe?token=")
            client.cookies.clear()
            answer = client.post(f"{url.path}?{url.query}",
                                 data={"List-Unsubscribe": "One-Click"})
            assert answer.status_code == 200
            assert store.get_subscriber(sub.id).status == "unsubscribed"  # type: ignore[union-attr]


def test_test_copy_and_every_issue_message_are_signed(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv:
        settings = mail_settings(make_settings, tmp_path, srv, key_pem)
        store = pipeline.open_store(settings)
        try:
            seed(store, 3)
            issue = pipeline.build_issue(settings, store).issue
            assert issue is not None
            done = cli(settings, "issue", "send", str(issue.number), "--to", "editor@example.org")
            assert done.returncode == 0, done.stderr
            (copy,) = wait_for_mail(srv)
            assert copy.rcpt_tos == ("editor@example.org",)
            # List-Unsubscribe names the manage page; no one-click POST is offered for it.
            check_signed(copy, key_pem, lists=("list-id", "list-unsubscribe"))
            sending.start_sending(settings, store, issue)
            assert sending.run_worker(settings, store, issue).sent == 3
            got = wait_for_mail(srv, 4)[1:]
        finally:
            store.close()
    assert sorted(m.rcpt_tos[0] for m in got) == [r(0), r(1), r(2)]
    for message in got:
        check_signed(message, key_pem, lists=LIST_FIELDS)


# -- the builder itself -----------------------------------------------------------------------

IDENTITY = MailIdentity(f"news@{DOMAIN}", "The Ledger", f"editor@{DOMAIN}", DOMAIN,
                        f"unsubscribe@{DOMAIN}", DOMAIN)
NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(("lists", "want"), [
    ("none", ()), ("id", ("list-id",)), ("manage", ("list-id", "list-unsubscribe")),
    ("unsubscribe", LIST_FIELDS)])
def test_one_off_messages_carry_the_list_fields_asked_for_and_are_signed(
        key_pem: bytes, lists: str, want: tuple[str, ...]) -> None:
    signed = replace(IDENTITY, dkim=DkimSigner(SELECTOR, DOMAIN, key_pem))
    raw = notice_message(identity=signed, to_address="zoe@example.org", to_name="Zoë",
                         subject="A notice", text="Hello Zoë,\n\nline two\n\n",
                         message_id=f"<n.1@{DOMAIN}>", date=NOW, list_fields=lists,  # type: ignore[arg-type]
                         unsubscribe_url=f"https://{DOMAIN}/unsubscribe?token=t")
    assert verifies(raw, key_pem)
    msg = parsed(raw)
    assert tuple(f for f in LIST_FIELDS if msg[f] is not None) == want
    assert msg["Reply-To"] == f"editor@{DOMAIN}" and msg["Date"].datetime == NOW
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().replace("\r\n", "\n") == "Hello Zoë,\n\nline two\n\n\n"
    # Without a signer on the identity the same message goes out unsigned, nothing else
    # changes: the signature is the identity's, never something a caller must remember.
    plain = notice_message(identity=IDENTITY, to_address="zoe@example.org", to_name="Zoë",
                           subject="A notice", text="Hello Zoë,\n\nline two\n\n",
                           message_id=f"<n.1@{DOMAIN}>", date=NOW, list_fields=lists,  # type: ignore[arg-type]
                           unsubscribe_url=f"https://{DOMAIN}/unsubscribe?token=t")
    assert raw.endswith(plain) and raw[:len(raw) - len(plain)].startswith(b"DKIM-Signature:")


def test_one_off_text_is_sent_as_written_never_as_placeholders() -> None:
    # A name is part of a notice's text: one spelled like a placeholder stays as it is.
    text = "Hello %%UNSUBSCRIBE_URL%% %%NAME%%,\n"
    msg = parsed(notice_message(identity=IDENTITY, to_address="a@example.org", to_name="",
                                subject="s", text=text, message_id=f"<n.2@{DOMAIN}>",
                                date=NOW))
    assert msg.get_content().replace("\r\n", "\n") == text + "\n"


def test_an_issue_template_without_a_signer_takes_the_identitys(key_pem: bytes) -> None:
    signed = replace(IDENTITY, dkim=DkimSigner(SELECTOR, DOMAIN, key_pem))
    raw = MessageTemplate.build(identity=signed, subject="Issue 1", html="<p>%%NAME%%</p>",
                                text="%%NAME%%").render(
        to_address="a@example.org", to_name="A", message_id=f"<i.1@{DOMAIN}>", date=NOW,
        unsubscribe_url=f"https://{DOMAIN}/u?t=1", preferences_url=f"https://{DOMAIN}/p")
    assert raw.startswith(b"DKIM-Signature:") and verifies(raw, key_pem)
