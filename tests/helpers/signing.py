"""DKIM checks on received mail, settings that sign it over SMTP, and the CLI in a subprocess."""

from __future__ import annotations

import email
import email.policy
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dkim
from smtpserver import Received, SmtpTestServer

from newsletter.config import Settings
from newsletter.deliver.dkim import DkimSigner

SELECTOR = "mail2024"
DOMAIN = "ledger.example.org"
LIST_FIELDS = ("list-id", "list-unsubscribe", "list-unsubscribe-post")


def verifies(message: bytes, key_pem: bytes) -> bool:
    """dkimpy's verdict, with <selector>._domainkey.<domain> answered from the key."""
    record = DkimSigner(SELECTOR, DOMAIN, key_pem).public_record().encode("ascii")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode()
        return record

    return bool(dkim.verify(message, dnsfunc=dnsfunc))


def signed_fields(message: bytes) -> list[str]:
    found = re.search(rb"^DKIM-Signature:(.*?)\r\n(?![ \t])", message, re.S | re.M)
    assert found is not None, message[:400]
    h = re.search(r"\bh=([^;]*);", re.sub(r"\s+", "", found[1].decode("ascii")))
    assert h is not None
    return h[1].split(":")


def parsed(message: bytes) -> email.message.EmailMessage:
    got = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(got, email.message.EmailMessage)
    return got


def check_signed(got: Received, key_pem: bytes, *, lists: tuple[str, ...]) -> str:
    """The message verifies, carries Message-ID and Date, exactly the list fields `lists`,
    and signs every one of them; its plain text is returned."""
    assert verifies(got.data, key_pem), got.data[:600]
    msg = parsed(got.data)
    assert msg["Message-ID"] and re.fullmatch(r"<[^<>@\s]+@ledger\.example\.org>",
                                              msg["Message-ID"])
    assert msg["Date"] is not None and msg["Date"].datetime.tzinfo is not None
    present = tuple(f for f in LIST_FIELDS if msg[f] is not None)
    assert present == lists
    if lists:
        assert msg["List-Id"] == "The Ledger <ledger.example.org>"
    assert set(signed_fields(got.data)) >= {"from", "to", "subject", "date", "message-id",
                                            "content-type", *lists}
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


def signed_mail_toml(tmp_path: Path, srv: SmtpTestServer, key_pem: bytes) -> str:
    """The [mail] and [smtp] tables of a config sending to `srv`, DKIM-signed with `key_pem`
    (written to tmp_path/dkim.pem) as SELECTOR of DOMAIN."""
    (tmp_path / "dkim.pem").write_bytes(key_pem)
    return f"""[mail]
transport = "smtp"
from_address = "news@{DOMAIN}"
from_name = "The Ledger"
list_id = "The Ledger <ledger.example.org>"
dkim_key_path = "{tmp_path / 'dkim.pem'}"
dkim_selector = "{SELECTOR}"
[smtp]
host = "{srv.host}"
port = {srv.port}
security = "none"
timeout = 5
"""


def mail_settings(make_settings: Callable[..., Settings], tmp_path: Path, srv: SmtpTestServer,
                  key_pem: bytes) -> Settings:
    return make_settings("\n" + signed_mail_toml(tmp_path, srv, key_pem))


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "newsletter", "--config", str(settings.path),
                           "--log-level", "ERROR", *args], capture_output=True, text=True,
                          timeout=120, check=False)
