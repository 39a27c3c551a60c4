"""Issue email rendering: golden files, inlining, placeholders, size limit, text part, archive."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from html import escape
from pathlib import Path

import feedparser
import pytest
from jinja2 import Environment

from newsletter.compose.render import (
    DEFAULT_TEMPLATES,
    SIZE_LIMIT,
    Masthead,
    Renderer,
    archive_feed,
    personalize,
    personalize_text,
)
from newsletter.errors import NewsletterError
from newsletter.models import IssueSection
from tests.helpers.render import (
    ARCHIVE_URL,
    GOLDEN,
    MASTHEAD,
    Tags,
    article,
    long_issue,
    sample_issue,
)

PLACEHOLDERS = {"%%UNSUBSCRIBE_URL%%", "%%PREFERENCES_URL%%"}


@pytest.fixture(scope="module")
def rendered():
    return Renderer().render_issue(sample_issue(), MASTHEAD, ARCHIVE_URL)


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual.encode("utf-8"))
    assert actual == path.read_bytes().decode("utf-8"), (
        f"{name} differs from the golden file; rerun with UPDATE_GOLDEN=1 if intended")


def test_golden_files(rendered) -> None:
    check_golden("issue.html", rendered.html)
    check_golden("issue.txt", rendered.text)
    assert Renderer().render_issue(sample_issue(), MASTHEAD, ARCHIVE_URL) == rendered


def test_email_skeleton(rendered) -> None:
    doc = Tags(rendered.html)
    assert rendered.html.startswith("<!DOCTYPE html>")
    assert doc.attrs("html") == [{"lang": "en", "dir": "ltr"}]
    metas = {a.get("name"): a.get("content") for a in doc.attrs("meta")}
    assert metas["color-scheme"] == "light dark"
    assert metas["supported-color-schemes"] == "light dark"
    tables = doc.attrs("table")
    assert tables and all(t.get("role") == "presentation" for t in tables)
    assert any(t.get("width") == "600" and "max-width:600px" in t["style"] for t in tables)
    preheader = [a for t, a in doc.tags if "preheader" in a.get("class", "")]
    assert preheader and "display:none" in preheader[0]["style"]
    assert "A new terminal for the harbour" in rendered.html
    links = {a["href"]: a for a in doc.attrs("a")}
    assert ARCHIVE_URL in links  # "View in browser"
    assert "https://ledger.example.org/articles/1-story" in links
    text = " ".join(doc.text)
    for heading in ("City", "Economy", "Culture"):
        assert heading in text
    assert "By Zoë Ångström, Jürgen Groß and Ōkubo Tarō" in text
    assert "Body of article 4, first paragraph." in text  # stands in for a missing summary
    assert "1 Harbour Street" in text and "Port Town PT1 2AB" in text
    assert MASTHEAD.reason in text
    assert "<script>" not in rendered.html
    assert "Budget &lt;script&gt;alert(1)&lt;/script&gt; &amp; the council’s" in rendered.html
    assert "Budget <script>alert(1)</script> & the council’s arithmetic" in rendered.text


def test_styles_are_inlined_and_media_queries_kept(rendered) -> None:
    doc = Tags(rendered.html)
    cells = doc.attrs("td")
    assert cells and all("style" in td for td in cells)
    article_cell = next(td for td in cells if td.get("class") == "article")
    assert "padding:22px 16px 24px" in article_cell["style"]
    styles = re.findall(r"<style>(.*?)</style>", rendered.html, re.S)
    assert len(styles) == 1
    head = rendered.html.split("</head>")[0]
    assert "<style>" in head
    assert "@media only screen and (max-width: 620px)" in styles[0]
    assert "@media (prefers-color-scheme: dark)" in styles[0]
    assert "border-left: 0 !important" in styles[0]
    # Plain rules were moved into the attributes, not sent twice.
    assert ".byline {" not in styles[0].split("@media")[0]


def test_placeholders_survive_inlining(rendered) -> None:
    hrefs = [a["href"] for a in Tags(rendered.html).attrs("a")]
    assert "%%UNSUBSCRIBE_URL%%" in hrefs and "%%PREFERENCES_URL%%" in hrefs
    assert 'href="%%UNSUBSCRIBE_URL%%"' in rendered.html
    assert "Hello %%NAME%%," in rendered.html
    assert "Unsubscribe: %%UNSUBSCRIBE_URL%%" in rendered.text
    assert "Preferences: %%PREFERENCES_URL%%" in rendered.text
    assert "Hello %%NAME%%," in rendered.text


def test_personalize_escapes_values(rendered) -> None:
    unsubscribe = "https://ledger.example.org/u?t=a&b=\"c\"&d='e'"
    name = '"><script>alert(1)</script> %%UNSUBSCRIBE_URL%%'
    html = personalize(rendered.html, unsubscribe_url=unsubscribe,
                       preferences_url="https://ledger.example.org/p?x=1&y=2", name=name)
    assert "%%" not in html.replace(escape(name), "")  # only the name's own text is left
    assert "<script>" not in html
    assert 'href="https://ledger.example.org/u?t=a&amp;b=&quot;c&quot;&amp;d=&#x27;e&#x27;"' \
        in html
    doc = Tags(html)
    hrefs = [a["href"] for a in doc.attrs("a")]
    assert unsubscribe in hrefs and "https://ledger.example.org/p?x=1&y=2" in hrefs
    # The name is text, and a placeholder inside it is not expanded a second time.
    assert f"Hello {name}," in "".join(doc.text)
    text = personalize_text(rendered.text, unsubscribe_url=unsubscribe,
                            preferences_url="https://p.example/", name="Zoë")
    assert f"Unsubscribe: {unsubscribe}" in text and "Hello Zoë," in text and "%%" not in text


def test_personalize_without_a_name_and_with_newlines(rendered) -> None:
    values = {"unsubscribe_url": "https://u.example/", "preferences_url": "https://p.example/"}
    assert "Hello there," in personalize(rendered.html, name="", **values)
    text = personalize_text(rendered.text, name="Eve\nBcc: x@example.org", **values)
    assert "Hello Eve Bcc: x@example.org," in text


def test_cssutils_logs_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # CSS no earlier test parsed, so premailer's parse cache cannot hide a warning.
    (tmp_path / "email").mkdir()
    css = (DEFAULT_TEMPLATES / "email" / "styles.css").read_text(encoding="utf-8")
    extra = ".byline { mso-line-height-alt: 17px; -webkit-font-smoothing: antialiased; }\n"
    (tmp_path / "email" / "styles.css").write_text(css + extra, encoding="utf-8")
    caplog.set_level(logging.DEBUG)
    result = Renderer(tmp_path).render_issue(sample_issue(), MASTHEAD, ARCHIVE_URL)
    assert "mso-line-height-alt:17px" in result.html and "mso-table-lspace" in result.html
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]


def absolute_or_placeholder(url: str) -> bool:
    return url in PLACEHOLDERS or re.match(r"(https?://[^/\s]+|mailto:)", url) is not None


def assert_links_and_images(html: str, *, page: bool = False) -> None:
    """Absolute links and images with alt text; a web `page` may also have its skip link and
    the site's stylesheet, both on the site itself."""
    doc = Tags(html)
    for tag, attrs in doc.tags:
        for name in ("href", "src"):
            if page and attrs.get(name) in ("#content", "/static/site.css"):
                continue
            if name in attrs:
                assert absolute_or_placeholder(attrs[name]), (tag, attrs[name])
                assert not attrs[name].startswith("#")
    images = doc.attrs("img")
    assert all(img.get("alt", "").strip() for img in images), images


