"""Hardening, subscribers: hostile addresses, names and CSV files through the real entry points.

The full web app (pipeline.web_app) on uvicorn, the `newsletter` CLI in-process, and the
outbox transport, so the confirmation mails and issues people would get are checked as
bytes. Rule-level tests are in test_subscribers.py, test_subscribers_csv.py and
test_web_subscribe.py.
"""

from __future__ import annotations

import csv
import email
import email.policy
import io
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from webserver import running

from newsletter import pipeline
from newsletter.audience.subscribers_csv import import_csv
from newsletter.audience.subscriptions import SMTPUTF8_REFUSED
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.pipeline import sending
from newsletter.store.database import Store
from newsletter.store.database import Store as SubscriberStore

BAD_ADDRESSES = [
    ("a@@b", "invalid characters"),
    ("alice@example.org.", "period"),
    ("x" * 250 + "@example.org", "254"),
    ("alice@example.org)<bob@example.org>", "invalid characters"),
    ("alice@example.org\r\nBcc: eve@example.org", "line breaks"),
]


@dataclass
class Site:
    settings: Settings
    store: Store
    client: httpx.Client
    outbox: Path

    def mails(self, n: int | None = None, timeout: float = 5) -> list[email.message.EmailMessage]:
        """The outbox's messages, oldest first; with `n`, poll until there are that many."""
        deadline = time.monotonic() + timeout
        while n is not None and len(list(self.outbox.glob("*.eml"))) < n:
            assert time.monotonic() < deadline, "confirmation mail did not arrive"
            time.sleep(0.02)
        # Decoded first: SMTPUTF8 messages carry UTF-8 in their headers.
        return [email.message_from_string(p.read_bytes().decode("utf-8"),
                                          policy=email.policy.default)
                for p in sorted(self.outbox.glob("*.eml"))]

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["--config", str(self.settings.path), *args])


@pytest.fixture
def make_site(make_settings: Callable[..., Settings], tmp_path: Path) -> Callable[..., object]:
    @contextmanager
    def make(extra: str = "") -> Iterator[Site]:
        settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n'
                                 f"{extra}\n[subscriptions]\nrate_per_ip = 1000\n")
        store = pipeline.open_store(settings)
        try:
            with running(pipeline.web_app(settings, store)) as base, \
                    httpx.Client(base_url=base, timeout=10) as client:
                yield Site(settings, store, client, tmp_path / "outbox")
        finally:
            store.close()

    return make


def test_malformed_addresses_are_refused_with_a_reason_at_every_door(
        make_site: Callable[..., object], tmp_path: Path) -> None:
    with make_site() as site:  # type: ignore[attr-defined]
        for address, why in BAD_ADDRESSES:
            r = site.client.post("/subscribe", json={"email": address})
            assert r.status_code == 400 and why in r.json()["error"], address
            page = site.client.post("/subscribe", data={"email": address, "name": "<b>n</b>"})
            assert page.status_code == 400 and "<b>n</b>" not in page.text
            assert "<bob@" not in page.text  # the address is shown escaped, never as markup
            res = site.cli("subscribers", "add", address)
            assert res.exit_code == 2 and res.stdout == ""
            assert res.stderr.count("\n") == 1 and why in res.stderr, res.stderr
            assert res.stderr.startswith("error: " + repr(address)[:20])
        rows = "".join(f'"{a}",x\n' for a, _ in BAD_ADDRESSES)
        (tmp_path / "in.csv").write_text("email,name\ngood@example.org,G\n" + rows, "utf-8")
        res = site.cli("subscribers", "import", str(tmp_path / "in.csv"))
        assert res.exit_code == 1 and "1 added" in res.stdout and "5 invalid" in res.stdout
        errors = [e for e in res.stderr.splitlines() if e.startswith(str(tmp_path))]
        # The quoted CR LF makes the last record two lines long; its number is where it starts.
        assert [int(e.split(":")[1]) for e in errors] == [3, 4, 5, 6, 7]
        assert all(why in e for e, (_, why) in zip(errors, BAD_ADDRESSES, strict=True))
        assert [s.email for s in site.store.list_subscribers()] == ["good@example.org"]
        assert site.mails() == []


def test_internationalised_addresses_need_smtputf8(make_site: Callable[..., object],
                                                   tmp_path: Path) -> None:
    with make_site() as site:  # type: ignore[attr-defined]
        r = site.client.post("/subscribe", json={"email": "jürgen@example.org"})
        assert (r.status_code, r.json()["error"]) == (400, SMTPUTF8_REFUSED)
        res = site.cli("subscribers", "add", "jürgen@example.org")
        assert res.exit_code == 2 and SMTPUTF8_REFUSED in res.stderr
        # A Unicode domain alone needs no SMTPUTF8: it travels as punycode.
        assert site.client.post("/subscribe", json={"email": "anna@bücher.example"}
                                ).status_code == 202
        assert site.mails(1)[0]["To"].addresses[0].addr_spec == "anna@xn--bcher-kva.example"
        assert site.store.get_subscriber_by_key("jürgen@example.org") is None
    with make_site("smtputf8 = true") as site:  # type: ignore[attr-defined]
        assert site.client.post("/subscribe", json={"email": "jürgen@example.org"}
                                ).status_code == 202
        sub = site.store.get_subscriber_by_key("jürgen@example.org")
        assert sub is not None and sub.email == "jürgen@example.org"
        mail = [m for m in site.mails(2) if "jürgen" in str(m["To"])]
        assert mail[0]["To"].addresses[0].addr_spec == "jürgen@example.org"


