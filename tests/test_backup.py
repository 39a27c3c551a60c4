"""`newsletter backup`: an online copy taken mid-send, checked, restored, and the send resumed."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.pipeline import sending
from newsletter.store import schema as s
from newsletter.store.database import Store
from tests.helpers.sending import seed, smtp_toml

READERS = 1500


def smtp(srv: SmtpTestServer) -> str:
    return smtp_toml(srv, "concurrency = 3\ntimeout = 5", "lease_seconds = 10")


def sent_ids(url: str, issue_id: int) -> set[int]:
    store = Store(url, migrate=False)
    try:
        with store.engine.connect() as conn:
            return set(conn.execute(sa.select(s.deliveries.c.subscriber_id).where(
                s.deliveries.c.issue_id == issue_id, s.deliveries.c.status == "sent"))
                .scalars())
    finally:
        store.close()


def test_a_backup_taken_mid_send_restores_and_resumes(make_settings: Callable[..., Settings],
                                                      tmp_path: Path) -> None:
    """The copy is consistent (integrity ok) although a worker process writes the ledger
    meanwhile. Restored, the send resumes from it: everybody gets the issue, and only those
    the copy did not know had it can get it twice."""
    # Each reply a little late: the send lasts long enough to be caught in the middle.
    with SmtpTestServer(delay=0.003) as srv:
        settings = make_settings(smtp(srv))
        store = pipeline.open_store(settings)
        addresses = seed(store, READERS)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        store.close()
        base = [sys.executable, "-m", "newsletter", "--config", str(settings.path),
                "--log-level", "WARNING"]
        worker = subprocess.Popen([*base, "issue", "send", str(issue.number)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while len(srv.messages) < READERS // 5:
                assert worker.poll() is None, "the send ended before the backup"
                assert time.monotonic() < deadline, "the send made no progress"
                time.sleep(0.01)
            copy = tmp_path / "backups" / "n-copy.db"
            copy.parent.mkdir()
            taken = subprocess.run([*base, "backup", str(copy)], capture_output=True,
                                   text=True, timeout=60)
            assert worker.wait(timeout=120) == 0, worker.stderr.read() if worker.stderr else ""
        finally:
            if worker.poll() is None:
                worker.kill()
            if worker.stderr:
                worker.stderr.close()
        assert taken.returncode == 0, taken.stderr
        line = taken.stdout.strip()
        assert re.fullmatch(rf"backup: {re.escape(str(copy))}, [\d,.]+ MB, integrity ok", line)
        # Nothing left beside it (no temporary file, no WAL), and checked again here.
        assert sorted(p.name for p in copy.parent.iterdir()) == ["n-copy.db"]
        check = sqlite3.connect(copy)
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        check.close()
        assert len(srv.messages) == READERS  # the original send went on to the end

        # Restore into a fresh place and resume the send from the copy.
        restored = tmp_path / "restored" / "n.db"
        restored.parent.mkdir()
        shutil.copyfile(copy, restored)
        url = f"sqlite:///{restored}"
        known = sent_ids(url, issue.id)
        assert 0 < len(known) < READERS  # taken while the worker was writing the ledger
        before = len(srv.messages)
        settings = make_settings(smtp(srv), database_url=url)
        store = pipeline.open_store(settings)
        resumed = sending.get_sendable(store, issue.number)
        assert resumed.status == "sending"
        sending.start_sending(settings, store, resumed)
        sending.run_worker(settings, store, resumed)
        assert store.get_issue(issue.number).status == "sent"
        assert store.delivery_counts(issue.id)["sent"] == READERS
        ids = {r.email: r.id for r in store.iter_subscribers()}
        store.close()
    again = [m.rcpt_tos[0] for m in srv.messages[before:]]
    received = Counter(m.rcpt_tos[0] for m in srv.messages)
    assert set(received) == set(addresses)  # nobody skipped
    # The resumed send went exactly to those the copy had not recorded as sent, once each:
    # the duplicates are at most the rows sent after the backup was taken.
    assert len(again) == len(set(again)) == READERS - len(known)
    assert {ids[a] for a in again} == set(ids.values()) - known
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= READERS - len(known)


def test_backup_refusals_and_folders(make_settings: Callable[..., Settings],
                                     tmp_path: Path) -> None:
    runner = CliRunner()
    settings = make_settings()
    pipeline.open_store(settings).close()
    args = ["--config", str(settings.path), "backup"]
    same = runner.invoke(cli, [*args, str(tmp_path / "n.db")])
    assert same.exit_code == 2 and "that is the database itself" in same.output
    folder = tmp_path / "nightly"
    folder.mkdir()
    named = runner.invoke(cli, [*args, str(folder)])
    assert named.exit_code == 0, named.output
    (made,) = folder.iterdir()
    assert re.fullmatch(r"n-\d{8}T\d{6}Z\.db", made.name) and str(made) in named.output
    nowhere = runner.invoke(cli, [*args, str(tmp_path / "no" / "such" / "dir" / "x.db")])
    assert nowhere.exit_code == 2 and nowhere.output.startswith("error: ")
    assert len(nowhere.output.strip().splitlines()) == 1


def test_backup_points_postgresql_at_pg_dump(make_settings: Callable[..., Settings],
                                             tmp_path: Path, pg_url: str) -> None:
    runner = CliRunner()
    pg = make_settings(database_url=pg_url)
    refused = runner.invoke(cli, ["--config", str(pg.path), "backup", str(tmp_path / "x")])
    assert refused.exit_code == 2
    assert refused.output.strip() == (
        "error: newsletter backup copies the embedded SQLite database; for PostgreSQL use "
        "pg_dump --format=custom (docs/deploy.md, Backups)")
