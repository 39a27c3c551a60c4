"""Screenshots of the public site's page families at 375 and 1280 px, light and dark.

Builds a fresh site from examples/articles the way a first `newsletter run` does (collect,
publish, issue 1 sent to a file outbox), serves it on loopback and saves
docs/screenshots/site-<family>-<width>-<scheme>.png with Debian's chromium:

    uv run --frozen --extra test python bench/screenshots.py [--only home,article] [--out DIR]

The article and section pages are found by following the home page's links (the first
link under [publication] article_path, the first section page); a family the site does not
serve yet is reported and skipped.

The `editor` family is the dashboard's issue editor: a site of its own where issue 1 is a
draft with an editor's note, logged in with the admin token, saved as
docs/screenshots/editor-1280-light.png, editor-1280-dark.png and editor-375-light.png
(the whole page: the preview beside the form at 1280 px, below it at 375 px).
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from newsletter import pipeline  # noqa: E402
from newsletter.audience import subscriptions as subs  # noqa: E402
from newsletter.config import Settings, load_settings  # noqa: E402
from newsletter.pipeline import sending  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
WIDTHS = {375: 812, 1280: 900}  # width → window height
FIXED = {"home": "/", "archive": "/issues/", "issue": "/issues/1", "subscribe": "/subscribe",
         "manage": "/manage", "login": "/admin/login"}
FAMILIES = ("home", "article", "section", *list(FIXED)[1:], "editor")
EDITOR_SHOTS = ((1280, "light"), (1280, "dark"), (375, "light"))
EDITOR_INTRO = ("A short week, and a *busy* one: the grid, the dollar and the Arctic.\n\n"
                "Tell us what you think: [write to the editors](mailto:editors@example.org).")
ADMIN_TOKEN = "s" * 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_settings(folder: Path, port: int) -> Settings:
    shutil.copytree(ROOT / "examples" / "articles", folder / "articles")
    text = (ROOT / "config" / "newsletter.toml").read_text(encoding="utf-8")
    text = (text.replace('"http://127.0.0.1:8000/"', f'"http://127.0.0.1:{port}/"')
            .replace("sqlite:///var/newsletter.db", f"sqlite:///{folder / 'n.db'}")
            .replace('path = "examples/articles"', f'path = "{folder / "articles"}"')
            .replace('output_dir = "feeds"', f'output_dir = "{folder / "feeds"}"'))
    text += f'\n[mail]\noutbox_dir = "{folder / "outbox"}"\n'
    (folder / "n.toml").write_text(text, encoding="utf-8")
    settings = load_settings(folder / "n.toml", environ={})
    # As NEWSLETTER_SECRETS_ADMIN_TOKEN would: the login page is only offered with a token.
    return replace(settings, secrets=replace(settings.secrets, admin_token=ADMIN_TOKEN))


def publish(settings: Settings) -> None:
    store = pipeline.open_store(settings)
    try:
        pipeline.collect(settings, store)
        pipeline.publish_feeds(settings, store)
        subs.subscribe(store, "reader@example.org", "Reader", method="admin", ip=None,
                       user_agent=None, now=datetime.now(UTC), confirmed=True)
        if pipeline.build_issue(settings, store).issue is not None:
            sending.start_sending(settings, store, sending.get_sendable(store, 1))
            sending.run_worker(settings, store, sending.get_sendable(store, 1))
    finally:
        store.close()


@contextmanager
def serving(settings: Settings, port: int) -> Iterator[str]:
    store = pipeline.open_store(settings)
    server = uvicorn.Server(uvicorn.Config(pipeline.web_app(settings, store), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise SystemExit("the web server did not start")
            time.sleep(0.02)  # polling interval inside a deadline
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


def find_pages(base: str, settings: Settings) -> dict[str, str]:
    """Every family's path; article and section from the home page's links."""
    pages = dict(FIXED)
    home = httpx.get(base + "/", timeout=10).text
    paths = [re.sub(r"^https?://[^/]+", "", h) for h in re.findall(r'href="([^"]+)"', home)]
    local = [p for p in paths if p.startswith("/") and not p.endswith((".xml", ".json"))]
    prefix = "/" + settings.publication.article_path.split("{slug}")[0].lstrip("/")
    article = next((p for p in local if p.startswith(prefix) and p != prefix), None)
    # A section page: whatever else the home page links to on this site (its URL is the
    # site publisher's choice), not an article, feed, archive or subscriber page.
    known = (prefix, "/feeds/", "/issues/", "/subscribe", "/manage", "/static/", "/admin/")
    section = next((p for p in local if "section" in p and not p.startswith(known)),
                   next((p for p in local if p != "/" and not p.startswith(known)), None))
    for family, path in (("article", article), ("section", section)):
        if path:
            pages[family] = path
    return pages


def shoot(base: str, pages: dict[str, str], only: list[str], out: Path, full: bool) -> int:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    missing = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for family in only:
                path = pages.get(family)
                if path is None or httpx.get(base + path, timeout=10).status_code != 200:
                    print(f"{family}: not served by this site yet, skipped")
                    missing += 1
                    continue
                for width, height in WIDTHS.items():
                    for scheme in ("light", "dark"):
                        page = browser.new_page(viewport={"width": width, "height": height},
                                                color_scheme=scheme)
                        page.goto(base + path)
                        name = out / f"site-{family}-{width}-{scheme}.png"
                        page.screenshot(path=str(name), full_page=full)
                        page.close()
                        shown = name.relative_to(ROOT) if name.is_relative_to(ROOT) else name
                        print(f"{family}: {path} → {shown}")
        finally:
            browser.close()
    return missing


def draft_issue(settings: Settings) -> None:
    """Issue 1 built from the example articles and left a draft, with an editor's note and
    without its oldest article (which "add an article" then offers)."""
    from newsletter.pipeline.editing import edit_issue

    store = pipeline.open_store(settings)
    try:
        pipeline.collect(settings, store)
        issue = pipeline.build_issue(settings, store, actor="scheduler").issue
        if issue is None:
            raise SystemExit("no issue could be built from examples/articles")
        oldest = min(issue.articles, key=lambda a: a.published)
        edit_issue(settings, store, 1, {
            "intro": EDITOR_INTRO, "preheader": "The grid, the dollar, the Arctic",
            "articles": [a.id for a in issue.articles if a is not oldest]},
            "dashboard 127.0.0.1")
    finally:
        store.close()


def shoot_editor(folder: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    folder.mkdir()
    port = free_port()
    settings = make_settings(folder, port)
    draft_issue(settings)
    out.mkdir(parents=True, exist_ok=True)
    with serving(settings, port) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for width, scheme in EDITOR_SHOTS:
                context = browser.new_context(viewport={"width": width, "height": WIDTHS[width]},
                                              color_scheme=scheme)
                page = context.new_page()
                page.goto(base + "/admin/login")
                page.get_by_label("Admin token").fill(ADMIN_TOKEN)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(base + "/admin/")
                page.goto(base + "/admin/issues/1/edit")
                page.frame_locator("#preview").get_by_text("write to the editors").wait_for()
                page.locator("#found button").first.wait_for()  # "add an article" answered
                name = out / f"editor-{width}-{scheme}.png"
                if width < 1000:
                    # The preview is below the form: chromium paints no sandboxed iframe
                    # outside the window in a full-page capture, so the window is the page.
                    height = page.evaluate("() => document.documentElement.scrollHeight")
                    page.set_viewport_size({"width": width, "height": height})
                    page.frame_locator("#preview").get_by_text("write to the editors").wait_for()
                page.screenshot(path=str(name), full_page=True)
                context.close()
                shown = name.relative_to(ROOT) if name.is_relative_to(ROOT) else name
                print(f"editor: /admin/issues/1/edit → {shown}")
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(FAMILIES),
                        help=f"comma-separated families (default: {','.join(FAMILIES)})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--full-page", action="store_true", help="the whole page, not the window")
    args = parser.parse_args()
    only = [f for f in args.only.split(",") if f]
    unknown = sorted(set(only) - set(FAMILIES))
    if unknown:
        parser.error(f"--only: unknown families {', '.join(unknown)} (choose from "
                     f"{', '.join(FAMILIES)})")
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is not installed (apt install chromium)")
    port, missing = free_port(), 0
    site = [f for f in only if f != "editor"]
    with tempfile.TemporaryDirectory(prefix="newsletter-shots-") as tmp:
        if site:
            settings = make_settings(Path(tmp), port)
            publish(settings)
            with serving(settings, port) as base:
                missing = shoot(base, find_pages(base, settings), site, args.out,
                                args.full_page)
        if "editor" in only:
            shoot_editor(Path(tmp) / "editor", args.out)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
