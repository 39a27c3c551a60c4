"""Scale-out on PostgreSQL: one issue through the whole pipeline (ledger, variants, DKIM, SMTP)
to Postfix's smtp-sink with 1, 2 and 4 `newsletter worker` processes sharing a PostgreSQL
ledger, against the single SQLite process (`sending.run_worker`, what `newsletter issue send`
runs with the default one worker), in the same run; then the time to enqueue 1,000,000
subscribers (one INSERT … SELECT) on PostgreSQL and on SQLite, and what a worker's claim and
its idle poll cost on that ledger as the send progresses.

    python bench/scale.py                                    # 20,000 subscribers x 3, 1M enqueue
    python bench/scale.py --subscribers 5000 --repeat 1 --no-million     # quick look

PostgreSQL: --pg-url (default postgresql+psycopg://postgres@127.0.0.1:5432/test); every case
runs in a schema of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402
from common import (  # noqa: E402
    CLK,
    ROOT,
    proc_cpu,
    seed,
    smtp_sink,
    write_config,
    write_dkim_key,
)

from newsletter import log, pipeline  # noqa: E402
from newsletter.config import Settings, load_settings  # noqa: E402
from newsletter.models import Issue  # noqa: E402
from newsletter.pipeline import sending  # noqa: E402
from newsletter.store import schema as s  # noqa: E402
from newsletter.store.database import Store  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
WORKER_APP = "bench-scale-worker"


# -- processes and CPU -------------------------------------------------------------------------

def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process (server, background workers, backends)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    out[int(entry.name)] = proc_cpu(int(entry.name))
    return out


def machine_busy() -> float:
    """Seconds of CPU time, summed over cores, not spent idle (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK  # minus idle and iowait


@dataclass
class CpuMark:
    wall: float
    busy: float
    sink: float
    postgres: dict[int, float]
    senders: float
    harness: float  # this process, when it only watches

    @classmethod
    def take(cls, sink_pid: int, senders: float, harness: float = 0.0) -> CpuMark:
        return cls(time.perf_counter(), machine_busy(), proc_cpu(sink_pid), postgres_cpu(),
                   senders, harness)


# -- databases ---------------------------------------------------------------------------------

def with_query(url: str, **params: str) -> str:
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


@contextlib.contextmanager
def pg_schema(admin: sa.Engine, base_url: str, label: str) -> Iterator[str]:
    """A fresh schema; yields the URL whose search_path points at it; dropped afterwards."""
    name = f"bench_scale_{label}_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
    try:
        yield with_query(base_url, options=f"-csearch_path%3D{name}")
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")


@dataclass
class Prepared:
    settings: Settings
    store: Store
    issue: Issue


def prepare(config: Path, subscribers: int) -> Prepared:
    """The example articles collected, subscribers seeded, an issue built (not yet sending)."""
    settings = load_settings(config, environ={})
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    assert report.ok, report.errors
    seed(store, subscribers)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    return Prepared(settings, store, issue)


# -- one send ----------------------------------------------------------------------------------

@dataclass
class Case:
    label: str
    database: str  # sqlite, postgresql
    workers: int  # 0: run_worker in this process
    sent: int = 0
    wall: float = 0.0
    machine: float = 0.0  # cores busy on average (CPU seconds over all cores / wall)
    senders: float = 0.0
    postgres: float = 0.0
    sink: float = 0.0
    other: float = 0.0  # cores busy with anything else: kernel (loopback TCP), other processes
    enqueue: float = 0.0
    repeats: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sent / self.wall if self.wall else 0.0


def _settle(p: Prepared, n: int) -> tuple[int, int]:
    """(sent rows, rows attempted more than once) — the latter are possible duplicates."""
    d = s.deliveries.c
    with p.store.engine.connect() as conn:
        sent = conn.execute(sa.select(sa.func.count()).where(
            d.issue_id == p.issue.id, d.status == "sent")).scalar() or 0
        again = conn.execute(sa.select(sa.func.count()).where(
            d.issue_id == p.issue.id, d.attempts > 1)).scalar() or 0
    assert sent == n, f"{sent} of {n} sent"
    return sent, again


def last_sent_at(p: Prepared) -> datetime:
    d = s.deliveries.c
    with p.store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(d.sent_at))
                            .where(d.issue_id == p.issue.id)).scalar_one()


