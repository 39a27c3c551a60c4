"""Review-mode settings over a real SMTP server, and the links found in a received message."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from smtpserver import Received, SmtpTestServer

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.store.database import Store
from tests.helpers.admin import TOKEN
from tests.helpers.sending import seed
from tests.helpers.signing import DOMAIN, signed_mail_toml

EDITORS = ("editor@ledger.example.org", "second.editor@example.com")
SEEDS = ("seed-gmail@example.net", "seed-outlook@example.com")


def review_settings(make_settings: Callable[..., Settings], tmp_path: Path,
                    srv: SmtpTestServer, key_pem: bytes, *, review: bool = True,
                    database_url: str = "") -> Settings:
    """SMTP to `srv`, DKIM-signed, review mode on (or off), two editors, two seed
    addresses, and the admin token set (as NEWSLETTER_SECRETS_ADMIN_TOKEN would)."""
    editors = ", ".join(f'"{e}"' for e in EDITORS)
    seeds = ", ".join(f'"{s}"' for s in SEEDS)
    settings = make_settings(f"""
[newsletter]
review = {str(review).lower()}
editors = [{editors}]
review_reminder_hours = 24
seed_list = [{seeds}]
""" + signed_mail_toml(tmp_path, srv, key_pem), database_url=database_url)
    return replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))


def new_key_pem() -> bytes:
    """A fresh 2048-bit RSA key for DKIM, as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@contextmanager
def review_store(make_settings: Callable[..., Settings], tmp_path: Path, srv: SmtpTestServer,
                 key_pem: bytes, *, readers: int, review: bool = True,
                 build: bool = True) -> Iterator[tuple[Settings, Store]]:
    """review_settings' service with `readers` subscribers and, with `build`, issue 1 built
    (in review mode: the editors mailed); the store closed afterwards."""
    settings = review_settings(make_settings, tmp_path, srv, key_pem, review=review)
    store = pipeline.open_store(settings)
    try:
        seed(store, readers)
        if build:
            assert pipeline.build_issue(settings, store).issue is not None
        yield settings, store
    finally:
        store.close()


def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """`newsletter --config … ARGS` in this process: exit status, stdout, stderr."""
    result = CliRunner().invoke(cli, ["--config", str(settings.path), *args])
    return result.exit_code, result.stdout, result.stderr


def parsed(got: Received) -> EmailMessage:
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(got: Received) -> tuple[str, str]:
    """(HTML, text) of a received message, decoded."""
    msg = parsed(got)
    html, text = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html is not None and text is not None
    return str(html.get_content()), str(text.get_content())


def link(text: str, pattern: str) -> str:
    """The one distinct URL in `text` matching `pattern` (a regex on the whole URL)."""
    found = {m for m in re.findall(r"https?://[^\s\"'<>]+", text) if re.fullmatch(pattern, m)}
    assert len(found) == 1, (pattern, found)
    return found.pop().replace("&amp;", "&")


def local(url: str) -> str:
    """A mailed absolute link as a path on the test server."""
    parts_ = urlsplit(url)
    assert parts_.netloc == DOMAIN, url
    return parts_.path + (f"?{parts_.query}" if parts_.query else "")


PREVIEW_LINK = rf"https://{re.escape(DOMAIN)}/issues/\d+\?preview=[A-Za-z0-9_-]+"
EDITOR_LINK = rf"https://{re.escape(DOMAIN)}/admin/issues/\d+/edit\?token=[A-Za-z0-9_-]+"