def test_links_are_absolute_and_images_have_alt(rendered) -> None:
    assert_links_and_images(rendered.html)
    assert len(Tags(rendered.html).attrs("img")) == 1


def test_bad_links_are_resolved_or_dropped() -> None:
    odd = (
        article(1, "Relative", section="S", link="/articles/rel", image="/img/a.png"),
        article(2, "Fragment", section="S", link="#", image="#top"),
        article(3, "Script", section="S", link="javascript:alert(1)"),
        article(4, "", section="S", credit="Photo: Ann", image="https://cdn.example.org/x.png"),
    )
    issue = dataclasses.replace(sample_issue(), sections=(IssueSection("S", odd),))
    html = Renderer().render_issue(issue, MASTHEAD, ARCHIVE_URL).html
    assert_links_and_images(html)
    assert 'href="https://ledger.example.org/articles/rel"' in html
    assert 'src="https://ledger.example.org/img/a.png"' in html
    assert "javascript:" not in html and 'href="#' not in html
    alts = [img["alt"] for img in Tags(html).attrs("img")]
    assert alts == ["Relative", "Photo: Ann"]


def test_big_issue_stays_under_the_size_limit() -> None:
    result = Renderer().render_issue(long_issue(60), MASTHEAD, ARCHIVE_URL)
    size = len(result.html.encode("utf-8"))
    assert size < SIZE_LIMIT
    assert result.summary_limit is not None  # summaries had to be cut …
    assert result.omitted == 0  # … and that was enough
    assert "%%UNSUBSCRIBE_URL%%" in result.html and "%%PREFERENCES_URL%%" in result.html
    assert "Summaries are shortened to fit your inbox" in result.html
    assert Tags(result.html).attrs("a")[-3]["href"] == ARCHIVE_URL  # the notice's link
    assert_links_and_images(result.html)
    assert f"Read the full issue: {ARCHIVE_URL}" in result.text


