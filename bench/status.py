"""/metrics and /admin/api/status on an empty ledger, then on a long one, SQLite and PostgreSQL.

    python bench/status.py                         # 300,000 ledger rows, both databases
    python bench/status.py --rows 60000 --requests 50 --no-pg     # quick look

Per database, in one run: a fresh database (SQLite file; PostgreSQL schema of its own at
--pg-url, default NEWSLETTER_BENCH_PG_URL or postgresql+psycopg://postgres@127.0.0.1:5432/test,
dropped at the end) with --subscribers readers and --rows / --subscribers issues. The two
endpoints are timed over HTTP (uvicorn in a thread, one keep-alive client, the admin token)
first with every issue a draft and the ledger empty — the reference — then once the ledger
holds the rows: every issue enqueued by the store's own INSERT … SELECT, all but the last
marked sent (1% failed) as a finished send leaves them, the last one being sent (part of it
claimed and settled through the store as workers do, so the send rate has something to show).
The ratio is the median time on the long ledger over the median on the empty one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import uvicorn  # noqa: E402
from common import seed, write_config  # noqa: E402

from newsletter import log  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.models import Issue, Settle  # noqa: E402
from newsletter.pipeline.webapp import web_app  # noqa: E402
from newsletter.store import schema as s  # noqa: E402
from newsletter.store.database import Store  # noqa: E402

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TOKEN = "bench-admin-token-0123456789abcdef"
ENDPOINTS = ("/metrics", "/admin/api/status")
HOST = "meridian.example.org"  # write_config's base_url: the Host the app answers


@contextlib.contextmanager
def served(app: object) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           access_log=False, ws="none"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise SystemExit("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def timed(client: httpx.Client, path: str, requests: int) -> list[float]:
    """Milliseconds per request, after a few unmeasured ones (connections, caches)."""
    for _ in range(3):
        assert client.get(path).status_code == 200, path
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 200, (path, r.status_code)
    return times


@dataclass
class Case:
    database: str
    rows: int
    empty: dict[str, list[float]]
    full: dict[str, list[float]]
    fill_s: float


def measure(store: Store, settings: object, requests: int) -> dict[str, list[float]]:
    app = web_app(settings, store)  # type: ignore[arg-type]
    with served(app) as base, httpx.Client(
            base_url=base, headers={"authorization": f"Bearer {TOKEN}", "host": HOST},
            timeout=60) as client:
        # Interleaved, so a slow moment of the machine falls on both endpoints alike.
        out: dict[str, list[float]] = {path: [] for path in ENDPOINTS}
        for _ in range(requests // 10):
            for path in ENDPOINTS:
                out[path] += timed(client, path, 10)
    return out


def fill(store: Store, issues: list[Issue], subscribers: int) -> None:
    """Every issue enqueued; all but the last finished (99% sent, 1% failed); the last one
    being sent, a tenth of it claimed and settled through the store."""
    now = datetime.now(UTC)
    d = s.deliveries.c
    for n, issue in enumerate(issues):
        assert issue.id is not None
        store.enqueue(issue.id, now - timedelta(days=7 * (len(issues) - n)))
        store.set_issue_status(issue.number, "sending", now)
        if n == len(issues) - 1:
            break
        when = now - timedelta(days=7 * (len(issues) - n) - 1)
        with store.engine.begin() as conn:
            conn.execute(s.deliveries.update().where(d.issue_id == issue.id)
                         .values(status="sent", attempts=1, sent_at=when, updated_at=when,
                                 first_attempt_at=when, last_code=250, last_reply="250 ok"))
            conn.execute(s.deliveries.update().where(d.issue_id == issue.id,
                                                     d.subscriber_id % 100 == 0)
                         .values(status="failed", sent_at=None, last_code=550,
                                 last_reply="550 5.1.1 no such user"))
        store.set_issue_status(issue.number, "sent", when)
    last = issues[-1]
    assert last.id is not None
    for _ in range(subscribers // 10 // 500):
        rows = store.claim(last.id, "bench", 500, timedelta(minutes=5), now)
        store.settle([Settle(r.delivery_id, r.subscriber_id, "sent", 250, "250 ok")
                      for r in rows], datetime.now(UTC), 1)
    store.claim(last.id, "bench", 100, timedelta(minutes=5), now)  # in flight


@contextlib.contextmanager
def database(kind: str, pg_url: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            yield f"sqlite:///{folder}/n.db"
        return
    schema = f"bench_status_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in pg_url else "?"
    try:
        yield f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def run(kind: str, pg_url: str, rows: int, subscribers: int, requests: int) -> Case:
    with database(kind, pg_url) as url, tempfile.TemporaryDirectory() as folder:
        config = write_config(Path(folder), url, 1, concurrency=4, batch_size=500,
                              dkim_key=None)
        settings = load_settings(config, environ={})
        settings = replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))
        store = Store(url)
        try:
            seed(store, subscribers)
            now = datetime.now(UTC)
            issues = [store.save_issue(Issue(number=n, subject=f"Issue {n}", preheader="",
                                             created=now, window_start=now, window_end=now,
                                             sections=()), now)
                      for n in range(1, rows // subscribers + 1)]
            empty = measure(store, settings, requests)
            start = time.perf_counter()
            fill(store, issues, subscribers)
            fill_s = time.perf_counter() - start
            if kind == "postgresql":
                with store.engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("ANALYZE")  # as autovacuum would, soon after
            with store.engine.connect() as conn:
                held = conn.execute(sa.select(sa.func.count()).select_from(s.deliveries))
                assert held.scalar_one() == len(issues) * subscribers
            full = measure(store, settings, requests)
        finally:
            store.close()
    return Case(kind, len(issues) * subscribers, empty, full, fill_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=100, help="per endpoint and case")
    parser.add_argument("--pg-url", default=os.environ.get("NEWSLETTER_BENCH_PG_URL", PG_URL))
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--pg", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    log.setup("WARNING")
    kinds = [k for k, on in (("sqlite", args.sqlite), ("postgresql", args.pg)) if on]
    cases = [run(k, args.pg_url, args.rows, args.subscribers, args.requests) for k in kinds]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.subscribers:,} subscribers, {args.requests} requests per endpoint and case "
          f"(median ms, p90 in brackets)\n")
    print("| database | endpoint | empty ledger | ledger rows | with them | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for case in cases:
        for path in ENDPOINTS:
            a, b = case.empty[path], case.full[path]
            p90 = statistics.quantiles(a, n=10)[-1], statistics.quantiles(b, n=10)[-1]
            print(f"| {case.database} | `{path}` | {statistics.median(a):.2f} ({p90[0]:.2f}) "
                  f"| {case.rows:,} | {statistics.median(b):.2f} ({p90[1]:.2f}) | "
                  f"{statistics.median(b) / statistics.median(a):.2f}x |")
    for case in cases:
        print(f"\n{case.database}: ledger filled in {case.fill_s:.1f} s")


if __name__ == "__main__":
    main()
