"""Publish 10,000 articles' pages cold, then again after one article changed; print the ratio."""

from __future__ import annotations

import argparse
import platform
import random
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from newsletter.models import Article  # noqa: E402
from newsletter.publish.site import SiteMeta, environment, write_site  # noqa: E402

SITE = "https://bench.example.org/"
NOW = datetime(2026, 1, 31, tzinfo=UTC)
WORDS = ["council", "budget", "river", "school", "housing", "transit", "library", "market",
         "festival", "weather", "court", "hospital", "museum", "bridge", "election", "harbour"]
META = SiteMeta(name="The Bench Ledger", site_url=SITE, feeds_url=SITE + "feeds/",
                description="A benchmark publication.", next_issue="Next issue: Monday",
                latest_issue=(12, "The Bench Ledger No. 12"))


def articles(count: int, rng: random.Random) -> list[Article]:
    sections = ["World", "Economy", "Technology", "Culture", "Local", ""]

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize()

    out = []
    for n in range(count):
        when = NOW - timedelta(minutes=61 * n)
        slug = f"article-{n}"
        body = "".join(f"<p>{words(40, 90)}.</p>" for _ in range(rng.randint(3, 8)))
        out.append(Article(
            key=f"link:{SITE}articles/{slug}/", title=words(5, 11), link=f"{SITE}articles/{slug}/",
            published=when, updated=when, content_html=body, content_hash=f"h{n}",
            summary=words(15, 30) + ".", authors=(words(2, 2),), section=rng.choice(sections),
            slug=slug, image=f"{SITE}img/{n}.jpg" if n % 3 == 0 else ""))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--articles", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    arts = articles(args.articles, random.Random(args.seed))
    env = environment()
    with tempfile.TemporaryDirectory(prefix="bench-site-") as tmp:
        out = Path(tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        cold = write_site(arts, META, out, env)
        cold_s, cold_cpu = time.perf_counter() - t0, time.process_time() - c0

        # An edit in the middle of the archive: its page changes, nothing else does.
        middle = len(arts) // 2
        arts[middle] = replace(arts[middle], content_html="<p>Corrected.</p>",
                               content_hash="edited")
        t0, c0 = time.perf_counter(), time.process_time()
        warm = write_site(arts, META, out, env)
        warm_s, warm_cpu = time.perf_counter() - t0, time.process_time() - c0

        t0, c0 = time.perf_counter(), time.process_time()
        idle = write_site(arts, META, out, env)
        idle_s, idle_cpu = time.perf_counter() - t0, time.process_time() - c0

    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{args.articles} articles, {cold.pages} pages")
    # Wall time includes an fsync per file written; CPU time is this process's own work.
    for label, took, cpu, res, note in (
            ("cold", cold_s, cold_cpu, cold, ""),
            ("warm", warm_s, warm_cpu, warm, "  (one article edited)"),
            ("again", idle_s, idle_cpu, idle, "  (nothing changed)")):
        print(f"{label + ':':6} {took:8.3f} s wall {cpu:7.3f} s CPU  rendered {res.rendered:6d}"
              f"  written {len(res.written):6d}{note}")
    ratio = cold_s / warm_s
    print(f"cold / warm = {ratio:.0f}x wall, {cold_cpu / warm_cpu:.0f}x CPU")
    if len(warm.written) != 1 or idle.written or ratio < 50:
        sys.exit("FAIL: the warm run must rewrite only the edited page and be >= 50x faster")


if __name__ == "__main__":
    main()
