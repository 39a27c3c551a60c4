"""The welcome: one signed mail per confirmation by the person, with links that work.

The full app as `newsletter serve` wires it, on uvicorn over real HTTP, sending to a real SMTP
server; each welcome is verified with dkimpy as a receiver would, and every link in it is
followed as the person (and their mail provider's unsubscribe button) would.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from smtpserver import Received, SmtpTestServer
from webserver import running

from newsletter import pipeline
from newsletter.config import Settings, load_settings
from newsletter.pipeline import control, sending
from newsletter.pipeline import review as review_
from newsletter.pipeline.rhythm import WHENEVER, issue_rhythm, prepared_rhythm
from newsletter.store.database import Store
from newsletter.words import friendly_time
from tests.helpers.sending import seed
from tests.helpers.signing import LIST_FIELDS, check_signed, cli, mail_settings, parsed

ADMIN_TOKEN = "welcome-test-admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class World:
    settings: Settings
    store: Store
    srv: SmtpTestServer
    client: httpx.Client
    key_pem: bytes
    confirm_token: str = ""

    def local(self, url: str) -> str:
        """A link built on the public base URL, as a path to fetch from the test server."""
        assert url.startswith(self.settings.site_url), url
        parts = urlsplit(url)
        return f"{parts.path}?{parts.query}" if parts.query else parts.path

    def mail(self, count: int, seconds: float = 15) -> list[Received]:
        """The first `count` messages the SMTP server received, once they all have come."""
        deadline = time.monotonic() + seconds
        while len(self.srv.messages) < count:
            assert time.monotonic() < deadline, f"{len(self.srv.messages)} of {count} came"
            time.sleep(0.02)  # polling inside a deadline: mail goes out after the response
        return self.srv.messages[:count]

    def subscribe_and_confirm(self, address: str, name: str = "") -> httpx.Response:
        """The person's way in: the form, the link in the confirmation mail, the button."""
        before = len(self.srv.messages)
        assert self.client.post("/subscribe", data={"email": address,
                                                    "name": name}).status_code == 202
        confirmation = self.mail(before + 1)[before]
        assert subject(confirmation).startswith("Confirm your subscription")
        link = re.search(r"https://\S+/confirm\?token=\S+", body(confirmation))
        assert link is not None
        page = self.client.get(self.local(link[0]))
        token = re.search(r'name="token" value="([^"]+)"', page.text)
        assert token is not None
        self.confirm_token = html.unescape(token[1])
        return self.client.post("/confirm", data={"token": self.confirm_token})

    def welcomes(self) -> list[Received]:
        return [m for m in self.srv.messages if subject(m).startswith("Welcome")]

    def barrier(self) -> None:
        """A mail asked for after everything before it: once it is in, a welcome that was
        going to go out has had a full request and SMTP round trip to arrive ahead of it."""
        count = len(self.srv.messages)
        assert self.client.post("/subscribe", data={"email": f"barrier{count}@example.org"}
                                ).status_code == 202
        self.mail(count + 1)
        time.sleep(0.2)  # and a little longer, for a slow background task


MakeWorld = Callable[..., AbstractContextManager[World]]


def subject(message: Received) -> str:
    return str(parsed(message.data)["Subject"])


def body(message: Received) -> str:
    text = parsed(message.data).get_body(preferencelist=("plain",))
    assert text is not None
    return str(text.get_content())


def with_toml(settings: Settings, extra: str) -> Settings:
    """The same configuration file with more sections, loaded again."""
    settings.path.write_text(settings.path.read_text("utf-8") + extra, "utf-8")
    return load_settings(settings.path, environ={})


@pytest.fixture
def make_world(make_settings: Callable[..., Settings], tmp_path: Path,
               key_pem: bytes) -> MakeWorld:
    @contextmanager
    def make(extra: str = "", description: str = "") -> Iterator[World]:
        with SmtpTestServer() as srv:
            settings = with_toml(mail_settings(make_settings, tmp_path, srv, key_pem), extra)
            # [publication] is written by make_settings; the description is set here.
            settings = replace(settings, publication=replace(settings.publication,
                                                             description=description))
            store = pipeline.open_store(settings)
            try:
                with running(pipeline.web_app(settings, store)) as base, \
                        httpx.Client(base_url=base, timeout=30) as client:
                    yield World(settings, store, srv, client, key_pem)
            finally:
                store.close()

    return make


