"""Soak: `newsletter run` under steady load; RSS, fds, DB/WAL and latency to CSV, summary, PNG."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from common import ARTICLES, free_port, seed, tool, write_config  # noqa: E402

from newsletter.audience.subscriptions import confirm_token  # noqa: E402
from newsletter.store.database import Store  # noqa: E402

SECRET = "bench-secret-key-bench-secret-key"  # common.write_config's
TOKEN = "soak-admin-token-0123456789abcdef"
FEEDS = ("/feeds/rss.xml", "/feeds/atom.xml", "/feeds/feed.json", "/")
FIELDS = ("t_s", "rss_mib", "fds", "threads", "db_mib", "wal_mib", "feed_n", "feed_p50_ms",
          "feed_p99_ms", "feed_max_ms", "subscribe_p50_ms", "confirm_p50_ms", "metrics_ms",
          "status_ms", "errors", "issues_built", "issues_sent", "sent_rows", "sink_msgs",
          "signups", "confirms", "active")
SCHEDULE = '[schedule]\ncollect_minutes = 1\nissue_cron = "{cron}"\n'
ARTICLE = ("---\ntitle: Soak dispatch {n}\ndate: {date}\nsection: {section}\nsummary: Dispatch "
           "{n}.\n---\n\nThe harbour authority met again today ([minutes](https://example.org/"
           "{n})).\n\n- first point\n- second point\n")


def pct(values: list[float], q: float) -> float | str:
    if not values:
        return ""
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


class Load:
    """The traffic: articles, sign-ups (confirmed), feed readers, the operator's scrapes."""

    def __init__(self, base: str, db: Path, articles: Path, args: argparse.Namespace) -> None:
        self.base, self.db, self.articles, self.args = base, db, articles, args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.signups = self.confirms = self.written = 0

    def record(self, kind: str, ms: float, ok: bool, what: str = "") -> None:
        with self.lock:
            self.lat.setdefault(kind, []).append(ms)
            if not ok:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {kind} {what}")

    def take(self) -> tuple[dict[str, list[float]], list[str]]:
        with self.lock:
            lat, self.lat, errs, self.errors = self.lat, {}, self.errors, []
        return lat, errs

    def timed(self, client: httpx.Client, kind: str, method: str, path: str,
              **kw: object) -> httpx.Response | None:
        start = time.perf_counter()
        try:
            r = client.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.record(kind, (time.perf_counter() - start) * 1000, False, repr(exc))
            return None
        ms = (time.perf_counter() - start) * 1000
        self.record(kind, ms, r.status_code < 400, f"{path} {r.status_code}")
        return r

    def paced(self, rate: float, step: object) -> None:
        """Open loop: call `step(i)` at `rate` per second, catching up after a stall."""
        start, i = time.monotonic(), 0
        while not self.stop.is_set():
            step(i)  # type: ignore[operator]
            i += 1
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)

    def feeds(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30,
                          headers={"accept-encoding": "gzip"}) as client:
            self.paced(self.args.feeds_per_s,
                       lambda i: self.timed(client, "feed", "GET", FEEDS[i % len(FEEDS)]))

    def signup(self) -> None:
        secret = SECRET.encode()
        pending: list[str] = []
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        with httpx.Client(base_url=self.base, timeout=30) as client:
            def step(i: int) -> None:
                email = f"soak{i}@example.net"
                ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"  # each reader their own
                r = self.timed(client, "subscribe", "POST", "/subscribe",
                               data={"email": email, "name": f"Soak {i}"},
                               headers={"x-forwarded-for": ip})
                if r is not None and r.status_code == 202:
                    self.signups += 1
                    pending.append(email)
                if len(pending) > 10:  # the person opens the mail ~5 s later, presses confirm
                    address = pending.pop(0)
                    row = db.execute("SELECT id, email FROM subscribers WHERE email_key = ?",
                                     (address,)).fetchone()
                    if row is None:
                        self.record("confirm", 0, False, f"{address} not stored")
                        return
                    sub = SimpleNamespace(id=row[0], email=row[1], unsubscribed_at=None)
                    token = confirm_token(secret, sub, datetime.now(UTC))  # type: ignore[arg-type]
                    r = self.timed(client, "confirm", "POST", "/confirm", data={"token": token})
                    if r is not None and "You are subscribed" in r.text:
                        self.confirms += 1
            self.paced(self.args.signups_per_s, step)
        db.close()

    def minutely(self) -> None:
        auth = {"authorization": f"Bearer {TOKEN}"}
        sections = ("World", "Economy", "Energy", "Culture")
        with httpx.Client(base_url=self.base, timeout=60, headers=auth) as client:
            def step(i: int) -> None:
                n = self.written + 1
                body = ARTICLE.format(n=n, date=datetime.now(UTC).isoformat(timespec="seconds"),
                                      section=sections[n % 4])
                tmp = self.articles / f".soak-{n}.tmp"
                tmp.write_text(body, "utf-8")
                tmp.rename(self.articles / f"soak-{n:05d}.md")
                self.written = n
                if i % 2 == 0:
                    self.timed(client, "metrics", "GET", "/metrics")
                    self.timed(client, "status", "GET", "/admin/api/status")
            self.paced(2 / 60, step)


