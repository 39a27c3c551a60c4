"""How an edited issue looks: links in the intro in the email's palette (and every email
without an intro byte for byte as before), and a draft's signed preview marked as a draft."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from webserver import running

from newsletter import pipeline
from newsletter.compose.render import Renderer
from newsletter.config import Settings
from newsletter.pipeline.issue_links import IssueLinks
from tests.helpers.issues import piece
from tests.helpers.render import MASTHEAD, sample_issue

GOLDEN = Path(__file__).parent / "golden"
ARCHIVE_URL = "https://ledger.example.org/issues/12"
INTRO = "Read [our guide](https://ledger.example.org/guide/) first."


def test_intro_links_wear_the_palette_and_other_emails_are_unchanged() -> None:
    plain = Renderer().render_issue(sample_issue(), MASTHEAD, ARCHIVE_URL)
    assert plain.html == (GOLDEN / "issue.html").read_text("utf-8")  # no intro: as before
    assert ".intro a" not in plain.html

    noted = Renderer().render_issue(dataclasses.replace(sample_issue(), intro=INTRO),
                                    MASTHEAD, ARCHIVE_URL)
    link = re.search(r'<div class="intro"[^>]*>.*?(<a [^>]*>)our guide</a>', noted.html, re.S)
    assert link, "the intro's link"
    # As the other links in the body (the notice's): the palette's red, bold.
    assert 'href="https://ledger.example.org/guide/"' in link[1]
    assert re.search(r'style="[^"]*color:#9b1c1c[^"]*font-weight:bold', link[1]), link[1]
    # And its dark-mode colour, as the other links have.
    dark = noted.html[noted.html.index("prefers-color-scheme: dark"):]
    assert re.search(r"\.intro a\s*\{\s*color:\s*#f08a7e\s*!important", dark)


def test_a_drafts_preview_says_it_is_a_draft(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = pipeline.open_store(settings)
    try:
        now = datetime.now(UTC)
        store.save_articles([piece("cranes", "Harbour cranes return", "World", 2, now=now)],
                            [], now)
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None
        url = IssueLinks.from_settings(settings, store).preview_url(issue, now)
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as web:
            page = web.get("/issues/1?" + url.partition("?")[2])
            assert page.status_code == 200
            text = page.text
            assert '<strong class="error">Draft — not published</strong>' in text
            assert "not in the archive" in text
            assert f"<title>Draft: {issue.subject}" in text
            # No trail to an archive that does not list it, no canonical address.
            assert 'class="kicker"><a href' not in text
            assert 'aria-current="page"' not in text and 'rel="canonical"' not in text
            assert '<meta name="robots" content="noindex, nofollow">' in text
            assert web.get("/issues/1").status_code == 404  # still unpublished
    finally:
        store.close()