def test_huge_issue_drops_trailing_articles() -> None:
    issue = long_issue(200, summary_bytes=400)
    result = Renderer().render_issue(issue, MASTHEAD, ARCHIVE_URL)
    assert len(result.html.encode("utf-8")) < SIZE_LIMIT
    assert result.summary_limit == 0 and 0 < result.omitted < 200
    kept = 200 - result.omitted
    titles = [a.title for a in issue.articles]
    assert titles[kept - 1] in result.html and titles[kept] not in result.html
    more = f"{result.omitted} more articles in the archive"
    assert more in result.html and more in result.text
    assert "%%UNSUBSCRIBE_URL%%" in result.html
    assert f'href="{ARCHIVE_URL}"' in result.html.split(more)[0].rsplit("<a ", 1)[1]
    assert_links_and_images(result.html)


def test_text_part(rendered) -> None:
    lines = rendered.text.splitlines()
    for line in lines:
        assert len(line) <= 72 or re.fullmatch(r"https?://\S+", line), line
    assert lines[:3] == ["The Ledger", "Issue 12 · 15 June 2024", ""]
    assert f"View in browser: {ARCHIVE_URL}" in lines
    for heading in ("City", "Economy", "Culture"):
        i = lines.index(heading)
        assert lines[i + 1] == "=" * len(heading)
    assert "Harbour authority approves the new container terminal" in lines
    assert "By Sam Ortiz and Lee Chen" in lines
    assert "By Zoë Ångström, Jürgen Groß and Ōkubo Tarō" in lines
    assert "By Maria Keller" in lines
    for n in range(1, 6):
        assert f"https://ledger.example.org/articles/{n}-story" in lines
    assert "1 Harbour Street" in lines and MASTHEAD.reason in lines


def test_text_part_names_the_publication_once() -> None:
    # The shipped config's subject and postal address both hold the name; neither the
    # header nor the footer may print it twice.
    masthead = dataclasses.replace(MASTHEAD, postal_address="The Ledger, 1 Harbour Street",
                                   reason="")
    issue = dataclasses.replace(sample_issue(), subject="The Ledger No. 12 — 15 June 2024")
    result = Renderer().render_issue(issue, masthead, ARCHIVE_URL)
    head, _, rest = result.text.partition("View in browser")
    assert head.count("The Ledger") == 1
    footer = rest.rpartition("-" * 20)[2]
    assert footer.count("The Ledger") == 1 and "The Ledger, 1 Harbour Street" in footer
    html_footer = result.html.rpartition('class="footer"')[2]
    assert html_footer.count("The Ledger") == 1 and "footer-name" not in html_footer
    # An address without the name keeps the name above it.
    plain = Renderer().render_issue(issue, MASTHEAD, ARCHIVE_URL).text.rpartition("-" * 20)[2]
    assert plain.splitlines()[1:3] == ["The Ledger", "1 Harbour Street"]


def test_text_never_breaks_urls() -> None:
    url = "https://ledger.example.org/articles/" + "very-long-slug-" * 8 + "end"
    long = article(1, "A title " * 15, section="S", link=url,
                   summary=f"See {url} for the full decision, which runs to forty pages.")
    issue = dataclasses.replace(sample_issue(), sections=(IssueSection("S", (long,)),))
    text = Renderer().render_issue(issue, MASTHEAD, ARCHIVE_URL).text
    lines = text.splitlines()
    assert url in lines  # the "read more" URL on its own line
    pieces = [line for line in lines if "very-long-slug" in line]
    assert len(pieces) == 2 and all(url in line for line in pieces)  # summary and link
    for line in lines:
        assert len(line) <= 72 or url in line, line


