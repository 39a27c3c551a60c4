"""Requests per second for /feeds/atom.xml (200 and 304): our app under uvicorn vs nginx."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"accept-encoding": "identity"}  # what wrk sends: no Accept-Encoding at all
# Filler vocabulary for headlines and paragraphs that look like a local news site.
_VOCABULARY = """council budget river school housing transit library market festival weather court
hospital museum bridge election harbour park energy water policy report volunteers residents
mayor plan vote street community district season record opening"""
WORDS = tuple(_VOCABULARY.split())


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 18))]
    return " ".join(words).capitalize() + "."


def _articles_html(rng: random.Random) -> str:
    paragraphs = (" ".join(_sentence(rng) for _ in range(4)) for _ in range(rng.randint(3, 6)))
    return "".join(f"<p>{p}</p>" for p in paragraphs)


def atom_with_render_feeds(entries: int) -> bytes:
    """The project's own Atom renderer on synthetic articles (raises if it is unavailable)."""
    sys.path.insert(0, str(REPO))
    from newsletter.models import Article
    from newsletter.publish.feeds import FeedMeta, render_feeds

    rng = random.Random(42)  # same feed every run, so runs compare
    start = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
    articles = []
    for i in range(entries):
        when = start + timedelta(hours=7 * i)
        body = _articles_html(rng)
        articles.append(
            Article(
                key=f"link:https://news.example.org/{when:%Y/%m}/story-{i}",
                title=_sentence(rng)[:70],
                link=f"https://news.example.org/{when:%Y/%m}/story-{i}",
                published=when,
                updated=when,
                content_html=body,
                content_hash=f"{i:064x}",
                summary=_sentence(rng),
                authors=(rng.choice(["Ana Ruiz", "Ben Okafor", "Chen Li"]),),
                section=rng.choice(["Local", "Politics", "Culture"]),
                tags=(rng.choice(WORDS), rng.choice(WORDS)),
            )
        )
    meta = FeedMeta(
        title="Example Gazette",
        site_url="https://news.example.org/",
        feeds_url="https://news.example.org/feeds/",
        language="en",
        description="Local news, every morning.",
    )
    return render_feeds(articles, meta, max_entries=entries)["atom.xml"]


