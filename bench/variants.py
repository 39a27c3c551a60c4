"""Send rate by how many variants readers' section choices make: 1, 2⁴, 2¹⁰, every reader unique.

An issue of 16 sections with two articles each is sent through the whole pipeline (ledger,
variants, links, MessageTemplate, SMTP) to Postfix's smtp-sink, once per case, each case on a
fresh SQLite file with the same subscribers; the rates are compared with the one-variant case
measured in the same run.

    python bench/variants.py                      # 5,000 subscribers, best of 2 per case
    python bench/variants.py --subscribers 1000 --repeat 1 --cases 1,unique   # quick look
    python bench/variants.py --cases 1,2^4,2^10,unique   # the cases of the issue only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402
from common import (  # noqa: E402
    Sink,
    proc_cpu,
    seed,
    smtp_sink,
    write_config,
    write_dkim_key,
)

from newsletter import log, pipeline  # noqa: E402
from newsletter.config import load_settings  # noqa: E402
from newsletter.pipeline import sending  # noqa: E402

SECTIONS = ("Books", "Business", "Climate", "Culture", "Economy", "Education", "Food",
            "Health", "Letters", "Opinion", "Politics", "Science", "Sport", "Technology",
            "Travel", "World")
WORDS = ("council", "budget", "river", "school", "housing", "transit", "library", "market",
         "festival", "weather", "court", "hospital", "museum", "bridge", "election",
         "harbour", "park", "energy", "water", "policy", "report", "volunteers", "residents")
# Distinct sets of chosen sections in each case; "unique" gives every reader their own.
# "half": one variant too, everyone taking the same 8 sections: about the size of an average
# random choice, so that the cost of being a variant is seen apart from the message's size.
CASES = {"1": 1, "half": 1, "2^4": 2 ** 4, "2^10": 2 ** 10, "unique": 0}


def write_articles(folder: Path, per_section: int, rng: random.Random) -> int:
    """Markdown files: `per_section` articles in each of the 16 sections, one with an image."""
    folder.mkdir(parents=True, exist_ok=True)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize()

    n = 0
    for section in SECTIONS:
        for i in range(per_section):
            n += 1
            image = f"image: https://cdn.meridian.example.org/{n}.jpg\n" if i == 0 else ""
            paragraphs = "\n\n".join(f"{words(40, 70)}." for _ in range(3))
            (folder / f"2026-01-{n:02d}-{section.lower()}-{i}.md").write_text(
                f"---\ntitle: {words(5, 10)}\ndate: 2026-01-{(n % 28) + 1:02d}T08:00:00Z\n"
                f"author: {words(2, 2)}\nsection: {section}\nsummary: {words(30, 45)}.\n"
                f"{image}---\n\n{paragraphs}\n", encoding="utf-8")
    return n


def choices(case: str, readers: int, rng: random.Random) -> list[tuple[str, ...]]:
    """Each reader's chosen sections for a case: one set for all, or one of K distinct sets,
    or a distinct set each. Never empty or all 16 (both mean every section)."""
    distinct = CASES[case] or readers
    if case == "half":
        return [SECTIONS[::2]] * readers
    if distinct == 1:
        return [()] * readers
    sets: set[tuple[str, ...]] = set()
    while len(sets) < distinct:
        chosen = tuple(s for s in SECTIONS if rng.random() < 0.5)
        if 0 < len(chosen) < len(SECTIONS):
            sets.add(chosen)
    pool = sorted(sets)
    rng.shuffle(pool)
    if distinct == readers:
        return pool
    return [pool[i % distinct] for i in range(readers)]


@dataclass
class Result:
    case: str
    variants: int
    sent: int
    wall: float
    cpu: float
    sink_cpu: float
    size: float  # bytes per message, on average

    @property
    def rate(self) -> float:
        return self.sent / self.wall


def run_case(root: Path, sink: Sink, case: str, label: str, args: argparse.Namespace,
             articles: Path, count: int, dkim_key: Path | None) -> Result:
    folder = root / label
    config = write_config(folder, f"sqlite:///{folder / 'n.db'}", sink.port,
                          concurrency=args.concurrency, batch_size=args.batch_size,
                          dkim_key=dkim_key, articles=articles, max_articles=count)
    settings = load_settings(config, environ={})
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    assert report.ok, report.errors
    seed(store, args.subscribers)
    picked = choices(case, args.subscribers, random.Random(f"{case}-{args.seed}"))
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE subscribers SET sections = :s WHERE id = :id"),
                     [{"s": json.dumps(list(c)), "id": i + 1} for i, c in enumerate(picked)])
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and len(issue.sections) == len(SECTIONS), issue
    assert len(issue.articles) == count, len(issue.articles)
    sending.start_sending(settings, store, issue)
    sink_before = proc_cpu(sink.pid)
    cpu0, start = time.process_time(), time.perf_counter()
    summary = sending.run_worker(settings, store, issue)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    sink_cpu = proc_cpu(sink.pid) - sink_before
    status = store.get_issue(issue.number, with_articles=False)
    assert summary.sent == args.subscribers, summary
    assert status is not None and status.status == "sent", status
    built = sending.dry_run(settings, store, issue)  # untimed: every message's size again
    assert built.variants == len(set(picked)), built
    store.close()
    shutil.rmtree(folder)
    return Result(case, len(set(picked)), summary.sent, wall, cpu, sink_cpu,
                  built.total_bytes / built.recipients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=5_000)
    parser.add_argument("--per-section", type=int, default=2, help="articles per section")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs per case, interleaved; the best is kept")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--dkim", action="store_true", help="sign with a fresh rsa-2048 key")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown or "1" not in cases:
        parser.error(f"cases are {', '.join(CASES)}, and 1 (the reference) among them")
    log.setup("WARNING")
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}; {args.subscribers:,} subscribers, "
          f"{len(SECTIONS)} sections x {args.per_section} articles, concurrency "
          f"{args.concurrency}, batch {args.batch_size}, DKIM {'on' if args.dkim else 'off'}",
          flush=True)
    best: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp, smtp_sink() as sink:
        root = Path(tmp)
        articles = root / "articles"
        count = write_articles(articles, args.per_section, random.Random(args.seed))
        dkim_key = write_dkim_key(root) if args.dkim else None
        runs = 0
        for round_ in range(args.repeat):
            for case in cases:
                runs += 1
                r = run_case(root, sink, case, f"run{runs}", args, articles, count, dkim_key)
                print(f"  round {round_ + 1} {case:>6}: {r.variants:>5,} variants  "
                      f"{r.size / 1000:5.1f} KB  {r.rate:8,.0f} msg/s  "
                      f"{r.cpu / r.sent * 1e6:6.0f} µs CPU/msg", flush=True)
                if case not in best or r.rate > best[case].rate:
                    best[case] = r
    ref = best["1"].rate
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n(load average now {load})\n")
    print("| readers' choices | distinct variants | KB/msg | msg/s | vs one variant "
          "| CPU µs/msg (sender) | smtp-sink |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    names = {"1": "everyone takes every section",
             "half": "everyone takes the same 8 sections", "2^4": "one of 2⁴ sets",
             "2^10": "one of 2¹⁰ sets", "unique": "each reader a random subset, all distinct"}
    for case in cases:
        r = best[case]
        print(f"| {names[case]} | {r.variants:,} | {r.size / 1000:.1f} | {r.rate:,.0f} "
              f"| **{r.rate / ref:.2f}** "
              f"| {r.cpu / r.sent * 1e6:.0f} | {r.sink_cpu / r.sent * 1e6:.0f} |")


if __name__ == "__main__":
    main()