def test_a_confirmed_subscriber_gets_one_signed_welcome_with_working_links(
        make_world: MakeWorld) -> None:
    with make_world('[schedule]\nissue_cron = "0 7 * * mon"\n',
                    description="Policy news for the people who make it.") as w:
        seed(w.store, 2)  # two readers, and articles in the sections Economy and World
        issue = pipeline.build_issue(w.settings, w.store).issue
        assert issue is not None
        sending.start_sending(w.settings, w.store, issue)
        assert sending.run_worker(w.settings, w.store, issue).sent == 2
        w.mail(2)

        page = w.subscribe_and_confirm("ada@example.org", "Ada")
        assert page.status_code == 200 and "You are subscribed" in page.text
        confirmation, welcome = w.mail(4)[2:]
        assert confirmation.rcpt_tos == welcome.rcpt_tos == ("ada@example.org",)
        assert welcome.mail_from == w.settings.mail.from_address
        # Signed like an issue (dkimpy verifies it), with every list field an issue carries.
        text = check_signed(welcome, w.key_pem, lists=LIST_FIELDS)
        msg = parsed(welcome.data)
        assert msg["Subject"] == "Welcome to Test Ledger" and msg["To"] == "Ada <ada@example.org>"
        assert msg["Message-ID"].startswith("<welcome.")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # What they will get, and how often.
        flat = " ".join(text.split())
        assert "Hello Ada," in text and "Welcome: you are subscribed to Test Ledger." in flat
        assert "Policy news for the people who make it." in flat
        assert "You will get an issue every Monday at 07:00 UTC," in flat
        assert "from every section: Economy and World." in flat
        assert "The next one is due Monday " in flat
        assert f'The latest issue, "{issue.subject}", is on the web:' in flat
        assert "1 Test Street" in text  # the postal address, as in every issue's footer
        sub = w.store.get_subscriber_by_key("ada@example.org")
        assert sub is not None and sub.status == "active"

        # A mail scanner fetching every link first changes nothing; then the person's visits.
        links = re.findall(r"https://\S+", text)
        archived, preferences, leave = links
        assert archived == f"{w.settings.site_url}issues/{issue.number}"
        assert preferences.startswith(w.settings.site_url + "preferences?token=")
        assert leave.startswith(w.settings.site_url + "unsubscribe?token=")
        for url in links:
            for method in ("HEAD", "GET", "GET"):
                assert w.client.request(method, w.local(url)).status_code == 200, url
        assert w.store.get_subscriber(sub.id) == sub
        opened = w.client.get(w.local(preferences))
        assert opened.status_code == 200 and "ada@example.org" in opened.text
        assert "Economy" in opened.text and "World" in opened.text
        shown = w.client.get(w.local(archived))
        assert shown.status_code == 200 and html.escape(issue.subject) in shown.text

        # The confirm button pressed again (or its POST replayed): nothing more is sent.
        again = w.client.post("/confirm", data={"token": w.confirm_token})
        assert "You are already subscribed" in again.text
        w.barrier()
        assert len(w.welcomes()) == 1

        # The mail provider's unsubscribe button (RFC 8058): one POST, no cookie.
        https, mailto = re.findall(r"<([^<>]+)>", msg["List-Unsubscribe"])
        assert mailto.startswith("mailto:") and https == leave
        w.client.cookies.clear()
        gone = w.client.post(w.local(https), data={"List-Unsubscribe": "One-Click"})
        assert gone.status_code == 200 and "location" not in gone.headers
        assert w.store.get_subscriber(sub.id).status == "unsubscribed"  # type: ignore[union-attr]
    assert [m.rcpt_tos for m in w.welcomes()] == [("ada@example.org",)]


def test_presses_at_once_send_one_and_coming_back_gets_a_welcome_back(
        make_world: MakeWorld) -> None:
    with make_world() as w:  # no schedule, no issue sent yet
        before = len(w.srv.messages)
        assert w.client.post("/subscribe", data={"email": "cy@example.org"}).status_code == 202
        link = re.search(r"https://\S+/confirm\?token=\S+", body(w.mail(before + 1)[before]))
        assert link is not None
        token = urlsplit(link[0]).query.removeprefix("token=")

        def press(_: int) -> str:
            with httpx.Client(base_url=str(w.client.base_url), timeout=30) as c:
                return c.post("/confirm", data={"token": token}).text

        with ThreadPoolExecutor(6) as pool:  # six presses, racing
            pages = list(pool.map(press, range(6)))
        assert sum("You are subscribed" in p for p in pages) == 1
        assert sum("You are already subscribed" in p for p in pages) == 5
        w.barrier()
        (welcome,) = w.welcomes()
        text = " ".join(body(welcome).split())
        assert f"You will get {WHENEVER}," in text
        assert "The next one is due" not in text
        # No issue has gone out: the link is to the site, where the articles are.
        assert "No issue has gone out yet" in text
        assert re.findall(r"https://\S+", body(welcome))[0] == w.settings.site_url

        # Leaving, then subscribing again through the form, is the person's own new opt-in:
        # it gets a welcome again, worded as one.
        leave = re.findall(r"<(https://[^<>]+)>", parsed(welcome.data)["List-Unsubscribe"])[0]
        assert w.client.post(w.local(leave)).status_code == 200
        cy = w.store.get_subscriber_by_key("cy@example.org")
        assert cy is not None and cy.status == "unsubscribed"
        # An hour later: past the window of one confirmation mail per address per hour.
        w.store.update_subscriber(cy.id, datetime.now(UTC), confirmation_sent_at=None)
        page = w.subscribe_and_confirm("cy@example.org")
        assert "You are subscribed" in page.text
        w.barrier()
        first, back = w.welcomes()
        assert subject(back) == "Welcome back to Test Ledger"
        assert "Welcome back: you are subscribed to Test Ledger again." in \
            " ".join(body(back).split())
        check_signed(back, w.key_pem, lists=LIST_FIELDS)


