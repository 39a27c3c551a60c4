"""Chaos on the scale-out set-up: 10,000 messages, three worker processes on PostgreSQL, while
the SMTP server drops connections after the dot and answers 421 at random, two workers are
SIGKILLed and every database connection is terminated twice. Nobody is skipped, everybody has
exactly one recorded outcome, and duplicates stay within the documented bound."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline import sending
from newsletter.store import schema as s
from newsletter.store.database import Store
from tests.helpers.sending import seed, smtp_toml
from tests.helpers.waiting import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
TOTAL, WORKERS, CONCURRENCY = 10_000, 3, 4
FAULT_RATE = 0.001  # per message, for each of "drop" and "421": about ten of each


class Faults:
    """The server's random faults, remembered per recipient (the server's RNG is seeded)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.drops: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def __call__(self, rcpts: set[str]) -> str | None:
        with self.lock:
            roll = self.rng.random()
            (rcpt,) = rcpts
            if roll < FAULT_RATE:
                self.drops[rcpt] += 1  # no reply after the dot: "outcome unknown"
                return "drop"
            if roll < 2 * FAULT_RATE:
                self.refused[rcpt] += 1  # 421: not accepted, the client tries again later
                return "421"
            return None


def _terminate_every_connection(admin: sa.Engine) -> int:
    with admin.connect() as conn:
        killed = conn.execute(sa.text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'")).scalar_one()
        conn.commit()
    return int(killed)


def test_chaos_every_subscriber_one_outcome_duplicates_bounded(
        make_settings: Callable[..., Settings], pg_url: str, tmp_path: Path) -> None:
    faults = Faults(seed=10_000)
    with SmtpTestServer(fault_after_data=faults) as srv:
        settings = make_settings(smtp_toml(
            srv, f"concurrency = {CONCURRENCY}\ntimeout = 5",
            "batch_size = 100\nlease_seconds = 10\nretry_initial = 1\nretry_max = 2"),
            database_url=pg_url)
        store = Store(pg_url)
        addresses = seed(store, TOTAL)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        cmd = [sys.executable, "-m", "newsletter", "--config", str(settings.path),
               "--log-level", "WARNING", "worker", "--poll", "0.2"]
        logs = [open(tmp_path / f"worker{i}.log", "wb") for i in range(WORKERS + 2)]  # noqa: SIM115

        def start(i: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=logs[i])

        workers = [start(i) for i in range(WORKERS)]
        admin = sa.create_engine(pg_url)
        kills = terminations = 0
        try:
            # The moments, as shares of the messages sent: two kills and two terminations,
            # in a random order each run (seeded, so a failure can be replayed).
            plan = sorted(random.Random(7).sample(range(10, 80), 4))
            for n, share in enumerate(plan):
                wait_for(lambda share=share: len(srv.messages) >= TOTAL * share // 100, 240,
                         f"{share}% received")
                if n in (0, 2):  # SIGKILL a worker; a replacement starts, as systemd would
                    victim = workers[kills]
                    os.kill(victim.pid, signal.SIGKILL)
                    victim.wait(timeout=10)
                    workers.append(start(WORKERS + kills))
                    kills += 1
                else:
                    assert _terminate_every_connection(admin) > 0
                    terminations += 1
            wait_for(lambda: store.delivery_counts(issue.id)["sent"] == TOTAL, 300,
                     "every row sent")
            # No worker died of the terminated connections or the faults: only the killed.
            assert [p.poll() for p in workers[kills:]] == [None] * WORKERS
        finally:
            for proc in workers:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in workers:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for log in logs:
                log.close()
            admin.dispose()
        assert (kills, terminations) == (2, 2)
        # Every subscriber: exactly one ledger row, and it says sent.
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(s.deliveries.c.subscriber_id, s.deliveries.c.status)
                                .where(s.deliveries.c.issue_id == issue.id)).all()
        assert len(rows) == TOTAL and len({r.subscriber_id for r in rows}) == TOTAL
        assert {r.status for r in rows} == {"sent"}
        # The kept counts and sends ring (store/counting.py) say the same: nothing lost or
        # counted twice by the kills, the terminated sessions or the replayed commits.
        assert store.delivery_counts(issue.id) == {**dict.fromkeys(s.DELIVERY_STATUSES, 0),
                                                   "sent": TOTAL}
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.sum(s.delivery_sends.c.n))).scalar() == TOTAL
        # Nobody skipped: every address got the issue. A 421 after the dot is a refusal, not
        # a delivery, so those copies are not counted as delivered.
        received = Counter(m.rcpt_tos[0] for m in srv.messages)
        received.subtract(faults.refused)
        assert {a for a, n in received.items() if n > 0} == set(addresses)
        duplicates = sum(n - 1 for n in received.values() if n > 1)
        # The bound (README, Delivery guarantee): one per connection of each killed process,
        # plus each "outcome unknown" (a dropped reply after the dot) sent again.
        bound = kills * CONCURRENCY + sum(faults.drops.values())
        print(f"chaos: {duplicates} duplicates (bound {bound}); {sum(faults.drops.values())} "
              f"dropped after the dot, {sum(faults.refused.values())} refused with 421")
        assert duplicates <= bound, (duplicates, bound)
        assert sum(faults.drops.values()) > 0 and sum(faults.refused.values()) > 0
        assert [p.returncode for p in workers[:kills]] == [-signal.SIGKILL] * kills
        tracebacks = [p.name for p in tmp_path.glob("worker*.log")
                      if b"Traceback" in p.read_bytes()]
        assert tracebacks == []
        store.close()
