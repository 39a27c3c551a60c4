"""DkimSigner: signatures dkimpy verifies, canonicalisation equal to dkimpy's, tamper detection."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.config import Mail
from newsletter.deliver.dkim import DkimSigner, relaxed_body, relaxed_header, signer_from_settings
from newsletter.deliver.headers import message_id
from newsletter.deliver.mail import MailIdentity, MessageTemplate
from newsletter.deliver.smtp import SmtpPool
from newsletter.errors import ConfigError
from tests.smtpserver import SmtpTestServer

IDENTITY = MailIdentity("news@ledger.example.org", "The Ledger", "editor@ledger.example.org",
                        "ledger.example.org", "unsubscribe@ledger.example.org",
                        "ledger.example.org")


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def signer() -> DkimSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return DkimSigner("mail2024", "ledger.example.org", pem(key))


def verify(message: bytes, signer: DkimSigner) -> bool:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{signer.selector}._domainkey.{signer.domain}.".encode()
        return signer.public_record().encode("ascii")

    return bool(dkim.verify(message, dnsfunc=dnsfunc))


def rendered(signer: DkimSigner, subject: str = "The Ledger — 3 June",
             to_name: str = "Zoë Reader") -> bytes:
    template = MessageTemplate.build(
        identity=IDENTITY, subject=subject, dkim=signer,
        html="<p>Hello %%NAME%%</p>" + "<p>Ports  and\ttariffs, é.</p>\n" * 2000
        + '<a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a>\n',
        text="Hello %%NAME%%\n\nUnsubscribe: %%UNSUBSCRIBE_URL%%\n")
    return template.render(to_address="reader@example.com", to_name=to_name,
                           message_id=message_id(3, 41, "ledger.example.org"),
                           unsubscribe_url="https://ledger.example.org/u/" + "t0k" * 30,
                           preferences_url="https://ledger.example.org/p/abc",
                           date=datetime(2024, 6, 3, tzinfo=UTC))


def tags(message: bytes) -> dict[str, str]:
    field = re.search(rb"^DKIM-Signature:(.*?)\r\n(?![ \t])", message, re.S | re.M)
    assert field is not None
    value = re.sub(r"\s+", "", field[1].decode("ascii"))
    return dict(t.split("=", 1) for t in value.split(";") if t)


def test_rendered_message_verifies_with_dkimpy(signer: DkimSigner) -> None:
    raw = rendered(signer)
    assert raw.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert verify(raw, signer)
    t = tags(raw)
    assert (t["d"], t["s"], t["a"], t["c"]) == ("ledger.example.org", "mail2024", "rsa-sha256",
                                                "relaxed/relaxed")
    signed = t["h"].split(":")
    assert {"list-unsubscribe", "list-unsubscribe-post", "from", "to", "subject", "date",
            "message-id", "reply-to", "list-id", "mime-version", "content-type"} == set(signed)
    head = raw.partition(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")[:9])


@pytest.mark.parametrize(("old", "new"), [
    (b"Subject: ", b"Subject: Re: "),
    (b"List-Unsubscribe: <https://ledger.", b"List-Unsubscribe: <https://evil."),
    (b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x=y"),
    (b"Zo=C3=AB=20Reader", b"Zo=C3=AC=20Reader"),
    (b"https://ledger=2Eexample=2Eorg/u/", b"https://evil=2Eexample=2Eorg/u/"),
])
def test_tampering_breaks_the_signature(signer: DkimSigner, old: bytes, new: bytes) -> None:
    raw = rendered(signer)
    assert old in raw
    assert not verify(raw.replace(old, new, 1), signer)


def test_refolding_and_trailing_lines_survive(signer: DkimSigner) -> None:
    """What relaxed canonicalisation is for: relays that re-fold headers or pad bodies."""
    raw = rendered(signer)
    head, _, body = raw.partition(b"\r\n\r\n")
    head = head.replace(b"Subject: ", b"Subject:   \r\n\t")
    assert verify(head + b"\r\n\r\n" + body + b"\r\n\r\n", signer)


def test_sign_a_whole_message_with_untidy_whitespace(signer: DkimSigner) -> None:
    message = (b"From: A <a@ledger.example.org>\r\nTo: b@example.com\r\n"
               b"Subject:  folded \t subject \r\n\t continued  \r\nX-Other: 1\r\n\r\n"
               b"line with trailing space  \r\n\ttabbed\t\tline\r\n\r\n\r\n")
    signed = signer.sign(message) + message
    assert verify(signed, signer)
    assert tags(signed)["h"] == "from:to:subject"


def test_signed_message_still_verifies_after_smtp(signer: DkimSigner) -> None:
    raw = rendered(signer)

    async def send() -> None:
        conn = await SmtpPool([(srv.host, srv.port)], security="none",
                              local_hostname="client.test").connect()
        try:
            assert (await conn.send("b@ledger.example.org", "reader@example.com", raw)).status \
                == "sent"
        finally:
            await conn.close()

    with SmtpTestServer() as srv:
        asyncio.run(send())
        (got,) = srv.messages
    assert verify(got.data, signer)


_BODY = st.lists(st.text(alphabet=" \ta.\u00e9", max_size=12), max_size=8).map(
    lambda lines: "".join(line + "\r\n" for line in lines).encode("utf-8"))


@settings(max_examples=300, deadline=None, database=None)
@given(_BODY)
def test_relaxed_body_equals_dkimpy(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet="Ab: \t", min_size=1, max_size=20),
       st.lists(st.text(alphabet=" \tx,", max_size=10), max_size=3))
def test_relaxed_header_equals_dkimpy(name: str, lines: list[str]) -> None:
    name = name.replace(":", "") or "X"
    value = "\r\n ".join(lines)
    raw = f"{name}:{value}\r\n".encode()
    ((want_name, want_value),) = Relaxed.canonicalize_headers([(name.encode(), value.encode())])
    assert relaxed_header(raw) == want_name + b":" + want_value


def test_bad_keys_and_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RSA"):
        DkimSigner("s", "example.org", pem(ec.generate_private_key(ec.SECP256R1())))
    key = pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ValueError, match="From"):
        DkimSigner("s", "example.org", key, headers=("subject",))
    with pytest.raises(ValueError):
        DkimSigner("bad selector", "example.org", key)
    assert signer_from_settings(Mail()) is None
    with pytest.raises(ConfigError, match="missing.pem"):
        signer_from_settings(Mail(dkim_key_path=str(tmp_path / "missing.pem"), dkim_selector="s"))
    with pytest.raises(ConfigError, match="dkim_selector"):
        signer_from_settings(Mail(dkim_key_path=str(tmp_path / "k.pem")))
    (tmp_path / "k.pem").write_bytes(key)
    signer = signer_from_settings(Mail(from_address="n@ledger.example.org",
                                       dkim_key_path=str(tmp_path / "k.pem"), dkim_selector="s"))
    assert signer is not None and signer.domain == "ledger.example.org"
    assert signer.public_record().startswith("v=DKIM1; k=rsa; p=MI")
