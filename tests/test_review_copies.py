"""Test copies that show the real thing: [TEST] copies to --to, the seed list, the API and
the dashboard over real SMTP, their draft preview link working over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from smtpserver import Received, SmtpTestServer
from webserver import running

from newsletter import pipeline
from newsletter.cli.common import cli_actor
from newsletter.cli.main import cli
from newsletter.config import Settings
from tests.helpers.admin import csrf_of, login, serve
from tests.helpers.review import (
    DOMAIN,
    EDITORS,
    PREVIEW_LINK,
    SEEDS,
    link,
    local,
    parsed,
    parts,
    review_settings,
)
from tests.helpers.sending import seed
from tests.helpers.signing import verifies


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def check_copy(got: Received, subject: str, key_pem: bytes) -> str:
    """A [TEST] copy: signed, the list fields of a reader's copy, the whole issue, harmless
    generic links; its draft preview link is returned."""
    assert verifies(got.data, key_pem)
    msg = parsed(got)
    assert msg["Subject"] == f"[TEST] {subject}"
    assert f"<https://{DOMAIN}/manage>" in msg["List-Unsubscribe"]
    # A page to visit, not a one-click POST target: a mail client's unsubscribe button
    # would POST to /manage, which unsubscribes nobody (400).
    assert msg["List-Unsubscribe-Post"] is None
    html, text = parts(got)
    assert "World piece" in html and "Economy piece" in text  # both sections: the whole issue
    assert f"Unsubscribe: https://{DOMAIN}/manage" in text
    assert f"https://{DOMAIN}/issues/1\n" not in text and f'href="https://{DOMAIN}/issues/1"' \
        not in html  # the archive's 404 replaced …
    preview = link(text, PREVIEW_LINK)
    assert preview == link(html, PREVIEW_LINK)  # … by the signed preview, in both parts
    return preview


def test_test_copies_carry_the_prefix_and_a_working_preview(
        make_settings: Callable[..., Settings], tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer() as srv:
        # Review mode on: test copies are not sends, they need no approval.
        settings = review_settings(make_settings, tmp_path, srv, key_pem)
        store = pipeline.open_store(settings)
        seed(store, 2)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None
        base = len(EDITORS)  # review mode: the build mailed the editors first
        assert sorted(m.rcpt_tos[0] for m in srv.messages) == sorted(EDITORS)
        args = ["--config", str(settings.path)]
        runner = CliRunner()
        one = runner.invoke(cli, [*args, "issue", "send", "1", "--to", "me@example.org"])
        assert one.exit_code == 0, one.output
        seeds = runner.invoke(cli, [*args, "issue", "send", "1", "--seed"])
        assert seeds.exit_code == 0, seeds.output
        assert [m.rcpt_tos[0] for m in srv.messages[base:]] == ["me@example.org", *SEEDS]
        previews = [check_copy(m, issue.subject, key_pem) for m in srv.messages[base:]]
        bad = runner.invoke(cli, [*args, "issue", "send", "1", "--to", "not-an-address"])
        assert bad.exit_code == 2 and "is not an email address" in bad.output

        with serve(settings, store, tmp_path) as admin:
            answer = admin.api.post("/admin/api/issues/1/test", json={"to": ["api@example.org"]})
            assert answer.status_code == 200, answer.text
            assert [s["to"] for s in answer.json()["sent"]] == ["api@example.org"]
            assert admin.api.post("/admin/api/issues/1/test", json={}).status_code == 200
            assert admin.api.post("/admin/api/issues/1/test",
                                  json={"to": ["x"]}).status_code == 400
            assert admin.api.post("/admin/api/issues/1/test",
                                  json={"to": "a@example.org"}).status_code == 400
            assert admin.anon.post("/admin/api/issues/1/test", json={}).status_code == 401
            with login(admin) as browser:
                page = browser.get("/admin/").text
                done = browser.post("/admin/issues/1/test", data={
                    "csrf": csrf_of(page, "/admin/issues/1/test"), "to": "desk@example.org"})
                assert done.status_code == 303
        assert [m.rcpt_tos[0] for m in srv.messages[base + 3:]] == [
            "api@example.org", *SEEDS, "desk@example.org"]
        previews += [check_copy(m, issue.subject, key_pem) for m in srv.messages[base + 3:]]

        # The preview link of a test copy opens the draft; the archive still 404s without it.
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as web:
            for url in previews[:2]:
                page = web.get(local(url))
                assert page.status_code == 200 and issue.subject in page.text
            assert web.get("/manage").status_code == 200  # List-Unsubscribe's page
            assert web.get("/issues/1").status_code == 404
        # Nothing went to a subscriber; the draft is still a draft.
        assert not any(m.rcpt_tos[0].startswith("reader") for m in srv.messages)
        assert store.get_issue(1).status == "draft"  # type: ignore[union-attr]
        history = [(e.action, e.actor, e.detail) for e in store.issue_history(1)
                   if e.action == "test_send"]
        store.close()
    assert [(a, who) for a, who, _ in history] == [
        ("test_send", cli_actor()), ("test_send", cli_actor()),
        ("test_send", "api 127.0.0.1"), ("test_send", "api 127.0.0.1"),
        ("test_send", "dashboard 127.0.0.1")]
    assert history[1][2] == {"to": list(SEEDS), "failed": []}


def test_a_refused_test_copy_is_reported(make_settings: Callable[..., Settings],
                                         tmp_path: Path, key_pem: bytes) -> None:
    with SmtpTestServer(rcpt_codes={"gone@example.org": 550}) as srv:
        settings = review_settings(make_settings, tmp_path, srv, key_pem, review=False)
        store = pipeline.open_store(settings)
        seed(store, 1)
        assert pipeline.build_issue(settings, store).issue is not None
        with serve(settings, store, tmp_path) as admin:
            answer = admin.api.post("/admin/api/issues/1/test",
                                    json={"to": ["gone@example.org", "here@example.org"]})
        assert answer.status_code == 502
        assert [f["to"] for f in answer.json()["failed"]] == ["gone@example.org"]
        assert [s["to"] for s in answer.json()["sent"]] == ["here@example.org"]
        [event] = [e for e in store.issue_history(1) if e.action == "test_send"]
        assert event.detail == {"to": ["here@example.org"], "failed": ["gone@example.org"]}
        store.close()