def send_in_process(p: Prepared, sink_pid: int) -> tuple[float, CpuMark, CpuMark, int, float]:
    """The reference: run_worker in this process, as `newsletter issue send N` does."""
    start_enqueue = time.perf_counter()
    rows = sending.start_sending(p.settings, p.store, p.issue)
    enqueue = time.perf_counter() - start_enqueue
    issue = sending.get_sendable(p.store, p.issue.number)
    before = CpuMark.take(sink_pid, time.process_time())
    summary = sending.run_worker(p.settings, p.store, issue)
    after = CpuMark.take(sink_pid, time.process_time())
    assert summary.sent == rows, (summary, rows)
    return enqueue, before, after, summary.sent, after.wall - before.wall


def worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wait_ready(procs: list[subprocess.Popen[bytes]], store: Store, timeout: float = 60) -> None:
    """Until every worker holds a database connection and has gone quiet (imports done, first
    poll made), so that process start-up is not timed."""
    deadline = time.monotonic() + timeout
    q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :app")
    while True:
        with store.engine.connect() as conn:
            connected = conn.execute(q, {"app": WORKER_APP}).scalar() or 0
        if connected >= len(procs):
            first = [proc_cpu(w.pid) for w in procs]
            time.sleep(0.5)
            if all(proc_cpu(w.pid) - cpu < 0.05 for w, cpu in zip(procs, first, strict=True)):
                return
        dead = [w.returncode for w in procs if w.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise SystemExit(f"workers did not start (exit codes {dead})")
        time.sleep(0.1)


def send_with_workers(p: Prepared, config: Path, count: int,
                      sink_pid: int) -> tuple[float, CpuMark, CpuMark, int, float]:
    """`count` `newsletter worker` processes (polling every 0.2 s), started and idle before
    the issue is enqueued; timed from the end of the enqueue to the last row's sent_at."""
    cmd = [sys.executable, "-m", "newsletter", "--config", str(config), "--log-level",
           "WARNING", "worker", "--poll", "0.2"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=worker_env(), stdout=subprocess.DEVNULL)
             for _ in range(count)]
    n, wall = 0, 0.0
    issue_id = p.issue.id
    assert issue_id is not None
    try:
        wait_ready(procs, p.store)

        def senders() -> float:
            return sum(proc_cpu(w.pid) for w in procs)

        start_enqueue = time.perf_counter()
        rows = sending.start_sending(p.settings, p.store, p.issue)
        enqueue = time.perf_counter() - start_enqueue
        assert rows > 0, rows
        before = CpuMark.take(sink_pid, senders(), time.process_time())
        started_at = datetime.now(UTC)
        deadline = time.monotonic() + 3600
        # The worker that settles the last row marks the issue sent. Watching that (one row by
        # key, 4 times a second) keeps this process's load on PostgreSQL negligible.
        while (status := p.store.get_issue(p.issue.number, with_articles=False)) is None \
                or status.status != "sent":
            if any(w.poll() is not None for w in procs) or time.monotonic() > deadline:
                raise SystemExit(f"workers stopped early: {p.store.delivery_counts(issue_id)}")
            time.sleep(0.25)
        after = CpuMark.take(sink_pid, senders(), time.process_time())
        # The watch above lands up to 250 ms late: the wall time comes from the ledger itself.
        wall = (last_sent_at(p) - started_at).total_seconds()
        n = p.store.delivery_counts(issue_id)["sent"]
    finally:
        for w in procs:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in procs:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    return enqueue, before, after, n, wall


def run_case(case: Case, root: Path, admin: sa.Engine | None, pg_url: str, port: int,
             sink_pid: int, *, n: int, concurrency: int, batch_size: int,
             dkim_key: Path | None) -> None:
    folder = root / case.label.replace(" ", "-").replace("×", "x")
    with contextlib.ExitStack() as stack:
        if case.database == "postgresql":
            assert admin is not None
            url = stack.enter_context(pg_schema(admin, pg_url, f"w{case.workers}"))
        else:
            url = f"sqlite:///{folder / 'n.db'}"
        worker_url = with_query(url, application_name=WORKER_APP) \
            if case.database == "postgresql" else url
        config = write_config(folder, worker_url, port, concurrency=concurrency,
                              batch_size=batch_size, dkim_key=dkim_key)
        bench_config = write_config(folder / "bench", url, port, concurrency=concurrency,
                                    batch_size=batch_size, dkim_key=dkim_key)
        p = prepare(bench_config, n)
        try:
            if case.workers == 0:
                enqueue, before, after, sent, wall = send_in_process(p, sink_pid)
            else:
                enqueue, before, after, sent, wall = send_with_workers(p, config, case.workers,
                                                                       sink_pid)
            _, again = _settle(p, n)
            status = p.store.get_issue(p.issue.number, with_articles=False)
            assert status is not None and status.status == "sent", status
        finally:
            p.store.close()
    shutil.rmtree(folder, ignore_errors=True)
    if not case.repeats or n / wall > case.rate:  # best of the repeats
        case.sent, case.wall, case.enqueue = sent, wall, enqueue
        case.machine = (after.busy - before.busy) / (after.wall - before.wall)  # cores busy
        case.senders = after.senders - before.senders
        case.sink = after.sink - before.sink
        case.postgres = sum(v - before.postgres.get(pid, 0.0)
                            for pid, v in after.postgres.items())
        span = after.wall - before.wall
        case.other = (after.busy - before.busy - (after.senders - before.senders)
                      - (after.sink - before.sink) - (after.harness - before.harness)
                      - case.postgres) / span
        case.notes = [f"{again} rows attempted twice"] if again else []
    case.repeats += 1