def test_duplicates_by_case_are_one_person_with_one_mail(make_site: Callable[..., object],
                                                         tmp_path: Path) -> None:
    with make_site() as site:  # type: ignore[attr-defined]
        for spelling in ("Ann@Example.org", "ANN@EXAMPLE.ORG", "ann@example.org"):
            assert site.client.post("/subscribe", data={"email": spelling}).status_code == 202
        res = site.cli("subscribers", "add", "aNN@example.ORG")
        assert res.exit_code == 0 and "already pending" in res.stdout
        (tmp_path / "dup.csv").write_text("email\nANN@example.org\nann@EXAMPLE.org\n", "utf-8")
        assert site.cli("subscribers", "import", str(tmp_path / "dup.csv")).exit_code == 0
        assert [s.email for s in site.store.list_subscribers()] == ["Ann@example.org"]
        assert len(site.mails(1)) == 1  # the resend window: one confirmation, not three


def test_hostile_names_are_stored_clean_and_escaped_in_pages_and_mails(
        make_site: Callable[..., object]) -> None:
    name = "Eve\r\nBcc: x@example.org <b>bold</b> \u202egro.live\x1b[31m"
    clean = "Eve Bcc: x@example.org <b>bold</b> gro.live [31m"  # bidi gone, ESC a space
    with make_site() as site:  # type: ignore[attr-defined]
        assert site.client.post("/subscribe", data={"email": "eve@example.org", "name": name}
                                ).status_code == 202
        sub = site.store.get_subscriber_by_key("eve@example.org")
        assert sub is not None and sub.name == clean
        [confirm] = site.mails(1)
        # The hostile name added no header: exactly the builder's own, List-Id included.
        assert confirm.keys() == ["From", "To", "Subject", "Date", "Message-ID", "List-Id",
                                  "MIME-Version", "Content-Type", "Content-Transfer-Encoding"]
        assert confirm["To"].addresses[0].display_name == clean
        body = confirm.get_content().replace("\r\n", "\n")
        assert body.startswith(f"Hello {clean},\n")
        link = re.search(r"https://ledger\.example\.org(/confirm\?token=\S+)", body)
        assert link is not None
        assert "You are subscribed" in site.client.post(link.group(1)).text  # the button
        listed = site.cli("subscribers", "list")
        assert clean in listed.stdout and "\x1b" not in listed.stdout

        when = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        Path(site.settings.sources[0].path, "a.md").write_text(
            f"---\ntitle: A piece\ndate: {when}\n---\nText.\n", "utf-8")
        pipeline.collect(site.settings, site.store)
        issue = pipeline.build_issue(site.settings, site.store).issue
        assert issue is not None
        sending.start_sending(site.settings, site.store, issue)
        sending.run_worker(site.settings, site.store, issue)
        letter = site.mails(2)[-1]
        assert letter["To"].addresses[0].display_name == clean
        assert letter.get_all("Bcc") is None and len(letter.get_all("To")) == 1
        html = letter.get_body(("html",)).get_content()
        text = letter.get_body(("plain",)).get_content()
        assert "Hello Eve Bcc: x@example.org &lt;b&gt;bold&lt;/b&gt;" in html
        assert "<b>bold</b>" not in html
        assert f"Hello {clean}," in text.splitlines()


def test_csv_bom_semicolons_quoted_newlines_and_formulas_round_trip(
        make_site: Callable[..., object], tmp_path: Path) -> None:
    source = ("\ufeffEmail;Name;Sections\r\n"
              'ann@example.org;"Ann; the\r\nsecond line";World|Tech\r\n'
              '=cmd@example.org;"=HYPERLINK(""http://evil.example"",""x"")";\r\n'
              "'+1@example.org;@SUM(A1);\r\n"
              "-x@example.org;\t=tab;\r\n")
    (tmp_path / "in.csv").write_text(source, "utf-8")
    with make_site() as site:  # type: ignore[attr-defined]
        res = site.cli("subscribers", "import", str(tmp_path / "in.csv"))
        assert res.exit_code == 0 and "4 added" in res.stdout, res.output
        names = {s.email: s.name for s in site.store.list_subscribers()}
        assert names == {"ann@example.org": "Ann; the second line",
                         "=cmd@example.org": '=HYPERLINK("http://evil.example","x")',
                         "+1@example.org": "@SUM(A1)", "-x@example.org": "=tab"}
        out = tmp_path / "out.csv"
        assert site.cli("subscribers", "export", "-o", str(out)).exit_code == 0
        rows = list(csv.reader(io.StringIO(out.read_text("utf-8"))))
        for row in rows[1:]:
            for cell in row:  # a spreadsheet shows every one of these as text
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
        assert {r[0] for r in rows[1:]} == {"ann@example.org", "'=cmd@example.org",
                                            "'+1@example.org", "'-x@example.org"}
        # Exported, then imported elsewhere, the same people and names come back.
        other = site.settings.storage.database_url.replace("n.db", "other.db")
        copy = SubscriberStore(other)
        try:
            import_csv(copy, out, now=datetime.now(UTC))
            assert {s.email: s.name for s in copy.list_subscribers()} == names
        finally:
            copy.close()
