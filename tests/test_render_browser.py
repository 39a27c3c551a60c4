"""The rendered email in real chromium at desktop and phone widths; saves the screenshots."""

from __future__ import annotations

import http.server
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from newsletter.compose.render import Renderer, personalize
from tests.helpers.browser import ARGS, CHROMIUM, sync_api_or_skip
from tests.helpers.render import MASTHEAD, sample_issue

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"

sync_api = sync_api_or_skip()


def png(width: int, height: int) -> bytes:
    """A muted sky-over-sea gradient, encoded by hand so the test needs no image library."""
    rows = []
    for y in range(height):
        t = y / (height - 1)
        sea = y > height * 0.62
        r, g, b = ((38, 70, 92) if sea else (214, 196, 170))
        r2, g2, b2 = ((18, 40, 58) if sea else (122, 150, 172))
        shade = bytes((int(r + (r2 - r) * t), int(g + (g2 - g) * t), int(b + (b2 - b) * t)))
        rows.append(b"\x00" + shade * width)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b""))


class Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, tuple[str, bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        found = self.files.get(self.path)
        if found is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-type", found[0])
        self.send_header("content-length", str(len(found[1])))
        self.end_headers()
        self.wfile.write(found[1])

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def email_url(server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    rendered = Renderer().render_issue(sample_issue(image=f"{server}/harbour.png"), MASTHEAD,
                                       "https://ledger.example.org/issues/12")
    html = personalize(rendered.html, name="Zoë",
                       unsubscribe_url="https://ledger.example.org/unsubscribe?t=abc&s=1",
                       preferences_url="https://ledger.example.org/preferences?t=abc")
    # Written to a file as well: handy to open by hand when a check fails.
    (tmp_path_factory.mktemp("email") / "issue.html").write_text(html, encoding="utf-8")
    Files.files = {"/issue.html": ("text/html; charset=utf-8", html.encode("utf-8")),
                   "/harbour.png": ("image/png", png(1136, 640))}
    return f"{server}/issue.html"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


CHECKS = """() => ({
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  images: [...document.images].map(i => ({alt: i.getAttribute('alt'), loaded: i.naturalWidth,
                                          width: i.getBoundingClientRect().width})),
  hrefs: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
  container: document.querySelector('.container').getBoundingClientRect().width,
})"""


@pytest.mark.parametrize("width", [600, 375])
def test_layout_at_width(browser, email_url: str, width: int) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    try:
        page.goto(email_url, wait_until="load")
        found = page.evaluate(CHECKS)
        assert found["scrollWidth"] <= found["innerWidth"], found  # no sideways scrolling
        assert found["container"] <= width
        assert found["images"], "the sample issue has an article image"
        for image in found["images"]:
            assert image["alt"] and image["alt"].strip()
            assert image["loaded"] > 0, "the local image did not load"
            assert image["width"] <= min(568, width)
        assert found["hrefs"]
        for href in found["hrefs"]:
            assert href.startswith(("https://", "http://", "mailto:")), href
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / f"issue-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        page.close()


def test_dark_mode_colours_apply(browser, email_url: str) -> None:
    page = browser.new_page(viewport={"width": 600, "height": 900}, color_scheme="dark")
    try:
        page.goto(email_url, wait_until="load")
        colours = page.evaluate("""() => {
          const style = s => getComputedStyle(document.querySelector(s));
          return {container: style('.container').backgroundColor,
                  title: style('.article-title a').color};
        }""")
        assert colours == {"container": "rgb(29, 27, 24)", "title": "rgb(241, 236, 227)"}
    finally:
        page.close()

