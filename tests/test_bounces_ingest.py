"""Bounces come back: VERP return paths on real SMTP, then ingestion from files, mbox, Maildir
and standard input, matched to subscribers, recorded once, and applied by the policy."""

from __future__ import annotations

import mailbox
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.audience.bounces import verp_address, verp_token_of
from newsletter.audience.tokens import load_or_create_secret
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.models import BounceNotice, BouncePolicy, Issue, now_utc
from newsletter.pipeline import sending
from newsletter.pipeline.bounce_files import ingest_paths
from newsletter.store.database import Store
from tests.helpers.bounces import arf, dsn, vacation
from tests.helpers.sending import r, seed, smtp_settings

RETURN_PATH = "bounces@news.example.org"


def _sent(make_settings: Callable[..., Settings], srv: SmtpTestServer, readers: int = 5,
          extra: str = "") -> tuple[Settings, Store, int]:
    settings = smtp_settings(make_settings, srv, f'[bounces]\nreturn_path = "{RETURN_PATH}"\n'
                                                 + extra)
    store = pipeline.open_store(settings)
    seed(store, readers)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None
    sending.start_sending(settings, store, issue)
    sending.run_worker(settings, store, issue)
    return settings, store, issue.number


def _ingest(settings: Settings, *args: str, stdin: bytes | None = None,
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(settings.path), "bounces", "ingest",
                                      *args], input=stdin, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_each_message_carries_its_own_signed_return_path(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer() as srv:
        settings, store, number = _sent(make_settings, srv)
        secret = load_or_create_secret(settings)
        senders = {m.rcpt_tos[0]: m.mail_from for m in srv.messages}
        assert len(senders) == 5
        for rcpt, sender in senders.items():
            sub = store.get_subscriber_by_key(rcpt)
            assert sender == verp_address(RETURN_PATH, secret, number, sub.id)
            assert sender.startswith("bounces+") and sender.endswith("@news.example.org")
            assert verp_token_of(sender, secret) == (number, sub.id)
        # Another key (another installation) cannot vouch for these tokens.
        assert verp_token_of(senders[r(0)], b"another key" * 3) is None
        store.close()


def test_without_a_return_path_the_sender_stays_the_from_address(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer() as srv:
        settings = smtp_settings(make_settings, srv)
        store = pipeline.open_store(settings)
        seed(store, 2)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None
        sending.start_sending(settings, store, issue)
        sending.run_worker(settings, store, issue)
        assert {m.mail_from for m in srv.messages} == {"news@ledger.example.org"}
        store.close()


def test_a_dsn_to_the_verp_address_bounces_that_subscriber(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with SmtpTestServer() as srv:
        settings, store, number = _sent(make_settings, srv)
        secret = load_or_create_secret(settings)
        victim = store.get_subscriber_by_key(r(1))
        to = verp_address(RETURN_PATH, secret, number, victim.id)
        # The report names another address (a forward): the signed token decides whose it is.
        (tmp_path / "dsn.eml").write_bytes(dsn(to, "forwarded@elsewhere.example"))
        code, out, _err = _ingest(settings, str(tmp_path / "dsn.eml"))
        assert code == 0
        assert out.strip() == ("1 read: 1 hard, 0 soft, 0 complaints, 0 auto-replies ignored, "
                               "0 unrecognised, 0 not ours; 1 subscribers suppressed")
        assert store.get_subscriber_by_key(r(1)).status == "bounced"
        assert {store.get_subscriber_by_key(r(i)).status for i in (0, 2, 3, 4)} == {"active"}
        [event] = store.list_bounces()
        assert (event.email, event.issue_number, event.kind, event.status, event.source) == (
            r(1), number, "hard", "5.1.1", "file")
        assert "no such user" in event.diagnostic
        # Read again (the same Message-ID): recorded once, nothing changes.
        code, out, _err = _ingest(settings, str(tmp_path / "dsn.eml"))
        assert code == 0 and "0 hard" in out and "1 already recorded" in out
        assert len(store.list_bounces()) == 1
        assert store.get_subscriber_by_key(r(1)).hard_bounces == 1
        # What the operator sees.
        listed = CliRunner().invoke(cli, ["--config", str(settings.path), "bounces", "list"])
        assert listed.exit_code == 0 and r(1) in listed.stdout and "5.1.1" in listed.stdout
        status = CliRunner().invoke(cli, ["--config", str(settings.path), "issue", "status",
                                          str(number)])
        assert "1 hard bounce (20.00%)" in status.stdout
        assert "hard-bounce rate 20.00% (1 of 5 sent) reaches 2.00%" in status.stderr
        overall = CliRunner().invoke(cli, ["--config", str(settings.path), "status"])
        assert "came back 1 hard/0 soft/0 complaints" in overall.stdout
        assert "warning: issue 1: hard-bounce rate 20.00%" in overall.stdout
        store.close()


def test_a_forged_or_foreign_token_changes_nothing(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with SmtpTestServer() as srv:
        settings, store, number = _sent(make_settings, srv)
        sub = store.get_subscriber_by_key(r(2))
        real = verp_address(RETURN_PATH, load_or_create_secret(settings), number, sub.id)
        mac = real.split("@")[0].rsplit("-", 1)[1]
        forged = real.replace(mac, ("a" if mac[0] != "a" else "b") + mac[1:])
        other_key = verp_address(RETURN_PATH, b"someone else's key 0123456789", number, sub.id)
        for i, to in enumerate((forged, other_key)):
            (tmp_path / f"f{i}.eml").write_bytes(dsn(to, r(2)))
        code, out, err = _ingest(settings, str(tmp_path / "f0.eml"), str(tmp_path / "f1.eml"))
        assert code == 0 and "2 not ours" in out and "0 hard" in out
        assert store.get_subscriber_by_key(r(2)).status == "active"
        assert store.list_bounces() == []
        assert err.count("bounces.forged_token") == 2
        store.close()


def test_an_unsigned_bounce_counts_only_for_an_address_recently_sent_to(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with SmtpTestServer() as srv:
        settings, store, _number = _sent(make_settings, srv)
        # An old-style bounce to the From address: no token at all.
        (tmp_path / "ours.eml").write_bytes(dsn("news@ledger.example.org", r(3)))
        (tmp_path / "stranger.eml").write_bytes(dsn("news@ledger.example.org",
                                                    "stranger@example.org"))
        code, out, _err = _ingest(settings, str(tmp_path / "ours.eml"),
                                  str(tmp_path / "stranger.eml"))
        assert code == 0 and "1 hard" in out and "1 not ours" in out
        assert store.get_subscriber_by_key(r(3)).status == "bounced"
        store.close()
    # Outside the window it would count for no one: seen from eight days later.
    ingestor = pipeline.bounces.Ingestor(settings, pipeline.open_store(settings),
                                         clock=lambda: now_utc() + timedelta(days=8))
    assert ingestor.message(dsn("news@ledger.example.org", r(4)), source="file",
                            where="test") == "dsn"
    assert ingestor.summary.not_ours == 1 and ingestor.summary.hard == 0
    ingestor.store.close()


def test_a_complaint_marks_the_subscriber_at_once_and_auto_replies_are_ignored(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with SmtpTestServer() as srv:
        settings, store, number = _sent(make_settings, srv, readers=4)
        secret = load_or_create_secret(settings)
        sub = store.get_subscriber_by_key(r(0))
        box = mailbox.mbox(tmp_path / "bounces.mbox")
        box.add(arf("fbl@news.example.org", r(0)))
        box.add(vacation(verp_address(RETURN_PATH, secret, number,
                                      store.get_subscriber_by_key(r(1)).id)))
        box.add(b"From: someone@example.org\r\nSubject: hello\r\n\r\nthanks for the issue\r\n")
        box.close()
        code, out, err = _ingest(settings, str(tmp_path / "bounces.mbox"))
        assert code == 0, err
        assert out.startswith("3 read: 0 hard, 0 soft, 1 complaints, 1 auto-replies ignored, "
                              "1 unrecognised, 0 not ours")
        assert store.get_subscriber(sub.id).status == "complained"
        assert store.get_subscriber_by_key(r(1)).status == "active"
        assert "complaint rate 25.00% (1 of 4 sent)" in err
        store.close()


def test_soft_bounces_suppress_only_across_issues(db_url: str) -> None:
    store = Store(db_url)
    seed(store, 1)
    sub = store.get_subscriber_by_key(r(0))
    policy = BouncePolicy(max_hard_bounces=2, soft_limit=2, soft_window=timedelta(days=30))
    now = now_utc()

    def notice(kind: str, issue_id: int | None, key: str) -> BounceNotice:
        return BounceNotice(sub.id, issue_id, kind, "4.2.2" if kind == "soft" else "5.1.1",
                            "mailbox full", "file", r(0), key)

    issues = []
    for n in (1, 2):
        built = store.save_issue(Issue(number=n, subject="S", preheader="", created=now,
                                       window_start=now, window_end=now, sections=()), now)
        assert built.id is not None
        issues.append(built.id)
    # Three delayed reports for one message are one problem.
    assert store.record_bounces([notice("soft", issues[0], f"d{i}") for i in range(3)], now,
                                policy) == ["counted"] * 3
    assert store.get_subscriber(sub.id).status == "active"
    # The same key again is a duplicate, whatever else it says.
    assert store.record_bounces([notice("hard", issues[0], "d0")], now, policy) == ["duplicate"]
    assert store.get_subscriber(sub.id).hard_bounces == 0
    # A second issue's delay reaches soft_limit.
    assert store.record_bounces([notice("soft", issues[1], "e0")], now, policy) == ["suppressed"]
    assert store.get_subscriber(sub.id).status == "bounced"
    assert store.bounce_counts(issues[0]) == {"hard": 0, "soft": 3, "complaint": 0}
    # A hard bounce counts toward max_hard_bounces; a complaint outranks "bounced".
    assert store.record_bounces([notice("hard", issues[1], "h0")], now, policy) == ["counted"]
    assert store.get_subscriber(sub.id).hard_bounces == 1
    assert store.record_bounces([notice("complaint", issues[1], "c0")], now,
                                policy) == ["suppressed"]
    assert store.get_subscriber(sub.id).status == "complained"
    store.close()


def test_maildir_stdin_and_bad_input_each_get_one_line_and_ingestion_goes_on(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with SmtpTestServer() as srv:
        settings, store, number = _sent(make_settings, srv, readers=5)
        secret = load_or_create_secret(settings)

        def to(i: int) -> str:
            return verp_address(RETURN_PATH, secret, number, store.get_subscriber_by_key(r(i)).id)

        md = mailbox.Maildir(tmp_path / "Maildir", create=True)
        md.add(dsn(to(0), r(0)))
        md.add(b"\x00\x01garbage that is no mail at all\xff" * 40)
        md.add(dsn(to(1), r(1), action="delayed", status="4.4.1",
                   diagnostic="smtp; 451 4.4.1 try later"))
        md.close()
        big = tmp_path / "big.eml"  # 50 MB: refused by size, never parsed whole
        with big.open("wb") as f:
            f.write(dsn(to(2), r(2)))
            f.write(b"x" * (50 * 1024 * 1024))
        code, out, err = _ingest(settings, str(tmp_path / "Maildir"), str(big),
                                 str(tmp_path / "missing.eml"))
        assert code == 1  # one path could not be read: said so, the rest was read
        assert "error: " in err and "missing.eml: no such file or folder" in err
        assert out.startswith("4 read: 1 hard, 1 soft, 0 complaints")
        assert "2 malformed" in out
        assert err.count("bounces.malformed") == 2 and "max_message_bytes" in err
        assert store.get_subscriber_by_key(r(2)).status == "active"
        # Standard input, as an MTA alias pipes it; the envelope recipient from Postfix's
        # environment is enough when no header carries the VERP address.
        raw = dsn("bounces@news.example.org", "someone@example.org")
        code, out, _err = _ingest(settings, "-", stdin=raw, env={"ORIGINAL_RECIPIENT": to(3)})
        assert code == 0 and out.startswith("1 read: 1 hard")
        assert store.get_subscriber_by_key(r(3)).status == "bounced"
        store.close()


def test_a_refusal_at_rcpt_time_is_a_recorded_event(make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer(rcpt_codes={r(1): 550}) as srv:
        settings, store, number = _sent(make_settings, srv, readers=3)
        [event] = store.list_bounces()
        assert (event.email, event.kind, event.source, event.issue_number) == (
            r(1), "hard", "smtp", number)
        assert event.status == "5.1.1" and "No such user" in event.diagnostic
        assert store.get_subscriber_by_key(r(1)).status == "bounced"
        store.close()


def test_ingest_paths_reports_a_folder_that_is_no_maildir(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    store = pipeline.open_store(settings)
    (tmp_path / "plain").mkdir()
    summary, errors = ingest_paths(settings, store, [str(tmp_path / "plain")])
    assert summary.messages == 0
    assert errors == [f"{tmp_path / 'plain'}: a folder that is not a Maildir (no cur/ and "
                      f"new/ inside)"]
    store.close()


def test_the_scheduler_polls_the_mailbox_and_an_outage_is_one_warning(
        make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    from newsletter import scheduler as jobs
    from newsletter.pipeline import schedule, scheduling
    from tests.mailstack import _free_ports

    port = _free_ports(1)[0]  # nothing listens there
    settings = make_settings(f'[bounces]\nimap_url = "imap://bounces@127.0.0.1:{port}/INBOX"\n'
                             f"imap_poll_minutes = 7\n")
    specs = schedule.job_specs(settings)
    assert specs["bounces"][0] == "newsletter.scheduler:job_bounces"
    assert specs["bounces"][1].interval == timedelta(minutes=7)
    assert "bounces" not in schedule.job_specs(make_settings())  # no mailbox, no job
    store = pipeline.open_store(settings)
    scheduling._RUNTIME = scheduling.Runtime(settings, store)
    try:
        jobs.job_bounces()  # the mailbox is down: logged, nothing raised
    finally:
        scheduling._RUNTIME = None
        store.close()
    [record] = [r for r in caplog.records if "bounces.poll_failed" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert f"127.0.0.1:{port}: cannot connect" in record.getMessage()
    assert "tried again in 7 minutes" in record.getMessage()


def test_an_unreachable_database_asks_the_mta_to_try_again(
        make_settings: Callable[..., Settings]) -> None:
    from tests.mailstack import _free_ports

    port = _free_ports(1)[0]
    settings = make_settings(database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    code, _out, err = _ingest(settings, "-", stdin=dsn("bounces@news.example.org", r(0)))
    assert code == 75  # EX_TEMPFAIL: Postfix keeps the bounce queued and retries
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0]
    assert "Traceback" not in err


def test_a_broken_configuration_also_keeps_the_bounce_queued(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "missing.toml"), "bounces",
                                      "ingest", "-"], input=b"From: x@example.org\r\n\r\nx\r\n")
    assert result.exit_code == 75
    assert result.stderr.strip() == (f"error: {tmp_path / 'missing.toml'}: configuration "
                                     f"file not found")


def test_run_says_at_start_how_bounces_come_back(make_settings: Callable[..., Settings]) -> None:
    from newsletter.cli.serve import bounces_line

    assert bounces_line(make_settings()).startswith("bounces: only refusals at send time")
    settings = make_settings(f'[bounces]\nreturn_path = "{RETURN_PATH}"\n'
                             'imap_url = "imaps://bounces@mail.example.org/Bounces"\n'
                             'postmark_username = "pm"\npostmark_password = "secret-pm"\n')
    line = bounces_line(settings)
    assert line == ("bounces: return path bounces+TOKEN@news.example.org; mailbox "
                    "mail.example.org/Bounces every 5 min; webhooks /webhooks/postmark")
    assert "secret" not in line