def test_masthead_validation_and_rtl() -> None:
    masthead = dataclasses.replace(MASTHEAD, language="ar", direction="rtl")
    html = Renderer().render_issue(sample_issue(), masthead, ARCHIVE_URL).html
    assert '<html lang="ar" dir="rtl">' in html
    assert any(t.get("dir") == "rtl" for t in Tags(html).attrs("table"))
    assert Masthead(name="N", base_url="https://x.example").base_url == "https://x.example/"
    with pytest.raises(ValueError, match="base_url"):
        Masthead(name="N", base_url="/relative/")
    with pytest.raises(ValueError, match="direction"):
        Masthead(name="N", base_url="https://x.example/", direction="up")
    with pytest.raises(ValueError, match="archive_url"):
        Renderer().render_issue(sample_issue(), MASTHEAD, "/issues/12")


def test_operator_template_overrides_one_file(tmp_path: Path) -> None:
    original = (DEFAULT_TEMPLATES / "email" / "issue.html").read_text(encoding="utf-8")
    assert "View in browser" in original
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "issue.html").write_text(
        original.replace("View in browser", "Read it on the web"), encoding="utf-8")
    html = Renderer(tmp_path).render_issue(sample_issue(), MASTHEAD, ARCHIVE_URL).html
    assert "Read it on the web" in html and "View in browser" not in html
    assert 'href="%%UNSUBSCRIBE_URL%%"' in html  # the rest still comes from templates/
    with pytest.raises(NewsletterError, match="templates_dir"):
        Renderer(tmp_path / "nope")


def test_templates_see_only_plain_values(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-TOP-SECRET-5b1e"
    monkeypatch.setenv("NEWSLETTER_SECRETS_SECRET_KEY", secret)
    monkeypatch.setenv("NEWSLETTER_SMTP_PASSWORD", secret)
    renderer = Renderer()
    default = Environment()
    # Nothing added to what every template can reach: no settings, env or secrets.
    assert renderer.env.globals.keys() == default.globals.keys()
    assert renderer.env.filters.keys() == default.filters.keys()
    assert [f.name for f in dataclasses.fields(Masthead)] == [
        "name", "base_url", "language", "direction", "postal_address", "reason"]
    result = renderer.render_issue(sample_issue(), MASTHEAD, ARCHIVE_URL)
    page = renderer.render_archive_page(sample_issue(), MASTHEAD, ARCHIVE_URL)
    for output in (result.html, result.text, page):
        assert secret not in output


def test_archive_page_has_no_personal_data() -> None:
    page = Renderer().render_archive_page(sample_issue(), MASTHEAD, ARCHIVE_URL)
    assert "%%" not in page
    assert "Hello" not in page
    hrefs = {a["href"] for a in Tags(page).attrs("a")}
    assert {"https://ledger.example.org/subscribe", "https://ledger.example.org/manage",
            "https://ledger.example.org/issues/"} <= hrefs
    assert f'<link rel="canonical" href="{ARCHIVE_URL}">' in page
    assert "Harbour authority approves the new container terminal" in page
    assert '<link rel="stylesheet" href="/static/site.css">' in page  # the site's one look
    assert '<main id="content"' in page
    assert_links_and_images(page, page=True)


def test_archive_list_and_feed() -> None:
    issues = [sample_issue(number=n) for n in (1, 2, 3)]
    base = "https://ledger.example.org/issues/"
    page = Renderer().render_archive_list(issues, MASTHEAD, base)
    hrefs = [a["href"] for a in Tags(page).attrs("a")]
    assert [f"{base}{n}" for n in (1, 2, 3)] == [h for h in hrefs if h[len(base):].isdigit()]
    assert_links_and_images(page, page=True)
    assert "No issues" in Renderer().render_archive_list([], MASTHEAD, base)

    feed = archive_feed(issues, MASTHEAD, base)
    assert feed == archive_feed(list(reversed(issues)), MASTHEAD, base)
    parsed = feedparser.parse(feed)
    assert parsed.bozo == 0
    assert [e.link for e in parsed.entries] == [f"{base}{n}" for n in (3, 2, 1)]
    assert parsed.feed.updated == "2024-06-06T09:30:00+00:00"  # the newest issue's
    assert any(link.rel == "self" and link.href == f"{base}feed.xml"
               for link in parsed.feed.links)
    empty = feedparser.parse(archive_feed([], MASTHEAD, base))
    assert empty.bozo == 0 and empty.entries == []