def atom_by_hand(entries: int) -> bytes:
    """A plausible Atom document with `entries` full-content entries, written directly."""
    rng = random.Random(42)
    start = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
    items = []
    for i in reversed(range(entries)):
        when = (start + timedelta(hours=7 * i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        link = f"https://news.example.org/2024/06/story-{i}"
        items.append(
            f"""  <entry>
    <title>{html.escape(_sentence(rng)[:70])}</title>
    <id>{link}</id>
    <link rel="alternate" type="text/html" href="{link}"/>
    <published>{when}</published>
    <updated>{when}</updated>
    <author><name>{rng.choice(["Ana Ruiz", "Ben Okafor", "Chen Li"])}</name></author>
    <category term="{rng.choice(["local", "politics", "culture"])}"/>
    <summary>{html.escape(_sentence(rng))}</summary>
    <content type="html">{html.escape(_articles_html(rng))}</content>
  </entry>
"""
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">\n'
        "  <title>Example Gazette</title>\n  <id>https://news.example.org/</id>\n"
        '  <link rel="self" href="https://news.example.org/feeds/atom.xml"/>\n'
        '  <link rel="alternate" href="https://news.example.org/"/>\n'
        f"  <updated>{start + timedelta(hours=7 * (entries - 1)):%Y-%m-%dT%H:%M:%SZ}</updated>\n"
        + "".join(items)
        + "</feed>\n"
    ).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    keepalive_requests 10000000;
    types {{ application/atom+xml xml; }}
    default_type application/octet-stream;
    charset utf-8;
    charset_types application/atom+xml;
    server {{
        listen 127.0.0.1:{port};
        location /feeds/ {{
            alias {feeds}/;
            etag on;
            add_header Cache-Control "public, max-age=300";
            add_header Vary Accept-Encoding;
        }}
    }}
}}
"""


def start_ours(tmp: Path, feeds: Path, port: int) -> subprocess.Popen[bytes]:
    log = (tmp / "ours.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, __file__, "--run-app", str(feeds), str(port)]
    with log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def start_nginx(tmp: Path, feeds: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, feeds=feeds, port=port))
    log = (tmp / "nginx.log").open("wb")
    # -e: nginx logs startup errors before reading the config; keep those in tmp too.
    cmd = ["nginx", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "nginx-error.log")]
    with log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen[bytes], url: str, name: str, tmp: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in tmp.glob("*.log"))
    raise RuntimeError(f"{name} did not come up at {url}\n{logs}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_wrk(url: str, headers: dict[str, str], duration: float, connections: int) -> float:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--timeout", "5s"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=duration + 30, check=True
    ).stdout
    if "Non-2xx or 3xx" in out or "Socket errors" in out:
        print(f"  wrk reported problems for {url}:\n{out}", file=sys.stderr)
    match = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(match.group(1))


def run_httpx(url: str, headers: dict[str, str], duration: float, connections: int) -> float:
    """Fallback load generator; one Python process is slower than wrk, so it caps the rate."""

    # httpx asks for gzip by default; match wrk, which sends no Accept-Encoding.
    request_headers = {**IDENTITY, **headers}

    async def main() -> int:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        done = 0
        deadline = time.monotonic() + duration
        async with httpx.AsyncClient(limits=limits, timeout=5) as client:

            async def worker() -> None:
                nonlocal done
                while time.monotonic() < deadline:
                    r = await client.get(url, headers=request_headers)
                    if r.status_code in (200, 304):
                        done += 1

            await asyncio.gather(*(worker() for _ in range(connections)))
        return done

    started = time.monotonic()
    count = asyncio.run(main())
    return count / (time.monotonic() - started)


def run_app(feeds: str, port: int) -> None:
    """Child-process mode: our app alone under uvicorn, one process, no access log."""
    import uvicorn

    from newsletter.web import create_app

    app = create_app(
        feeds_dir=Path(feeds), publication_name="Bench", feeds_url="https://example.org/feeds/"
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, ws="none")


@contextlib.contextmanager
def servers(tmp: Path, feeds: Path) -> Iterator[dict[str, str]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ours_port, nginx_port = free_port(), free_port()
        procs.append(start_ours(tmp, feeds, ours_port))
        procs.append(start_nginx(tmp, feeds, nginx_port))
        urls = {
            "ours": f"http://127.0.0.1:{ours_port}/feeds/atom.xml",
            "nginx": f"http://127.0.0.1:{nginx_port}/feeds/atom.xml",
        }
        wait_ready(procs[0], urls["ours"], "uvicorn", tmp)
        wait_ready(procs[1], urls["nginx"], "nginx", tmp)
        yield urls
    finally:
        for proc in procs:
            stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--entries", type=int, default=50)
    parser.add_argument("--run-app", nargs=2, metavar=("FEEDS", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_app:
        run_app(args.run_app[0], int(args.run_app[1]))
        return 0
    if shutil.which("nginx") is None:
        print("nginx is not installed (apt-get install nginx-light)", file=sys.stderr)
        return 2
    # SIGTERM becomes SystemExit so the finally blocks stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    try:
        atom, source = atom_with_render_feeds(args.entries), "newsletter.publish.feeds.render_feeds"
    except Exception as exc:  # any failure (missing module, changed API): hand-written feed
        atom, source = atom_by_hand(args.entries), f"hand-written XML ({exc.__class__.__name__})"
    wrk = shutil.which("wrk") is not None
    load = run_wrk if wrk else run_httpx
    tmp = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    try:
        feeds = tmp / "feeds"
        feeds.mkdir()
        (feeds / "atom.xml").write_bytes(atom)
        print(f"feed: {args.entries} entries, {len(atom)} bytes, from {source}")
        print(
            f"load: {'wrk -t1' if wrk else 'Python httpx client (bounds the rate)'}, "
            f"{args.connections} connections, {args.duration:g} s per case, 127.0.0.1, "
            "no Accept-Encoding (identity bodies)"
        )
        print(
            f"host: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, one uvicorn process and one nginx process"
        )
        rows: list[tuple[str, str, float]] = []
        with servers(tmp, feeds) as urls:
            for server, url in urls.items():
                r = httpx.get(url, headers=IDENTITY, timeout=5)
                assert r.status_code == 200 and r.content == atom, (server, r.status_code)
                etag = r.headers["etag"]
                check = httpx.get(url, headers={**IDENTITY, "if-none-match": etag}, timeout=5)
                assert check.status_code == 304, (server, check.status_code)
                load(url, {}, 1, args.connections)  # warm up (our cache, nginx's page cache)
                for case, headers in (("200", {}), ("304", {"If-None-Match": etag})):
                    rows.append((server, case, load(url, headers, args.duration, args.connections)))
        rate = {(server, case): rps for server, case, rps in rows}
        print()
        print(f"{'server':<8}{'case':<6}{'req/s':>12}{'ours/nginx':>12}")
        for server, case, rps in rows:
            ratio = rate[("ours", case)] / rate[("nginx", case)]
            shown = f"{ratio:.3f}" if server == "ours" else "-"
            print(f"{server:<8}{case:<6}{rps:>12.0f}{shown:>12}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