def test_in_review_mode_the_welcome_promises_no_send_time(make_world: MakeWorld) -> None:
    with make_world('[schedule]\nissue_cron = "35 23 * * *"\n[newsletter]\nreview = true\n'
                    'editors = ["editor@example.org"]\n') as w:
        assert "You are subscribed" in w.subscribe_and_confirm("jo@example.org").text
        w.barrier()
        (welcome,) = w.welcomes()
        text = " ".join(check_signed(welcome, w.key_pem, lists=LIST_FIELDS).split())
    # The schedule is when issues are prepared; each goes once an editor approves it.
    assert "Issues are prepared every day at 23:35 UTC, each with the articles published " \
           "since the one before" in text
    assert "Each one is sent to you once the editors have approved it" in text
    assert "You will get" not in text and "The next one is due" not in text


@pytest.mark.parametrize("review", [False, True])
def test_the_welcome_names_an_issue_scheduled_before_the_cron(make_world: MakeWorld,
                                                                review: bool) -> None:
    """The next one is due when an issue is scheduled, if that comes before the cron's run;
    in review mode only once it is approved (the cron's run promises nothing there)."""
    hour = (datetime.now(UTC).hour + 12) % 24  # the cron's next run is 11 to 12 hours ahead
    editors = '[newsletter]\nreview = true\neditors = ["editor@example.org"]\n'
    with make_world(f'[schedule]\nissue_cron = "0 {hour} * * *"\n'
                    + (editors if review else "")) as w:
        seed(w.store, 0)  # articles, nobody subscribed
        assert pipeline.build_issue(w.settings, w.store).issue is not None
        sooner = (datetime.now(UTC) + timedelta(minutes=30)).replace(second=0, microsecond=0)
        control.schedule_issue(w.store, 1, sooner, actor="test")
        due = f"The next one is due {friendly_time(sooner, datetime.now(UTC))}."
        if review:
            assert "You are subscribed" in w.subscribe_and_confirm("kim@example.org").text
            w.barrier()
            (waiting,) = w.welcomes()
            assert "The next one is due" not in " ".join(body(waiting).split())
            review_.approve_issue(w.store, 1, actor="test")
        assert "You are subscribed" in w.subscribe_and_confirm("lee@example.org").text
        w.barrier()
        text = " ".join(body(w.welcomes()[-1]).split())
    assert due in text
    if review:
        assert "Each one is sent to you once the editors have approved it, so the day it " \
               f"arrives may vary. {due}" in text


def test_welcome_false_sends_none(make_world: MakeWorld) -> None:
    with make_world("[subscriptions]\nwelcome = false\n") as w:
        assert w.settings.subscriptions.welcome is False
        page = w.subscribe_and_confirm("dee@example.org")
        assert page.status_code == 200 and "You are subscribed" in page.text
        w.barrier()
        assert w.welcomes() == []
        assert [subject(m).split()[0] for m in w.srv.messages] == ["Confirm", "Confirm"]


def test_an_operators_add_or_import_sends_no_welcome(make_world: MakeWorld,
                                                     tmp_path: Path) -> None:
    with make_world(f'[secrets]\nadmin_token = "{ADMIN_TOKEN}"\n') as w:
        done = cli(w.settings, "subscribers", "add", "eve@example.org", "--confirmed")
        assert done.returncode == 0, done.stderr
        (tmp_path / "people.csv").write_text("email,name\nfay@example.org,Fay\n", "utf-8")
        done = cli(w.settings, "subscribers", "import", str(tmp_path / "people.csv"))
        assert done.returncode == 0, done.stderr
        # The dashboard's API, in the process that sends welcomes: an operator vouching.
        r = w.client.post("/admin/api/subscribers", headers={"authorization":
                                                             f"Bearer {ADMIN_TOKEN}"},
                          json={"email": "gus@example.org", "confirmed": True})
        assert r.status_code == 201, r.text
        for address in ("eve@example.org", "fay@example.org", "gus@example.org"):
            got = w.store.get_subscriber_by_key(address)
            assert got is not None and got.status == "active"
        w.barrier()
        assert w.welcomes() == []
        assert len(w.srv.messages) == 1  # the barrier's confirmation, nothing else


