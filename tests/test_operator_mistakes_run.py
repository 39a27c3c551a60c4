"""Operating mistakes at run time: each is refused with one line on stderr and an exit status."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.cli.issues import SEND_STOPPED_EARLY
from newsletter.config import Settings
from newsletter.models import example_send_time
from newsletter.store.database import Store
from tests.helpers.sending import seed, smtp_toml


def cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run([sys.executable, "-m", "newsletter", "--config",
                           str(settings.path), "--log-level", "ERROR", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def draft(settings: Settings, readers: int = 2) -> Store:
    store = pipeline.open_store(settings)
    seed(store, readers)
    assert pipeline.build_issue(settings, store).issue is not None
    return store


def test_schedule_in_the_past_is_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = draft(settings)
    past = (datetime.now(UTC) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M+00:00")
    proc = cli(settings, "issue", "schedule", "1", "--at", past)
    assert proc.returncode == 2
    one_error_line(proc, "error: send time", "is in the past")
    assert store.get_issue(1).status == "draft"  # type: ignore[union-attr]
    # "Now", typed by hand, is a few seconds old by the time it arrives: still accepted.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    ok = cli(settings, "issue", "schedule", "1", "--at", now)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    assert store.get_issue(1).status == "scheduled"  # type: ignore[union-attr]
    store.close()


def test_the_example_send_time_is_the_next_monday_morning() -> None:
    monday_6 = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)  # 06:00 in Berlin, before 07:00
    assert example_send_time("Europe/Berlin", monday_6) == "2026-12-07T07:00+01:00"
    sunday = datetime(2026, 3, 22, 12, 0, tzinfo=UTC)  # the Monday after is still winter time
    assert example_send_time("Europe/Berlin", sunday) == "2026-03-23T07:00+01:00"
    before_dst = datetime(2026, 3, 25, 12, 0, tzinfo=UTC)  # summer time from 29 March
    assert example_send_time("Europe/Berlin", before_dst) == "2026-03-30T07:00+02:00"


def relay(make_settings: Callable[..., Settings], srv: SmtpTestServer, smtp: str = "",
          delivery: str = "") -> Settings:
    return make_settings(smtp_toml(srv, f"concurrency = 2\ntimeout = 5\n{smtp}",
                                   f"retry_initial = 1\nlease_seconds = 30\n{delivery}"))


def test_send_with_the_server_refusing_connections_exits_non_zero(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer() as gone:
        settings = relay(make_settings, gone)
    store = draft(settings, 3)
    proc = cli(settings, "issue", "send", "1")
    assert proc.returncode == SEND_STOPPED_EARLY == 1
    one_error_line(proc, "stopped early: cannot connect", "`newsletter issue send 1` resumes")
    counts = store.delivery_counts(1)
    assert counts["sent"] == 0 and counts["deferred"] == 3  # kept for the retry, not failed
    store.close()


def test_auth_configured_against_a_server_without_auth_says_so(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer() as srv:  # no authenticator: EHLO offers no AUTH
        settings = relay(make_settings, srv, 'username = "mailer"\npassword = "pw-s3cret"')
        store = draft(settings, 2)
        proc = cli(settings, "issue", "send", "1")
        assert not srv.messages
    assert proc.returncode == 1
    line = one_error_line(proc, f"server at {srv.host}:{srv.port} does not offer AUTH; "
                                "remove [smtp] username/password")
    assert "authentication failed" not in line and "pw-s3cret" not in line
    assert store.delivery_counts(1)["deferred"] == 2
    store.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_during_send_leaves_nothing_sending_and_says_how_to_resume(
        make_settings: Callable[..., Settings], workers: int) -> None:
    readers = 150
    with SmtpTestServer(delay=0.02) as srv:  # ~0.06 s a message per connection
        settings = relay(make_settings, srv, delivery=f"workers = {workers}\nbatch_size = 20")
        store = draft(settings, readers)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        # A session of its own, so that the whole group gets SIGINT as from a terminal.
        proc = subprocess.Popen([sys.executable, "-m", "newsletter", "--config",
                                 str(settings.path), "--log-level", "ERROR", "issue", "send",
                                 "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while len(srv.messages) < 10:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "nothing was sent"
                time.sleep(0.01)  # polling interval inside a deadline
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 130, err
        one_error_line(subprocess.CompletedProcess([], 130, out, err),
                       "interrupted:", "`newsletter issue send 1` resumes")
        counts = store.delivery_counts(1)
        assert counts["sending"] == 0  # every row held was given back
        assert 10 <= counts["sent"] < readers
        again = cli(settings, "issue", "send", "1", timeout=120)
        assert again.returncode == 0, again.stderr
        received = Counter(m.rcpt_tos[0] for m in srv.messages)
        assert received == Counter(f"reader{i}@example.org" for i in range(readers))
    assert store.get_issue(1).status == "sent"  # type: ignore[union-attr]
    store.close()


@pytest.mark.parametrize("command", ["serve", "run"])
def test_a_port_in_use_is_one_line_and_nothing_claims_to_serve(
        make_settings: Callable[..., Settings], tmp_path: Path, command: str) -> None:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = cli(settings, command, "--host", "127.0.0.1", "--port", str(port))
    assert proc.returncode == 2
    one_error_line(proc, f"error: port {port} on 127.0.0.1 is in use", "--port")
    assert "serving" not in proc.stdout and "scheduler" not in proc.stdout
    if command == "run":  # refused before collecting or starting anything
        assert not (tmp_path / "feeds").exists()
