"""A database outage: workers, the scheduler and the web app wait it out and go on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from apscheduler.triggers.date import DateTrigger
from smtpserver import SmtpTestServer
from webserver import running

from newsletter import pipeline, scheduler
from newsletter.config import Settings
from newsletter.deliver.engine import Summary, deliver
from newsletter.models import Issue
from newsletter.pipeline import scheduling, sending
from newsletter.pipeline.transports import pool_from_settings
from newsletter.store.database import Store
from tests.helpers.pgproxy import PgProxy
from tests.helpers.sending import seed, smtp_toml

pytestmark = pytest.mark.postgres

CONCURRENCY = 3


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def named(url: str, name: str) -> str:
    """The URL with an application_name, by which the test finds the process's sessions."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


class Terminator:
    """pg_terminate_backend on every session of one application_name, from a connection
    of the test's own."""

    def __init__(self, url: str, name: str) -> None:
        self.engine = sa.create_engine(url)
        self.name = name

    def kill(self) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                {"name": self.name}).scalar_one())

    def burst(self, times: int = 6) -> int:
        """Kill a few times in a row: statements in flight, pooled sessions and the
        reconnections that replace them all die, not just whatever sat idle."""
        killed = 0
        for _ in range(times):
            killed += self.kill()
            time.sleep(0.03)
        return killed


@pytest.fixture
def terminator(pg_url: str) -> Iterator[Terminator]:
    t = Terminator(pg_url, f"nl-outage-{uuid.uuid4().hex[:10]}")
    yield t
    t.engine.dispose()


def mail_settings(make_settings: Callable[..., Settings], srv: SmtpTestServer, url: str,
                  extra: str = "") -> Settings:
    return make_settings(smtp_toml(srv, f"concurrency = {CONCURRENCY}\ntimeout = 5",
                                   f"batch_size = 40\nlease_seconds = 10\nretry_initial = 1\n"
                                   f"{extra}"), database_url=url)


def begin(settings: Settings, store: Store, readers: int) -> Issue:
    seed(store, readers)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    sending.start_sending(settings, store, issue)
    return issue


def cut_while_sending(terminator: Terminator, srv: SmtpTestServer, proc: subprocess.Popen[bytes],
                      readers: int, cuts: int, stderr: Path) -> None:
    for k in range(1, cuts + 1):
        wait_for(lambda k=k: len(srv.messages) >= k * readers // (cuts + 2)
                 or proc.poll() is not None, 60, f"message {k * readers // (cuts + 2)}")
        assert proc.poll() is None, stderr.read_text()
        assert terminator.burst() > 0  # it had sessions, and lost them all


def assert_each_once(store: Store, issue: Issue, srv: SmtpTestServer,
                     addresses: list[str]) -> None:
    """One recorded outcome each, and one message each. The README's bound on duplicates
    (one per SMTP connection per kill) is for a process killed with messages in flight;
    here only database sessions die, and an outcome whose commit failed is kept and
    committed later, never sent again."""
    assert issue.id is not None
    counts = store.delivery_counts(issue.id)
    assert counts["sent"] == len(addresses), counts
    assert Counter(m.rcpt_tos[0] for m in srv.messages) == Counter(addresses)


def test_a_worker_goes_on_while_its_database_sessions_are_killed(
        make_settings: Callable[..., Settings], pg_url: str, terminator: Terminator,
        tmp_path: Path) -> None:
    """Away while the worker polls for work, then its sessions killed again and again
    while it sends: it never exits, and every reader gets the issue once."""
    readers, cuts = 240, 4
    with SmtpTestServer(delay=0.002) as srv, PgProxy(pg_url) as proxy:
        settings = mail_settings(make_settings, srv, proxy.url(named(pg_url, terminator.name)))
        store = Store(pg_url)  # the test's own sessions, which are never killed
        addresses = seed(store, readers)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        stderr = tmp_path / "worker.err"
        cmd = [sys.executable, "-m", "newsletter", "--config", str(settings.path),
               "--log-level", "WARNING", "worker", "--poll", "0.2"]
        proxy.counting = b"FROM issues"
        with stderr.open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(lambda: proxy.counted >= 2 or proc.poll() is not None, 30, "a poll")
            proxy.go_dark()
            wait_for(lambda: proxy.refused >= 2 or proc.poll() is not None, 30, "a retry")
            proxy.come_back()
            assert proc.poll() is None, stderr.read_text()
            sending.start_sending(settings, store, issue)
            cut_while_sending(terminator, srv, proc, readers, cuts, stderr)
            # A claim whose commit went through unseen holds its rows until the lease ends.
            wait_for(lambda: store.delivery_counts(issue.id)["sent"] == readers
                     or proc.poll() is not None, 60, "every row sent")
            assert proc.poll() is None, stderr.read_text()  # still at work, not dead
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log = stderr.read_text()
        assert "Traceback" not in log and "\n\t" not in log, log  # one line per event
        assert "db.unreachable during=worker" in log and "db.back during=worker" in log
        assert_each_once(store, issue, srv, addresses)
        store.close()


