"""Leases outlive slow batches, and a worker told to stop gives its rows back at once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from smtpserver import SmtpTestServer

from newsletter.config import Settings
from newsletter.deliver.engine import Policy, Summary, deliver
from newsletter.pipeline import sending
from newsletter.pipeline.transports import pool_from_settings
from tests.helpers.sending import r, smtp_settings, start


def test_a_batch_slower_than_its_lease_is_never_sent_twice(
        make_settings: Callable[..., Settings]) -> None:
    """Two workers, each batch taking ~3 s against a 1 s lease: without renewal the other
    worker takes the rows that wait in the queue and both send them."""
    with SmtpTestServer(delay=0.05) as srv:  # ~0.15 s a message
        settings = smtp_settings(make_settings, srv)
        store, issue = start(settings, 40)
        addresses = [r(i) for i in range(40)]
        policy = Policy(batch_size=20, lease=timedelta(seconds=1), concurrency=1)
        summaries: list[Summary] = []

        def one_worker(name: str) -> None:
            plan = sending.make_plan(settings, store, issue)
            summaries.append(asyncio.run(deliver(store, plan, pool_from_settings(settings),
                                                 policy, owner=name)))

        threads = [threading.Thread(target=one_worker, args=(f"w{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        received = Counter(m.rcpt_tos[0] for m in srv.messages)
        assert received == Counter(addresses)  # every address, each exactly once
        assert sum(x.sent for x in summaries) == 40
        assert store.delivery_counts(issue.id)["sent"] == 40
        store.close()


def test_a_row_reclaimed_while_still_queued_here_is_sent_once(
        make_settings: Callable[..., Settings]) -> None:
    """The worker's clock jumps past its own leases after the first claim (a stall longer
    than the lease, compressed): its next claim takes back the rows still waiting in its
    own queue. They are its own again, and each must go out once, not once per copy."""
    with SmtpTestServer() as srv:
        settings = smtp_settings(make_settings, srv)
        store, issue = start(settings, 30)
        addresses = [r(i) for i in range(30)]
        began = datetime.now(UTC)
        claims = [0]
        real_claim = store.claim

        def claim(*args: object) -> object:
            claims[0] += 1
            return real_claim(*args)  # type: ignore[arg-type]

        store.claim = claim  # type: ignore[method-assign]  # counts, changes nothing

        def clock() -> datetime:  # ten minutes later from the second claim on
            return began + (timedelta(minutes=10) if claims[0] >= 1 else timedelta(0))

        # A lease of five minutes in real time: no renewal runs during the test.
        policy = Policy(batch_size=10, lease=timedelta(minutes=5), concurrency=1,
                        ledger_inline=True)
        plan = sending.make_plan(settings, store, issue)
        summary = asyncio.run(deliver(store, plan, pool_from_settings(settings), policy,
                                      owner="w", clock=clock))
        assert claims[0] >= 3  # the second claim ran while rows of the first were queued
        assert Counter(m.rcpt_tos[0] for m in srv.messages) == Counter(addresses)
        assert summary.sent == 30 and store.delivery_counts(issue.id)["sent"] == 30
        store.close()


def test_sigterm_stops_a_worker_mid_send_and_frees_its_rows(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer(delay=0.01) as srv:
        settings = smtp_settings(make_settings, srv, "batch_size = 50")
        store, issue = start(settings, 400)
        addresses = [r(i) for i in range(400)]
        cmd = [sys.executable, "-m", "newsletter", "--config", str(settings.path),
               "--log-level", "WARNING", "worker", "--poll", "0.2"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while len(srv.messages) < 30:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the worker sent nothing"
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGTERM)
            stopped_at = time.monotonic()
            assert proc.wait(timeout=20) == 0
            # Within the halt check (2 s) plus the messages in flight, not the whole list.
            assert time.monotonic() - stopped_at < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
        counts = store.delivery_counts(issue.id)
        assert counts["sending"] == 0  # nothing left leased to a process that is gone
        assert 30 <= counts["sent"] < 400
        assert store.next_due(issue.id) <= datetime.now(UTC)  # the rest is due again now
        sending.run_worker(settings, store, issue)
        received = Counter(m.rcpt_tos[0] for m in srv.messages)
        assert received == Counter(addresses)  # a clean stop sends no one twice
        assert store.get_issue(issue.number).status == "sent"  # type: ignore[union-attr]
        store.close()