def test_a_failed_welcome_is_one_log_line_and_the_person_is_subscribed(
        make_world: MakeWorld, caplog: pytest.LogCaptureFixture) -> None:
    with make_world() as w:
        caplog.set_level(logging.INFO, logger="newsletter")
        before = len(w.srv.messages)
        assert w.client.post("/subscribe", data={"email": "hal@example.org"}).status_code == 202
        link = re.search(r"https://\S+/confirm\?token=\S+", body(w.mail(before + 1)[before]))
        assert link is not None
        w.srv.rcpt_codes["hal@example.org"] = 550  # the relay refuses whatever comes next
        token = urlsplit(link[0]).query.removeprefix("token=")
        page = w.client.post("/confirm", data={"token": token})
        assert page.status_code == 200 and "You are subscribed" in page.text
        deadline = time.monotonic() + 15
        while not (failed := [r for r in caplog.records if "welcome_send_failed" in
                              r.getMessage()]):
            assert time.monotonic() < deadline, "the failure was not logged"
            time.sleep(0.02)  # polling inside a deadline: the send runs after the response
        (line,) = failed
        assert line.levelno == logging.ERROR and "\n" not in line.getMessage()
        assert "550" in line.getMessage()
        sub = w.store.get_subscriber_by_key("hal@example.org")
        assert sub is not None and sub.status == "active"
        assert w.welcomes() == []


def test_the_operators_own_welcome_template_is_used(make_world: MakeWorld,
                                                   tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    (folder / "email").mkdir(parents=True)
    (folder / "email" / "welcome.txt").write_text(
        "Our own welcome to {{ publication }}, {{ rhythm }}.\n{{ preferences_url }}\n", "utf-8")
    with make_world(f'[newsletter]\ntemplates_dir = "{folder}"\n') as w:
        assert "You are subscribed" in w.subscribe_and_confirm("ivy@example.org").text
        w.barrier()
        (welcome,) = w.welcomes()
        text = check_signed(welcome, w.key_pem, lists=LIST_FIELDS)
        assert text.replace("\r\n", "\n").startswith(
            f"Our own welcome to Test Ledger, {WHENEVER}.\n"
            f"{w.settings.site_url}preferences?token=")


@pytest.mark.parametrize(("cron", "zone", "words"), [
    ("", "UTC", WHENEVER),
    ("0 7 * * mon", "UTC", "an issue every Monday at 07:00 UTC"),
    ("0 9 * * mon,thu", "UTC", "an issue every Monday and Thursday at 09:00 UTC"),
    ("30 6 * * mon-fri", "Europe/Oslo",
     "an issue every weekday (Monday to Friday) at 06:30 Europe/Oslo time"),
    ("0 7 * * *", "UTC", "an issue every day at 07:00 UTC"),
    ("0 2 * * sun", "Europe/Oslo", "an issue every Sunday at 02:00 Europe/Oslo time"),
    ("0 9 1,15 * *", "UTC", "an issue on the 1st and 15th of every month at 09:00 UTC"),
    ("0 9,17 * * *", "UTC", "issues on a set schedule"),  # several a day
    ("0 9 1-7 * mon", "UTC", "issues on a set schedule"),  # the first Monday of a month
    ("0 9 31 * *", "UTC", "issues on a set schedule"),  # not every month has one
])
def test_the_rhythm_in_words(make_settings: Callable[..., Settings], cron: str, zone: str,
                             words: str) -> None:
    settings = make_settings(f'[schedule]\nissue_cron = "{cron}"\ntimezone = "{zone}"\n')
    assert issue_rhythm(settings, datetime(2026, 3, 2, 9, 30, tzinfo=UTC)) == words


@pytest.mark.parametrize(("rhythm", "words"), [
    (WHENEVER, ""),  # no schedule: "You will get an issue whenever the editors send one"
    ("an issue every Monday at 07:00 UTC", "Issues are prepared every Monday at 07:00 UTC"),
    ("issues on a set schedule", "Issues are prepared on a set schedule"),
])
def test_the_review_mode_rhythm_in_words(rhythm: str, words: str) -> None:
    assert prepared_rhythm(rhythm) == words
