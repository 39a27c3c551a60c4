"""Send an issue through the ledger: claim rows, stamp messages, send, settle, back off."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

__all__ = ["Connection", "Delivery", "Lane", "Ledger", "Plan", "Policy", "Pool", "RateLimit",
           "SendResult", "Stamp", "Summary", "deliver", "settle_for"]

from newsletter import log
from newsletter.deliver.lanes import Connection, Lane, Pool, SendResult
from newsletter.deliver.outage import Leases, Outage
from newsletter.deliver.pacing import RateLimit
from newsletter.deliver.recorder import Recorder
from newsletter.models import Claimed, Settle, now_utc

T = TypeVar("T")

# Codes that say the address itself is bad; other 5xx (size, content, policy) fail the
# message without counting against the subscriber.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})


class Ledger(Protocol):
    def claim(self, issue_id: int, owner: str, limit: int, lease: timedelta,
              now: datetime) -> list[Claimed]: ...

    def settle(self, results: list[Settle], now: datetime, max_hard_bounces: int) -> None: ...

    def release(self, owner: str, now: datetime, retry_at: datetime, reply: str) -> int: ...

    def renew(self, owner: str, ids: list[int], until: datetime, now: datetime) -> set[int]: ...


class Stamp(Protocol):
    """A message built once per variant; per recipient only headers and links change."""

    def render(self, *, to_address: str, to_name: str, message_id: str, unsubscribe_url: str,
               preferences_url: str, date: datetime) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Plan:
    issue_id: int
    envelope_from: str
    variant_for: Callable[[tuple[str, ...]], Stamp | None]  # None: nothing for these sections
    urls_for: Callable[[Claimed], tuple[str, str]]  # (unsubscribe, preferences)
    message_id_for: Callable[[Claimed], str]
    # Asked before each claim and every few seconds: why to stop (paused, cancelled…), or None.
    halt: Callable[[], str | None] = lambda: None
    # Each message's own envelope sender (VERP); None: every one is from `envelope_from`.
    sender_for: Callable[[Claimed], str] | None = None

    def sender(self, row: Claimed) -> str:
        return self.sender_for(row) if self.sender_for else self.envelope_from


@dataclass(frozen=True, slots=True)
class Policy:
    batch_size: int = 200
    lease: timedelta = timedelta(minutes=5)
    retry_initial: timedelta = timedelta(minutes=5)
    retry_max: timedelta = timedelta(hours=4)
    give_up_after: timedelta = timedelta(days=4)
    max_hard_bounces: int = 1
    concurrency: int = 4
    rate: float = 0.0  # messages per second; 0 = unlimited
    # Run ledger calls on the event loop's own thread. Right for SQLite: an in-process call
    # that holds the GIL gains nothing from a worker thread and pays for the hand-over each
    # way. A networked database (PostgreSQL) waits on its socket, so it gets a thread.
    ledger_inline: bool = False
    # Which ledger errors are the database out of reach (the store's `unreachable`): waited
    # out and tried again, sending paused. Any other error ends the run as before.
    transient: Callable[[BaseException], bool] = lambda _exc: False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args) if self.ledger_inline else await asyncio.to_thread(fn, *args)


@dataclass(slots=True)
class Summary:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    stopped: str = ""  # why the run stopped early, for the operator
    halted: bool = False  # stopped by `plan.halt` (rows free now), not by the server

    def add(self, status: str) -> None:
        setattr(self, status, getattr(self, status) + 1)


def settle_for(row: Claimed, result: SendResult, policy: Policy, now: datetime) -> Settle:
    """Map a transport result to a ledger outcome, with exponential backoff for 4xx."""
    if result.status == "sent":
        return Settle(row.delivery_id, row.subscriber_id, "sent", result.code, result.reply)
    if result.status == "failed":
        return Settle(row.delivery_id, row.subscriber_id, "failed", result.code, result.reply,
                      hard_bounce=result.code in HARD_BOUNCE_CODES)
    reply = result.reply
    if result.status == "unknown":
        reply = f"outcome unknown, will retry (may arrive twice): {reply}"
    first = row.first_attempt_at or now
    if now - first >= policy.give_up_after:
        return Settle(row.delivery_id, row.subscriber_id, "failed", result.code,
                      f"gave up after {policy.give_up_after}: {reply}")
    wait = min(policy.retry_initial * (2 ** row.attempts), policy.retry_max)
    return Settle(row.delivery_id, row.subscriber_id, "deferred", result.code, reply,
                  next_attempt_at=now + wait)


async def deliver(ledger: Ledger, plan: Plan, pool: Pool, policy: Policy, *, owner: str,
                  clock: Callable[[], datetime] = now_utc,
                  on_progress: Callable[[Summary], None] | None = None,
                  limiter: RateLimit | None = None) -> Summary:
    """Work through every due row of the issue; stop early (rows deferred) if the server
    refuses connections or answers 421, or (rows freed at once) if `plan.halt` says so.
    `limiter` replaces the one built from `policy.rate` (a test's own clock)."""
    return await Delivery(ledger, plan, pool, policy, owner=owner, clock=clock,
                          on_progress=on_progress, limiter=limiter).run()


class Delivery:
    """One run over one issue's rows: a feeder that claims and renews leases, and
    `policy.concurrency` connection tasks that send and record. Used once."""

    def __init__(self, ledger: Ledger, plan: Plan, pool: Pool, policy: Policy, *, owner: str,
                 clock: Callable[[], datetime] = now_utc,
                 on_progress: Callable[[Summary], None] | None = None,
                 limiter: RateLimit | None = None) -> None:
        self.ledger, self.plan, self.pool, self.policy = ledger, plan, pool, policy
        self.owner, self.clock, self.on_progress = owner, clock, on_progress
        self.summary = Summary()
        self.inflight = 0  # workers between taking a row and having its outcome committed
        self.outage = Outage(policy.transient, plan.issue_id)
        self.recorder = Recorder(self._settle, busy=lambda: self.inflight, outage=self.outage)
        self.limiter = limiter or RateLimit(policy.rate)
        self.abort = ""  # the server is in trouble: held rows wait `retry_initial`
        self.halted = ""  # paused, cancelled or stopping: held rows are free again now
        self.queue: asyncio.Queue[Claimed | None] = asyncio.Queue()
        self.leases = Leases(policy.lease)  # held by us and not yet settled; lost ones
        # Claim the next batch while this one is being sent, so connections never sit idle
        # waiting for the slowest message of a batch.
        self.low_water = max(policy.batch_size // 2, policy.concurrency)
        self.wake = asyncio.Event()
        # Set once gather returns, not derived from the tasks: when one worker fails, gather
        # returns while the others still run, and the feeder must stop claiming all the same.
        self.workers_done = False

    async def _settle(self, outcomes: list[Settle]) -> None:
        policy = self.policy
        await policy.call(self.ledger.settle, outcomes, self.clock(), policy.max_hard_bounces)

    def _stop(self, why: str) -> None:
        """The server is in trouble: the first reason is the one the operator is told."""
        self.abort = self.abort or why

    async def run(self) -> Summary:
        tasks = [asyncio.create_task(self._work()) for _ in range(max(self.policy.concurrency, 1))]
        feeder = asyncio.create_task(self._feed(len(tasks)))
        try:
            await asyncio.gather(*tasks)
        finally:
            # Once the workers are gone nothing needs a lease renewed; rows still queued
            # after a stop are released below.
            self.workers_done = True
            self.wake.set()
            await feeder  # raises the feeder's own error, if it had one
        if self.abort or self.halted:
            await self._release()
        return self.summary

    async def _release(self) -> None:
        summary, policy = self.summary, self.policy
        summary.stopped = self.abort or self.halted
        summary.halted = not self.abort
        now = self.clock()
        retry_at = now + policy.retry_initial if self.abort else now
        freed = await self.outage.call("release", lambda: policy.call(
            self.ledger.release, self.owner, now, retry_at, summary.stopped))
        if self.abort:
            summary.deferred += freed
        log.event("deliver.stopped", level=30, issue=self.plan.issue_id,
                  reason=summary.stopped, released=freed)

    async def _work(self) -> None:
        lane = Lane()
        queue = self.queue
        try:
            while not self.abort and not self.halted:
                row: Claimed | None = lane.next
                lane.next = None
                if row is None:
                    row = None if lane.last else await queue.get()
                if row is None:
                    return
                if queue.qsize() <= self.low_water:
                    self.wake.set()
                if row.delivery_id in self.leases.lost:
                    self.leases.drop(row.delivery_id)
                    await lane.unannounce(row)
                    continue
                self.inflight += 1
                try:
                    await self._one(row, lane)
                finally:
                    self.inflight -= 1
                    self.recorder.nudge()
                if self.abort:
                    self.wake.set()
        finally:
            await lane.drop()

    def _upcoming(self, lane: Lane) -> tuple[str, str] | None:
        """Take the lane's next row now, so that its envelope can go out with this message's
        data; None when there is none or it will not be sent by SMTP."""
        if self.limiter.interval or lane.conn is None or not lane.conn.pipelining:
            # Nothing to announce on a connection that does not pipeline. When paced, the
            # server would sit in DATA for the whole pause (and may time out there), while
            # the pause, not round trips, sets the rate anyway.
            return None
        if lane.next is None and not lane.last and not self.queue.empty():
            row = self.queue.get_nowait()
            lane.last = row is None
            lane.next = row
        row = lane.next
        if (row is None or not row.email or row.delivery_id in self.leases.lost
                or self.plan.variant_for(row.sections) is None):
            return None
        lane.announced = row.delivery_id
        return self.plan.sender(row), row.email

    async def _one(self, row: Claimed, lane: Lane) -> None:
        """Send one row on the lane's connection (opened if there is none)."""
        plan, summary = self.plan, self.summary
        stamp = plan.variant_for(row.sections) if row.email else None
        if stamp is None:
            why = "no longer subscribed" if not row.email else "no chosen section here"
            await self.recorder.record(Settle(row.delivery_id, row.subscriber_id, "skipped",
                                              None, why))
            self.leases.drop(row.delivery_id)
            summary.add("skipped")
            return
        try:
            unsubscribe, preferences = plan.urls_for(row)
            message = stamp.render(to_address=row.email, to_name=row.name,
                                   message_id=plan.message_id_for(row),
                                   unsubscribe_url=unsubscribe, preferences_url=preferences,
                                   date=self.clock())
        except ValueError as exc:  # an address or name no header may carry
            result = SendResult("failed", None, f"message not built: {exc}")
            await lane.unannounce(row)
        else:
            await self.limiter.wait()
            if not await self._cleared(row, lane):
                return
            if lane.conn is None:
                try:
                    lane.conn = await self.pool.connect()
                except Exception as exc:  # noqa: BLE001 - told to the operator, rows kept
                    self._stop(f"cannot connect: {exc}")
                    return
            lane.announced = None
            result = await lane.conn.send(plan.sender(row), row.email, message,
                                          self._upcoming(lane))
        if result.status == "failed" and result.reply.startswith("MAIL:"):
            # The server refuses our sender, not this reader: stop, fail no one.
            result = SendResult("deferred", result.code, result.reply, close=True)
            self._stop(f"server refused the sender: {result.reply}")
        outcome = settle_for(row, result, self.policy, self.clock())
        outages = self.outage.count
        # Recorded before this lane sends again: the next message's data waits for it.
        await self.recorder.record(outcome)
        self.leases.drop(row.delivery_id)
        if self.outage.count != outages:  # the server may have tired of waiting in DATA
            await lane.drop()
        summary.add(outcome.status)
        if self.on_progress:
            try:
                self.on_progress(summary)
            except Exception as exc:  # a display that reads the ledger: stale in an outage
                if not self.outage.transient(exc):
                    raise
        if result.close:
            await lane.drop()
            if result.code == 421:
                self._stop(f"server closed the session: {result.code} {result.reply}")

    async def _cleared(self, row: Claimed, lane: Lane) -> bool:
        """Whether `row` may go out now: the ledger answering, and the row's lease confirmed
        with time to spare. Else the lane lets its connection go (the server would wait in
        DATA for an envelope announced ahead) and waits; False: the row must not be sent."""
        leases, up = self.leases, self.outage.up
        if up.is_set() and leases.sendable(row.delivery_id):
            return True
        await lane.drop()
        while not (self.abort or self.halted):  # held rows are released when the run ends
            if row.delivery_id in leases.lost:
                leases.drop(row.delivery_id)
                return False
            if up.is_set() and leases.sendable(row.delivery_id):
                return True
            self.wake.set()  # the feeder renews at once (or when the outage allows)
            await leases.wait(0.5)
        return False

    async def _feed(self, workers: int) -> None:
        policy, queue, leases, outage = self.policy, self.queue, self.leases, self.outage
        closing = False
        renew_every = max(policy.lease.total_seconds() / 3, 0.05)
        next_renew = time.monotonic() + renew_every
        next_halt = time.monotonic()
        exhausted = False
        try:
            while True:
                now = time.monotonic()
                if leases and (now >= next_renew or leases.wanted) and now >= outage.retry_at:
                    renewed = await outage.attempt("renew", self._renew)
                    next_renew = time.monotonic() + renew_every if renewed else outage.retry_at
                if not closing:
                    if not self.abort and not exhausted and (queue.qsize() <= self.low_water
                                                             or time.monotonic() >= next_halt):
                        try:  # a stop needs no database; a pause is seen once it is back
                            reason = await policy.call(self.plan.halt)
                        except Exception as exc:
                            if not outage.failed("halt", exc):
                                raise
                            reason = None
                        next_halt = time.monotonic() + 2.0
                        if reason:
                            self.halted = self.halted or reason
                    if (not (self.abort or self.halted or exhausted)
                            and queue.qsize() <= self.low_water
                            and time.monotonic() >= outage.retry_at):
                        claimed = await outage.attempt("claim", self._claim)
                        exhausted = claimed == 0  # None: the ledger was away, not empty
                        if claimed:
                            continue
                    closing = bool(self.abort or self.halted or (exhausted and queue.empty()))
                    if closing:
                        for _ in range(workers):
                            queue.put_nowait(None)
                if (closing and not leases) or self.workers_done:
                    return
                self.wake.clear()
                wait = min(renew_every, 2.0)
                if not outage.up.is_set():
                    wait = min(wait, max(outage.retry_at - time.monotonic(), 0.01))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.wake.wait()
        except BaseException:
            self._stop("the ledger failed")  # no lane may wait for a renewal that never comes
            raise
        finally:
            if not closing:  # the feeder failed: workers must not wait for rows forever
                for _ in range(workers):
                    queue.put_nowait(None)

    async def _claim(self) -> int:
        """Lease the next batch into the queue; how many rows the ledger gave (0: none due)."""
        policy, leases = self.policy, self.leases
        asked_at = time.monotonic()
        rows = await policy.call(self.ledger.claim, self.plan.issue_id, self.owner,
                                 policy.batch_size, policy.lease, self.clock())
        # A row we still hold (queued, in a lane or being sent) can come back only after its
        # lease ran out: it is ours again, and its copy already here is the one to send,
        # never a second.
        fresh = [r for r in rows if r.delivery_id not in leases]
        leases.lost.difference_update(r.delivery_id for r in rows)
        leases.confirm((r.delivery_id for r in rows), asked_at)
        for row in fresh:
            self.queue.put_nowait(row)
        return len(rows)

    async def _renew(self) -> bool:
        # A lease must outlive the rows waiting in our queue, however slow the server:
        # renew it, and drop any row another worker took after our lease ran out.
        leases, asked, asked_at = self.leases, self.leases.ids(), time.monotonic()
        async with self.recorder.own_rows:
            kept = await self.policy.call(self.ledger.renew, self.owner, asked,
                                          self.clock() + self.policy.lease, self.clock())
        leases.confirm(kept & leases.until.keys(), asked_at)  # not rows settled meanwhile
        gone = (set(asked) - kept) & leases.until.keys()
        if gone:
            leases.lost.update(gone)
            log.event("deliver.lease_lost", level=30, issue=self.plan.issue_id, rows=len(gone))
        return True