# -- enqueue 1,000,000 -------------------------------------------------------------------------

@dataclass
class EnqueueResult:
    database: str
    rows: int
    seed: float
    enqueue: float
    again: float  # enqueue once more: every row exists, ON CONFLICT DO NOTHING
    depth: list[tuple[int, float, float]] = field(default_factory=list)  # (sent, claim, poll)


def best_of(fn: Callable[[], object], times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def ledger_depth(store: Store, issue_id: int, count: int, batch: int) -> list[tuple[int, float,
                                                                                      float]]:
    """What a worker's claim and its idle poll cost as the send progresses through the ledger:
    rows marked sent in id order (then VACUUM ANALYZE, as autovacuum would), then timed."""
    d = s.deliveries.c
    out = []
    with store.engine.connect() as conn:
        first = conn.execute(sa.select(sa.func.min(d.id)).where(d.issue_id == issue_id)).scalar()
    for sent in (0, count // 2, count - 5 * batch):
        with store.engine.begin() as conn:
            conn.execute(s.deliveries.update().where(d.issue_id == issue_id, d.id < first + sent)
                         .values(status="sent"))
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE deliveries"
                                 if store.engine.dialect.name == "postgresql" else "ANALYZE")

        claim = float("inf")
        for _ in range(3):
            now = datetime.now(UTC)
            start = time.perf_counter()
            rows = store.claim(issue_id, "bench-depth", batch, timedelta(minutes=5), now)
            claim = min(claim, time.perf_counter() - start)
            assert len(rows) == batch, len(rows)
            store.release("bench-depth", now, now, "bench: given back")  # due again

        def poll() -> None:
            assert store.issues_with_due_rows(datetime.now(UTC)) == [issue_id]

        out.append((sent, claim, best_of(poll)))
    return out


def time_enqueue(url: str, database: str, folder: Path, count: int,
                 batch: int) -> EnqueueResult:
    config = write_config(folder, url, 25, concurrency=1, batch_size=batch, dkim_key=None)
    settings = load_settings(config, environ={})
    store = pipeline.open_store(settings)
    try:
        assert pipeline.collect(settings, store).ok
        seeded = seed(store, count)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        # As start_sending does: workers poll only issues being sent.
        store.set_issue_status(issue.number, "sending", datetime.now(UTC))
        start = time.perf_counter()
        rows = store.enqueue(issue.id, datetime.now(UTC))
        enqueue = time.perf_counter() - start
        assert rows == count, rows
        start = time.perf_counter()
        assert store.enqueue(issue.id, datetime.now(UTC)) == 0
        again = time.perf_counter() - start
        depth = ledger_depth(store, issue.id, count, batch)
    finally:
        store.close()
    return EnqueueResult(database, count, seeded, enqueue, again, depth)


# -- report ------------------------------------------------------------------------------------

def us_per(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:,.0f}" if n else "—"


def print_cases(cases: list[Case], cores: int, n: int, concurrency: int, batch: int,
                dkim: bool) -> None:
    ref = cases[0]
    print(f"\n{n:,} subscribers, one issue, [smtp] concurrency {concurrency} per process, "
          f"[delivery] batch_size {batch}, DKIM {'on' if dkim else 'off'}; CPU from /proc "
          f"during the send (machine: all {cores} cores, 100% = one core; other: kernel "
          f"outside process time, e.g. loopback TCP, and any other process)\n")
    print("| case | processes | SMTP connections | msg/s | vs SQLite single process "
          "| machine CPU | CPU µs/msg: senders | PostgreSQL | smtp-sink | other CPU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c in cases:
        procs = max(c.workers, 1)
        pg = us_per(c.postgres, c.sent) if c.database == "postgresql" else "—"
        note = f" ({'; '.join(c.notes)})" if c.notes else ""
        print(f"| {c.label}{note} | {procs} | {procs * concurrency} | {c.rate:,.0f} "
              f"| {c.rate / ref.rate:.2f}x | {c.machine * 100:.0f}% "
              f"| {us_per(c.senders, c.sent)} | {pg} | {us_per(c.sink, c.sent)} "
              f"| {max(c.other, 0) * 100:.0f}% |",
              flush=True)
    noisy = [c.label for c in cases if c.other > 0.2]
    if noisy:
        print(f"\nwarning: something else used more than 20% of a core during: "
              f"{'; '.join(noisy)} — those figures are not representative; run again on a "
              f"quiet machine")


def print_enqueue(results: list[EnqueueResult], batch: int) -> None:
    print("\n| database | subscribers | seed (INSERT … SELECT) | enqueue (store.enqueue) "
          "| rows/s | enqueue again (all rows exist) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r.database} | {r.rows:,} | {r.seed:.1f} s | {r.enqueue:.1f} s "
              f"| {r.rows / r.enqueue:,.0f} | {r.again:.1f} s |", flush=True)
    print(f"\nOn that ledger (one issue, {results[0].rows:,} rows), best of 3: a worker's claim "
          f"of {batch} rows (store.claim) and its poll (store.issues_with_due_rows), as the "
          f"send progresses\n")
    print("| database | rows already sent | claim | claim per message | poll |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        for sent, claim, poll in r.depth:
            print(f"| {r.database} | {sent:,} | {claim * 1e3:.1f} ms "
                  f"| {claim / batch * 1e6:.0f} µs | {poll * 1e3:.0f} ms |", flush=True)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--workers", type=ints, default=[1, 2, 4],
                        help="numbers of `newsletter worker` processes on PostgreSQL")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="[smtp] concurrency of every sending process")
    parser.add_argument("--batch-size", type=int, default=200, help="[delivery] batch_size")
    parser.add_argument("--dkim", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of every case, interleaved; the best is kept")
    parser.add_argument("--pg-url", default=os.environ.get("NEWSLETTER_BENCH_PG_URL", PG_URL))
    parser.add_argument("--cases", action=argparse.BooleanOptionalAction, default=True,
                        help="the throughput cases (SQLite, PostgreSQL with 1, 2, 4 workers)")
    parser.add_argument("--million", action=argparse.BooleanOptionalAction, default=True,
                        help="time enqueueing --million-count subscribers on both databases")
    parser.add_argument("--million-count", type=int, default=1_000_000)
    args = parser.parse_args()

    log.setup("WARNING")
    cores = os.cpu_count() or 1
    admin = sa.create_engine(args.pg_url)
    with admin.connect() as conn:
        pg_version = conn.exec_driver_sql("SHOW server_version").scalar()
    print(f"{platform.machine()}, {cores} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, PostgreSQL {pg_version} (same machine)")
    if cores < max(args.workers):
        print(f"note: {max(args.workers)} worker processes on {cores} cores — they share the "
              f"cores with PostgreSQL and smtp-sink, so throughput cannot grow linearly")

    cases = [Case("SQLite, run_worker in-process (reference)", "sqlite", 0),
             Case("PostgreSQL, run_worker in-process", "postgresql", 0)]
    cases += [Case(f"PostgreSQL, {k} × `newsletter worker`", "postgresql", k)
              for k in args.workers]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
                smtp_sink() as sink:
            root = Path(tmp)
            dkim_key = write_dkim_key(root) if args.dkim else None
            for _ in range(args.repeat if args.cases else 0):
                for case in cases:  # interleaved, so drift hits every case alike
                    run_case(case, root, admin, args.pg_url, sink.port, sink.pid,
                             n=args.subscribers, concurrency=args.concurrency,
                             batch_size=args.batch_size, dkim_key=dkim_key)
                    print(f"  {case.label}: {case.rate:,.0f} msg/s", flush=True)
            if args.cases:
                print_cases(cases, cores, args.subscribers, args.concurrency, args.batch_size,
                            args.dkim)
            if args.million:
                results = []
                with pg_schema(admin, args.pg_url, "million") as url:
                    results.append(time_enqueue(url, "PostgreSQL", root / "pg-million",
                                                args.million_count, args.batch_size))
                results.append(time_enqueue(f"sqlite:///{root / 'million' / 'n.db'}",
                                            "SQLite", root / "million", args.million_count,
                                            args.batch_size))
                print_enqueue(results, args.batch_size)
    finally:
        admin.dispose()


if __name__ == "__main__":
    main()