def test_the_sending_processes_of_issue_send_go_on_too(
        make_settings: Callable[..., Settings], pg_url: str, terminator: Terminator,
        tmp_path: Path) -> None:
    """`issue send` with two sending processes: their sessions killed, then the database
    away for a moment; the command ends as if nothing happened."""
    readers, cuts = 240, 2
    with SmtpTestServer(delay=0.002) as srv, PgProxy(pg_url) as proxy:
        settings = mail_settings(make_settings, srv, proxy.url(named(pg_url, terminator.name)),
                                 "workers = 2")
        store = Store(pg_url)
        issue = begin(settings, store, readers)
        addresses = [f"reader{i}@example.org" for i in range(readers)]
        stderr = tmp_path / "send.err"
        cmd = [sys.executable, "-m", "newsletter", "--config", str(settings.path),
               "--log-level", "WARNING", "issue", "send", str(issue.number)]
        with stderr.open("wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            cut_while_sending(terminator, srv, proc, readers, cuts, stderr)
            proxy.go_dark()
            wait_for(lambda: proxy.refused >= 6 or proc.poll() is not None, 30, "retries")
            proxy.come_back()
            assert proc.wait(timeout=90) == 0, stderr.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log = stderr.read_text()
        assert "Traceback" not in log and "sending process(es) failed" not in log, log
        assert_each_once(store, issue, srv, addresses)
        assert store.get_issue(issue.number).status == "sent"  # type: ignore[union-attr]
        store.close()


@pytest.mark.parametrize(("command", "marker"), [
    (["status"], b"apscheduler_jobs"),
    (["issue", "list"], b"FROM issues"),
    (["subscribers", "list"], b"FROM subscribers"),
    (["bounces", "list"], b"bounce_events"),
])
def test_a_read_command_whose_database_goes_away_says_so_in_one_line(
        make_settings: Callable[..., Settings], pg_url: str, command: list[str],
        marker: bytes) -> None:
    """The database is there when the command opens it and gone at its first own query."""
    Store(pg_url).close()  # created and migrated, as the service would have left it
    with PgProxy(pg_url) as proxy:
        settings = make_settings(database_url=proxy.url(pg_url))
        proxy.cut_on(marker)
        done = subprocess.run([sys.executable, "-m", "newsletter", "--config",
                               str(settings.path), *command],
                              capture_output=True, text=True, timeout=60, check=False)
    assert proxy.cuts == 1  # the cue was seen: the database vanished mid-command
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: database "), done.stderr
    assert "unreachable" in lines[0]


def test_healthz_reports_the_outage_while_feeds_are_still_served(
        make_settings: Callable[..., Settings], pg_url: str) -> None:
    Store(pg_url).close()
    with PgProxy(pg_url) as proxy:
        settings = make_settings(database_url=proxy.url(pg_url))
        store = pipeline.open_store(settings)
        pipeline.publish(settings, store)
        feed = next(p for p in settings.feeds_dir.iterdir() if p.suffix == ".xml").name
        try:
            app = pipeline.web_app(settings, store)
            app.state.health.cache_seconds, app.state.health.timeout = 0.5, 1.0  # test time
            with running(app) as base:
                def health() -> httpx.Response:
                    return httpx.get(f"{base}/healthz")

                assert health().status_code == 200 and health().text == "ok"
                with httpx.Client() as client:  # a flood of checks is not a load on it
                    proxy.counting, began = b"SELECT 1", time.monotonic()
                    for _ in range(100):
                        assert client.get(f"{base}/healthz").status_code == 200
                    periods = (time.monotonic() - began) / app.state.health.cache_seconds
                    assert proxy.counted <= periods + 2  # one per period, not one per request
                proxy.go_dark()  # refused: the server is down
                wait_for(lambda: health().status_code == 503, 10, "503 when refused")
                assert health().text == "database unreachable"
                assert health().headers["cache-control"] == "no-store"
                assert httpx.get(f"{base}/feeds/{feed}").status_code == 200
                page = httpx.get(f"{base}/issues/1")  # a page the database serves
                assert page.status_code == 503 and page.headers["retry-after"], page.text
                proxy.come_back()
                wait_for(lambda: health().status_code == 200, 10, "200 once it is back")
                proxy.go_dark("hang")  # a route that drops packets: no answer at all
                wait_for(lambda: health().status_code == 503, 10, "503 when silent")
                assert health().text.startswith("database unreachable (no answer within")
                proxy.come_back()
                wait_for(lambda: health().status_code == 200, 20, "200 once it answers")
        finally:
            store.close()


_RAN: list[str] = []
_RAN_LOCK = threading.Lock()


def mark(what: str) -> None:
    """A stored job's function (by reference): notes that it ran."""
    with _RAN_LOCK:
        _RAN.append(what)


def test_the_scheduler_goes_on_after_its_job_store_vanished_mid_round(
        make_settings: Callable[..., Settings], pg_url: str) -> None:
    """APScheduler hands a due one-off job to its executor, then deletes it from the store:
    the database is gone at that moment. Its loop thread used to die there, and no job ran
    again in that process."""
    Store(pg_url).close()
    _RAN.clear()
    with PgProxy(pg_url) as proxy:
        settings = make_settings(database_url=proxy.url(pg_url))
        store = pipeline.open_store(settings)
        service = scheduling.SingleScheduler(settings, store, retry_seconds=3600)
        try:
            assert service.start()
            assert service.scheduler is not None
            service.scheduler.jobstore_retry_interval = 0.5
            proxy.cut_on(b"DELETE FROM apscheduler_jobs")
            service.scheduler.add_job(f"{__name__}:mark", DateTrigger(), args=["first"],
                                      id="first", misfire_grace_time=None)
            wait_for(lambda: proxy.cuts == 1, 20, "the job's removal to cut the database")
            time.sleep(0.5)  # the round that failed is over
            proxy.come_back()
            service.scheduler.add_job(f"{__name__}:mark", DateTrigger(),
                                      args=["second"], id="second", misfire_grace_time=None)
            wait_for(lambda: "second" in _RAN, 20, "a job added after the outage to run")
            assert "first" in _RAN
        finally:
            service.stop()
            store.close()


def test_rows_whose_lease_ran_out_in_an_outage_are_not_sent(
        make_settings: Callable[..., Settings], pg_url: str) -> None:
    """Worker A loses the database for longer than its lease, and worker B, still
    connected, takes A's rows over. Back, A sends none of those waiting in its queue: the
    lease could not be renewed, so it waits, and the renewal says they are gone. Only a
    message already on its way when the database went can go out twice (one per A's
    connection: its lease ran out while its outcome waited to be recorded)."""
    readers = 160
    with SmtpTestServer(delay=0.005) as srv, PgProxy(pg_url) as proxy:
        settings = mail_settings(make_settings, srv, pg_url)
        direct = Store(pg_url)
        issue = begin(settings, direct, readers)
        addresses = [f"reader{i}@example.org" for i in range(readers)]
        through = Store(proxy.url(pg_url), migrate=False)
        policy = replace(sending.policy(settings), batch_size=40,
                         lease=timedelta(seconds=1), concurrency=2)
        done: dict[str, Summary] = {}

        def work(name: str, store: Store) -> None:
            plan = sending.make_plan(settings, store, issue)
            done[name] = asyncio.run(deliver(store, plan, pool_from_settings(settings),
                                             policy, owner=name))

        def held_by_a() -> int:
            with direct.engine.connect() as conn:
                return int(conn.execute(sa.text(
                    "SELECT count(*) FROM deliveries WHERE lease_owner = 'a'")).scalar_one())

        a = threading.Thread(target=work, args=("a", through))
        a.start()
        wait_for(lambda: len(srv.messages) >= 10 and held_by_a() > 20, 30, "A at work")
        proxy.go_dark()
        b = threading.Thread(target=work, args=("b", direct))
        b.start()
        wait_for(lambda: held_by_a() == 0, 30, "B to take over every row A held")
        proxy.come_back()
        a.join(60)
        b.join(60)
        assert not a.is_alive() and not b.is_alive() and set(done) == {"a", "b"}
        assert direct.delivery_counts(issue.id)["sent"] == readers  # type: ignore[arg-type]
        received = Counter(m.rcpt_tos[0] for m in srv.messages)
        assert set(received) == set(addresses)
        assert sum(received.values()) - readers <= policy.concurrency, received.most_common(5)
        through.close()
        direct.close()


def test_a_scheduled_job_waits_the_outage_out(
        make_settings: Callable[..., Settings], pg_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep finds the database gone: it tries again until it is back, then sends."""
    readers = 20
    Store(pg_url).close()
    with SmtpTestServer() as srv, PgProxy(pg_url) as proxy:
        settings = mail_settings(make_settings, srv, proxy.url(pg_url))
        direct = Store(pg_url)
        issue = begin(settings, direct, readers)
        store = Store(proxy.url(pg_url), migrate=False)
        monkeypatch.setattr(scheduling, "_RUNTIME", scheduling.Runtime(settings, store))
        failed: list[BaseException] = []

        def sweep() -> None:
            try:
                scheduler.job_sweep()
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                failed.append(exc)

        proxy.go_dark()
        job = threading.Thread(target=sweep)
        job.start()
        wait_for(lambda: proxy.refused >= 2 or not job.is_alive(), 30, "a second try")
        proxy.come_back()
        job.join(60)
        assert not job.is_alive() and not failed, failed
        assert direct.delivery_counts(issue.id)["sent"] == readers  # type: ignore[arg-type]
        assert len(srv.messages) == readers
        store.close()
        direct.close()


def test_the_web_app_answers_after_its_database_sessions_were_killed(
        make_settings: Callable[..., Settings], pg_url: str, terminator: Terminator) -> None:
    settings = make_settings(database_url=named(pg_url, terminator.name))
    store = pipeline.open_store(settings)
    try:
        with running(pipeline.web_app(settings, store)) as base:
            assert httpx.get(f"{base}/issues/1").status_code == 404  # asked the database
            assert terminator.kill() > 0  # the pooled session is gone
            assert httpx.get(f"{base}/issues/1").status_code == 404  # not a 500
    finally:
        store.close()


@pytest.mark.slow
def test_status_against_a_database_that_never_answers_gives_up_in_one_line(
        make_settings: Callable[..., Settings], pg_url: str) -> None:
    """A route that drops packets: libpq would wait for an answer for ever."""
    with PgProxy(pg_url) as proxy:
        settings = make_settings(database_url=proxy.url(pg_url))
        proxy.go_dark("hang")
        done = subprocess.run([sys.executable, "-m", "newsletter", "--config",
                               str(settings.path), "status"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "timeout expired" in lines[0], done.stderr


def test_a_row_whose_lease_could_not_be_renewed_is_never_sent(
        make_settings: Callable[..., Settings], pg_url: str) -> None:
    """Worker A's lease renewals fail (each one's connection is cut) while its other
    statements go through, and its batches take longer to send than a lease lasts. Worker
    B takes over the rows whose lease ran out. A sends a row only while its lease is known
    to hold: nobody gets the issue twice."""
    readers = 60
    with SmtpTestServer(delay=0.02) as srv, PgProxy(pg_url) as proxy:
        settings = mail_settings(make_settings, srv, pg_url)
        direct = Store(pg_url)
        issue = begin(settings, direct, readers)
        through = Store(proxy.url(pg_url), migrate=False)
        slow = replace(sending.policy(settings), batch_size=30, lease=timedelta(seconds=1),
                       concurrency=1)  # a batch takes about twice its lease to send
        fast = replace(slow, concurrency=6)  # sends what it takes over at once
        done: dict[str, Summary] = {}

        def work(name: str, store: Store) -> None:
            plan = sending.make_plan(settings, store, issue)
            done[name] = asyncio.run(deliver(store, plan, pool_from_settings(settings),
                                             slow if name == "a" else fast, owner=name))

        def run_out() -> bool:  # rows A holds on a lease that has run out
            with direct.engine.connect() as conn:
                return bool(conn.execute(sa.text(
                    "SELECT count(*) FROM deliveries WHERE lease_owner = 'a' "
                    "AND status = 'sending' AND lease_until < now()")).scalar_one())

        proxy.drop_on(b"SET lease_until")  # the renewal's UPDATE, and only it
        a = threading.Thread(target=work, args=("a", through))
        b = threading.Thread(target=work, args=("b", direct))
        a.start()
        wait_for(lambda: run_out() or not a.is_alive(), 30, "a lease of A's to run out")
        b.start()  # takes those rows first, and sends them at once
        b.join(60)
        assert not b.is_alive() and proxy.dropped > 0
        proxy.drop_on(None)  # A's renewal goes through: what B took is gone, the rest A's
        a.join(60)
        assert not a.is_alive() and set(done) == {"a", "b"}
        assert done["a"].sent > 0 and done["b"].sent > 0
        assert direct.delivery_counts(issue.id)["sent"] == readers  # type: ignore[arg-type]
        assert Counter(m.rcpt_tos[0] for m in srv.messages) == Counter(
            f"reader{i}@example.org" for i in range(readers))
        through.close()
        direct.close()