def tree(pid: int) -> list[int]:
    """The process and its children, theirs too."""
    kids = [int(c) for t in Path(f"/proc/{pid}/task").glob("*/children")
            for c in t.read_text().split()]
    return [pid, *(p for k in kids for p in tree(k))]


def proc_sample(pid: int) -> tuple[float, int, int]:
    rss = fds = threads = 0
    for p in tree(pid):
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{p}/status").read_text().splitlines() if ":" in line)
        rss += int(status["VmRSS"].split()[0])
        threads += int(status["Threads"])
        fds += len(os.listdir(f"/proc/{p}/fd"))
    return rss / 1024, fds, threads


def db_counts(db: Path) -> tuple[int, int, int, int]:
    """Issues built, issues sent, ledger rows sent, active subscribers."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(
            "SELECT (SELECT count(*) FROM issues), (SELECT count(*) FROM issues WHERE status = "
            "'sent'), (SELECT coalesce(sum(sent), 0) FROM delivery_counts), (SELECT count(*) "
            "FROM subscribers WHERE status = 'active')").fetchone()
    finally:
        con.close()


def sink_count(log: Path) -> int:
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 200))
        tail = f.read().decode(errors="replace").replace("\r", "\n").split("\n")
    for line in reversed(tail):
        if "mesg=" in line:
            return int(line.rsplit("mesg=", 1)[1].split()[0])
    return 0


def mib(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2) if path.exists() else 0.0


def healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run(args: argparse.Namespace, out: Path) -> Path:
    svc = out / "svc"
    shutil.rmtree(svc, ignore_errors=True)
    shutil.copytree(ARTICLES, svc / "articles")
    (svc / "var").mkdir(parents=True)
    db = svc / "var" / "newsletter.db"
    store = Store(f"sqlite:///{db}")
    seed(store, args.subscribers)
    store.close()
    sink_port, web = free_port(), free_port()
    config = write_config(svc, f"sqlite:///{db}", sink_port, concurrency=4, batch_size=200,
                          dkim_key=None)  # [smtp] concurrency and batch_size at their defaults
    config.write_text(config.read_text().replace(f'path = "{ARTICLES}"',
                                                 f'path = "{svc / "articles"}"')
                      + SCHEDULE.format(cron=args.issue_cron))
    sink_log = out / "sink.log"
    user = ["-u", "postfix"] if os.geteuid() == 0 else []
    sink = subprocess.Popen([tool("smtp-sink"), *user, "-c", f"127.0.0.1:{sink_port}", "256"],
                            stdout=sink_log.open("wb"), stderr=subprocess.STDOUT)
    env = {**os.environ, "NEWSLETTER_SECRETS_ADMIN_TOKEN": TOKEN}
    launch = [sys.executable, "-m", "newsletter"]
    if args.trace:  # the same service under tracemalloc: slower, but it says what grew
        launch = [sys.executable, str(Path(__file__).with_name("tracemem.py"))]
        env.update(TRACEMEM_OUT=str(args.trace.resolve()), TRACEMEM_EVERY=str(args.trace_every))
    service = subprocess.Popen([*launch, "--config", str(config),
                                "run", "--port", str(web)], cwd=svc, env=env,
                               stdout=(out / "service.log").open("wb"), stderr=subprocess.STDOUT)
    base, deadline = f"http://127.0.0.1:{web}", time.monotonic() + 120
    while not healthy(base):
        if service.poll() is not None or time.monotonic() > deadline:
            sink.kill()
            sys.exit(f"newsletter run did not start: see {out / 'service.log'}")
        time.sleep(0.5)
    load = Load(base, db, svc / "articles", args)
    threads = [threading.Thread(target=f, daemon=True)
               for f in (load.feeds, load.signup, load.minutely)]
    for t in threads:
        t.start()
    csv_path, started = out / "samples.csv", time.monotonic()
    with csv_path.open("w", newline="") as f, (out / "errors.log").open("w") as errlog:
        w = csv.writer(f)
        w.writerow(FIELDS)
        while (elapsed := time.monotonic() - started) < args.minutes * 60:
            time.sleep(args.interval - elapsed % args.interval)
            if service.poll() is not None:
                errlog.write(f"newsletter run exited with {service.returncode}\n")
                break
            rss, fds, nthreads = proc_sample(service.pid)
            lat, errs = load.take()
            errlog.writelines(e + "\n" for e in errs)
            errlog.flush()
            feed, counts = lat.get("feed", []), db_counts(db)
            w.writerow([round(time.monotonic() - started, 1), round(rss, 2), fds, nthreads,
                        mib(db), mib(Path(f"{db}-wal")), len(feed), pct(feed, 0.5),
                        pct(feed, 0.99), pct(feed, 1.0), pct(lat.get("subscribe", []), 0.5),
                        pct(lat.get("confirm", []), 0.5), pct(lat.get("metrics", []), 1),
                        pct(lat.get("status", []), 1),
                        len(errs), *counts[:3], sink_count(sink_log), load.signups,
                        load.confirms, counts[3]])
            f.flush()
    load.stop.set()
    for t in threads:
        t.join(60)
    time.sleep(10)  # the last confirmation and welcome mails leave
    service.send_signal(signal.SIGTERM)
    try:
        service.wait(60)
    except subprocess.TimeoutExpired:
        service.kill()
    time.sleep(1)
    final = {"signups": load.signups, "confirms": load.confirms, "articles": load.written,
             "sink_msgs": sink_count(sink_log), "exit": service.returncode}
    sink.terminate()
    sink.wait(10)
    final.update(ledger(db))
    (out / "final.json").write_text(json.dumps(final, indent=1))
    return csv_path


def ledger(db: Path) -> dict[str, object]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    issues = q("""SELECT i.number, i.status, i.created,
        count(d.id), sum(d.status = 'sent'), sum(d.status != 'sent'), sum(d.attempts > 1),
        min(d.sent_at), max(d.sent_at),
        (SELECT count(*) FROM issue_articles a WHERE a.issue_id = i.id) FROM issues i
        LEFT JOIN deliveries d ON d.issue_id = i.id GROUP BY i.id ORDER BY i.number""")
    out = {
        "issues": issues,
        "duplicate_pairs": q("SELECT count(*) FROM (SELECT 1 FROM deliveries GROUP BY issue_id, "
                             "subscriber_id HAVING count(*) > 1)")[0][0],
        "sent_rows": q("SELECT count(*) FROM deliveries WHERE status = 'sent'")[0][0],
        # Dated inside an issue's window, yet in no issue: collected after that issue was built.
        "articles_missed": q("SELECT count(*) FROM articles WHERE published < (SELECT "
                             "max(window_end) FROM issues) AND id NOT IN (SELECT article_id "
                             "FROM issue_articles)")[0][0],
        "active": q("SELECT count(*) FROM subscribers WHERE status = 'active'")[0][0],
    }
    con.close()
    return out


def slope(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares: (slope, its standard error, residuals' standard deviation)."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    if n < 3:
        return math.nan, math.nan, math.nan
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    res = [y - my - b * (x - mx) for x, y in zip(xs, ys, strict=True)]
    sd = math.sqrt(sum(r * r for r in res) / (n - 2))
    return b, sd / math.sqrt(sxx), sd


def summarise(rows: list[dict[str, float]], final: dict, warmup: float) -> str:
    col = lambda k, rs=rows: [r[k] for r in rs if r[k] != ""]  # noqa: E731
    hours = rows[-1]["t_s"] / 3600
    after = [r for r in rows if r["t_s"] >= warmup * 60]
    # One point per 3-minute issue cycle: the sawtooth of each send averages out.
    cycles: dict[int, list[float]] = {}
    for r in after:
        cycles.setdefault(int(r["t_s"] // 180), []).append(r["rss_mib"])
    xs = [(k * 180 + 90) / 3600 for k in cycles]
    ys = [sum(v) / len(v) for v in cycles.values()]
    b, se, sd = slope(xs, ys)
    first = [r for r in rows if r["t_s"] < 3600]
    last = [r for r in rows if r["t_s"] >= rows[-1]["t_s"] - 3600]
    issues = final["issues"]
    full = [i for i in issues if i[1] == "sent" and i[5] == 0]
    feed99, mails = col("feed_p99_ms"), final["sent_rows"] + final["signups"] + final["confirms"]
    lines = [
        f"duration {hours:.2f} h; warm-up {warmup:g} min; {len(rows)} samples",
        f"issues built {len(issues)}, sent and fully delivered {len(full)}; "
        f"messages (ledger sent) {final['sent_rows']:,}; rows retried "
        f"{sum(i[6] or 0 for i in issues)}",
        f"smtp-sink got {final['sink_msgs']:,}; ledger {final['sent_rows']:,} + confirmations "
        f"{final['signups']:,} + welcomes {final['confirms']:,} = {mails:,}: "
        f"{final['sink_msgs'] - mails:+,}",
        f"duplicate (issue, subscriber) rows {final['duplicate_pairs']}; articles written "
        f"{final['articles']}, dated before the last issue yet in none {final['articles_missed']}",
        f"subscribers active at end {final['active']:,} (sign-ups {final['signups']:,}, "
        f"confirmed {final['confirms']:,})",
        f"RSS MiB start {rows[0]['rss_mib']:.1f}, after warm-up {after[0]['rss_mib']:.1f}, end "
        f"{rows[-1]['rss_mib']:.1f}, max {max(col('rss_mib')):.1f}",
        f"RSS slope after warm-up (3-min means, n={len(xs)}): {b:+.2f} MiB/h, 95% CI "
        f"[{b - 2 * se:+.2f}, {b + 2 * se:+.2f}], residual sd {sd:.2f} MiB",
        f"fds {min(col('fds')):g}-{max(col('fds')):g}; threads {min(col('threads')):g}-"
        f"{max(col('threads')):g}",
        f"db MiB {rows[0]['db_mib']} -> {rows[-1]['db_mib']}; wal MiB {rows[0]['wal_mib']} -> "
        f"{rows[-1]['wal_mib']} (max {max(col('wal_mib'))})",
        f"feed requests {sum(col('feed_n')):,}; per-window p50 median "
        f"{pct(col('feed_p50_ms'), 0.5)} ms; p99 median {pct(feed99, 0.5)} ms, worst window "
        f"{max(feed99)} ms, max {max(col('feed_max_ms'))} ms",
        f"/metrics ms first hour median {pct(col('metrics_ms', first), 0.5)}, last hour "
        f"{pct(col('metrics_ms', last), 0.5)}; /admin/api/status "
        f"{pct(col('status_ms', first), 0.5)} -> {pct(col('status_ms', last), 0.5)}",
        f"subscribe p50 median {pct(col('subscribe_p50_ms'), 0.5)} ms, confirm "
        f"{pct(col('confirm_p50_ms'), 0.5)} ms; load errors {sum(col('errors'))}",
    ]
    lines += [f"issue {i[0]}: {i[1]}, {i[4] or 0}/{i[3]} sent, {i[9]} articles, "
              f"{i[7] or ''} .. {i[8] or ''}" for i in issues]
    return "\n".join(lines)


def panel(y: int, title: str, series: list[tuple[str, str, list[float], list[float]]],
          width: int, tmax: float, unit: str) -> str:
    h, x0, w = 200, 70, width - 100
    top = max([v for s in series for v in s[3]] + [1e-9])
    step = 10 ** math.floor(math.log10(top / 4))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step * 4 >= top)
    sx = lambda t: x0 + w * t / tmax  # noqa: E731
    sy = lambda v: y + 30 + h - h * v / (step * 4)  # noqa: E731
    parts = [f'<text x="{x0}" y="{y + 18}" font-size="16" font-weight="bold">{title}</text>']
    for k in range(5):
        v = step * k
        parts.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" '
                     f'stroke="#ddd"/><text x="{x0 - 6}" y="{sy(v) + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{v:g}</text>')
    for m in range(0, int(tmax / 60) + 1, 15):
        parts.append(f'<text x="{sx(m * 60):.1f}" y="{y + h + 46}" font-size="11" '
                     f'text-anchor="middle">{m} min</text>')
    parts.append(f'<text x="{x0 - 55}" y="{y + 25}" font-size="11">{unit}</text>')
    for n, (name, color, xs, vs) in enumerate(series):
        pts = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in zip(xs, vs, strict=True))
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"/>'
                     f'<text x="{x0 + w - 10}" y="{y + 18 + 16 * n}" font-size="13" fill="{color}" '
                     f'text-anchor="end">{name}</text>')
    return "\n".join(parts)


def plot(rows: list[dict[str, float]], png: Path, warmup: float, title: str) -> None:
    def s(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["t_s"], float(r[key])) for r in rows if r[key] != ""]
        return [p[0] for p in pts], [p[1] for p in pts]

    width, tmax = 1200, rows[-1]["t_s"]
    panels = [
        ("RSS of newsletter run", "MiB", [("RSS", "#1f5fa8", *s("rss_mib"))]),
        ("Open fds and threads", "count", [("fds", "#b5461a", *s("fds")),
                                           ("threads", "#2c8a3a", *s("threads"))]),
        ("Database and WAL size", "MiB", [("db", "#6a3d9a", *s("db_mib")),
                                          ("wal", "#d18b00", *s("wal_mib"))]),
        ("Feed latency per 10 s window", "ms", [("p50", "#2c8a3a", *s("feed_p50_ms")),
                                                ("p99", "#b5461a", *s("feed_p99_ms"))]),
        ("/metrics and /admin/api/status, each minute", "ms",
         [("/metrics", "#1f5fa8", *s("metrics_ms")), ("status", "#6a3d9a", *s("status_ms"))]),
    ]
    body = [panel(40 + 260 * i, t, ser, width, tmax, u) for i, (t, u, ser) in enumerate(panels)]
    wx = 70 + (width - 100) * warmup * 60 / tmax
    height = 40 + 260 * len(panels)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
           f'<text x="70" y="24" font-size="18">{title}</text>'
           f'<line x1="{wx:.1f}" x2="{wx:.1f}" y1="40" y2="{height - 30}" stroke="#999" '
           f'stroke-dasharray="4 4"/>{"".join(body)}</svg>')
    png.with_suffix(".svg").write_text(svg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_content(f"<html><body style='margin:0'>{svg}</body></html>")
        page.screenshot(path=str(png))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=120)
    parser.add_argument("--out", type=Path, default=Path("/tmp/soak"))
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--signups-per-s", type=float, default=2)
    parser.add_argument("--feeds-per-s", type=float, default=20)
    parser.add_argument("--issue-cron", default="*/3 * * * *", help="when issues are built")
    parser.add_argument("--trace", type=Path, help="run under bench/tracemem.py, snapshots here")
    parser.add_argument("--trace-every", type=float, default=300, help="seconds between them")
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=30, help="minutes left out of the slope")
    parser.add_argument("--png", type=Path, help="plot here too (e.g. docs/soak-2h.png)")
    parser.add_argument("--report-only", action="store_true", help="summarise --out again")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "samples.csv" if args.report_only else run(args, out)
    with csv_path.open() as f:
        rows = [{k: (float(v) if v != "" else "") for k, v in r.items()} for r in csv.DictReader(f)]
    final = json.loads((out / "final.json").read_text())
    text = summarise(rows, final, args.warmup)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    for png in filter(None, (out / "soak.png", args.png)):
        plot(rows, png, args.warmup, f"newsletter run, {rows[-1]['t_s'] / 3600:.2f} h soak")


if __name__ == "__main__":
    main()
