"""Tests for the magazine's digest export format."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter.collect.sources.digest import join_split_paragraphs, looks_like_digest, parse_digest
from newsletter.errors import SourceError
from newsletter.models import ArticleDraft

FIXTURES = Path(__file__).parent / "fixtures" / "articles"

HEADER = "# ***MERIDIAN POLICY REVIEW***\n\n## Economy\n\nMay 6, 2025\n\n**Ana Lima**\n\n"


def load(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def digest(body: str, title: str = "### **A Title**", header: str = HEADER) -> str:
    return f"{header}{title}\n\n{body}"


def day(year: int, month: int, dom: int) -> datetime:
    return datetime(year, month, dom, tzinfo=UTC)


GOOD: dict[str, dict[str, Any]] = {
    "digest-one-author.md": {
        "title": "Water Treaties Are the Next Diplomatic Frontier",
        "published": day(2025, 10, 3),
        "authors": ("Amira Haddad",),
        "section": "World News",
        "image_credit": "Photo by Tomas Lindqvist",
        "slug": "water-treaties-are-the-next-diplomatic-frontier",
        "summary": "Rivers do not respect borders, and the agreements that share them were mostly "
        "written for a cooler, emptier world. Across three continents, governments are quietly "
        "reopening treaties that once seemed settled.",
        "body_html": "<p>Rivers do not respect borders, and the agreements that share them were "
        "mostly written for a cooler, emptier world. Across three continents, governments are "
        "quietly reopening treaties that once seemed settled.</p>\n"
        "<p>The pressure comes from both ends of the supply chain. Upstream states want room to "
        "build dams and irrigation schemes; downstream states want guaranteed flows in the dry "
        "months.</p>\n"
        "<p>None of this is new. What is new is the speed at which the old assumptions are "
        "failing.</p>\n",
    },
    "digest-three-authors.md": {
        "title": "Why Small Ports Matter for Big Trade",
        "published": day(2025, 3, 14),
        "authors": ("Jonas Ekberg", "Priya Raman", "Zoë Marchetti"),
        "section": "Economy",
        "image_credit": "Photograph: Li Wei",
        "slug": "why-small-ports-matter-for-big-trade",
        "summary": "Container giants get the headlines, but regional ports handle the goods that "
        "keep local economies running: fertiliser, timber, spare parts and fuel.",
        "body_html": "<p>Container giants get the headlines, but regional ports handle the goods "
        "that keep local economies running: fertiliser, timber, spare parts and fuel.</p>\n"
        "<p>When a small port closes, the cost shows up months later in higher prices "
        "inland.</p>\n",
    },
    "digest-no-credit.md": {
        "title": "Open Standards, Closed Markets",
        "published": day(2025, 7, 1),
        "authors": ("Kenji Watanabe",),
        "section": "Technology",
        "image_credit": "",
        "slug": "open-standards-closed-markets",
        "summary": "Interoperability was supposed to be the great leveller. Instead, the firms "
        "that write the standards increasingly decide who can afford to follow them.",
        "body_html": "<p>Interoperability was supposed to be the great leveller. Instead, the "
        "firms that write the standards increasingly decide who can afford to follow them.</p>\n"
        "<p>Regulators have noticed.</p>\n",
    },
    "digest-real-links.md": {
        "title": "Reading the Fine Print of Industrial Policy",
        "published": day(2025, 11, 2),
        "authors": ("Leila Farouk",),
        "section": "Economy",
        "image_credit": "Image: Meridian archive",
        "slug": "reading-the-fine-print-of-industrial-policy",
        "summary": "The latest budget report sets out subsidies worth more than the previous "
        "decade combined. Critics point to an independent review that found most of the money "
        "went to firms that would have invested anyway.",
        "body_html": '<p>The latest <a href="https://example.org/budget-2025.pdf" '
        'title="Budget 2025">budget report</a> sets out subsidies worth more than the previous '
        'decade combined. Critics point to an <a href="https://example.org/review">independent '
        "review</a> that found most of the money went to firms that would have invested "
        "anyway.</p>\n"
        "<p>Supporters answer with a placeholder study and a "
        '<a href="https://example.org/forthcoming">second one</a> that has yet to be '
        "published.</p>\n",
    },
    "digest-split-paragraph.md": {
        "title": "The Quiet Return of Regional Blocs",
        "published": day(2025, 8, 19),
        "authors": ("Samuel Okafor", "Ines Duarte"),
        "section": "World News",
        "image_credit": "Photo illustration by Marta Kowalska",
        "slug": "the-quiet-return-of-regional-blocs",
        "summary": "For a decade the talk was of a single global market. The reality now looks "
        "more like a set of overlapping clubs, each with its own rules on data, energy and "
        "investment screening. Members gain predictability; outsiders pay a premium.",
        "body_html": "<p>For a decade the talk was of a single global market. The reality now "
        "looks more like a set of overlapping clubs, each with its own rules on data, energy and "
        "investment screening. Members gain predictability; outsiders pay a premium.</p>\n"
        "<p>The shift is visible in the calendar of summits, which has grown crowded with "
        "meetings of groups that barely existed ten years ago, and in the paperwork that now "
        "accompanies even modest shipments.</p>\n"
        "<p>This paragraph ends properly.</p>\n"
        "<p>lowercase starts are left alone after a full stop.</p>\n"
        "<p>A line that trails off without punctuation</p>\n"
        "<p>But the next one starts with a capital letter, so nothing is joined.</p>\n"
        "<p>“Quoted sentences end inside the quote.”</p>\n"
        "<p>and this lowercase paragraph stays separate.</p>\n"
        "<ul>\n<li>a list item without punctuation</li>\n</ul>\n"
        "<p>continues as a new paragraph, not inside the list.</p>\n",
    },
    "digest-placeholder-links.md": {
        "title": "Chips, Export Controls and the Allies Who Pay for Them",
        "published": day(2024, 12, 9),
        "authors": ("Nadia Petrova",),
        "section": "Technology",
        "image_credit": "Photo by Carlos Mendes",
        "slug": "chips-export-controls-and-the-allies-who-pay-for-them",
        "summary": "Officials described the rules as “Narrow, Targeted and “Temporary”” when "
        "they were announced, and a senior adviser called them the [first] step of many.",
        "body_html": "<p>Officials described the rules as “Narrow, Targeted and “Temporary”” "
        "when they were announced, and a senior adviser called them the [first] step of "
        "many.</p>\n"
        "<p>Industry groups responded with an <em>open letter</em>, a "
        '<a href="https://example.org/statement">real statement</a>, and a reference-style '
        "placeholder.</p>\n"
        "<p>Code spans are left alone: <code>[not a link](#)</code>.</p>\n",
    },
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_digests_fill_every_field(name: str) -> None:
    origin = f"articles/{name}"
    draft = parse_digest(load(f"good/{name}"), origin)
    assert draft == ArticleDraft(origin=origin, **GOOD[name])
    # Fields a digest never has stay empty; the dataclass comparison above covers them,
    # this spells it out for the reader.
    assert (draft.updated, draft.image, draft.url, draft.guid, draft.tags) == (None, "", "", "", ())
    assert 'href="#"' not in draft.body_html


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_digests_are_recognised(name: str) -> None:
    assert looks_like_digest(load(f"good/{name}"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# ***NAME***\n\nanything", True),
        ("\n\n# __NAME__\n", True),
        ("# *NAME*\n", True),
        ("# NAME\n\n## World\n\nSeptember 5, 2025\n", True),
        ("\ufeff# NAME\r\n\r\n## World\r\n\r\n5 September 2025\r\n", True),
        ("# NAME\n\n## World\n\nNot a date\n", False),
        ("# NAME\n\nSeptember 5, 2025\n", False),
        ("# Plain Title\n\nSome text.\n", False),
        ("## ***Second level***\n", False),
        ("#***no space***\n", False),
        ("---\ntitle: x\n---\n# ***NAME***\n", False),
        ("Some text\n# ***NAME***\n", False),
        ("", False),
        ("\n  \n", False),
    ],
)
def test_looks_like_digest(text: str, expected: bool) -> None:
    assert looks_like_digest(text) is expected


def test_the_real_export_shape_with_bom_crlf_and_extra_blank_lines() -> None:
    text = load("good/digest-one-author.md").replace("\n", "\r\n")
    draft = parse_digest("\ufeff\r\n\r\n" + text, "x.md")
    assert draft.title == "Water Treaties Are the Next Diplomatic Frontier"
    assert draft.published == day(2025, 10, 3)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("September 5, 2025", day(2025, 9, 5)),
        ("Sept. 5, 2025", day(2025, 9, 5)),
        ("sep 5 2025", day(2025, 9, 5)),
        ("September 5th, 2025", day(2025, 9, 5)),
        ("Friday, September 5, 2025", day(2025, 9, 5)),
        ("5 September 2025", day(2025, 9, 5)),
        ("2025-09-05", day(2025, 9, 5)),
        ("*September 5, 2025*", day(2025, 9, 5)),
        ("February 29, 2024", day(2024, 2, 29)),
    ],
)
def test_date_line_forms(line: str, expected: datetime) -> None:
    header = f"# ***R***\n\n## World\n\n{line}\n\n**A B**\n\n"
    assert parse_digest(digest("Body.", header=header), "x.md").published == expected


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("# ***R***\n\n## World\n\n**A B**\n\n", "no date line: expected a date line like"),
        ("# ***R***\n\n## World\n\nSeptembre 5, 2025\n\n", "found 'Septembre 5, 2025'"),
        ("# ***R***\n\n## World\n\nFebruary 29, 2025\n\n", "bad date line 'February 29, 2025'"),
        ("# ***R***\n\n## World\n\nMay 32, 2025\n\n", "no such day in the calendar"),
        ("# ***R***\n\n## World\n\n2025-13-01\n\n", "bad date line '2025-13-01'"),
        ("# ***R***\n\n## World\n\nDecember 31, 9999\n\n", "has year 9999, outside 1000-2999"),
        ("Intro text\n\n", "does not start with the '# PUBLICATION' heading"),
    ],
)
def test_bad_headers(header: str, reason: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_digest(digest("Body.", header=header), "bad.md")
    assert caught.value.where == "bad.md"
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "does not start with the '# PUBLICATION' heading"),
        ("# ***R***\n\n## World\n", "no date line"),
        ("# ***R***\n\n## World\n\nMay 6, 2025\n\n**A**\n", "no title heading"),
        (HEADER + "### ** **\n\nBody.", "the title heading '### ** **' is empty"),
        (HEADER + "###\n\nBody.", "is empty"),
        # Without a title heading, body text must not be read as a very long "credit".
        (HEADER + "A paragraph.\n\nAnother.\n\nA third.\n\nA fourth.\n\n## Later\n", "no title"),
        (HEADER + ("word " * 100) + "\n\n## Later\n", "no title heading"),
    ],
)
def test_malformed_digests(text: str, reason: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_digest(text, "bad.md")
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "digest-no-date.md",
            "no date line: expected a date line like 'September 5, 2025' after "
            "the section heading, found '**Amira Haddad**'",
        ),
        (
            "digest-no-title.md",
            "no title heading (such as '### **Title**') after the date and author lines",
        ),
        ("digest-bad-date.md", "bad date line 'February 30, 2025': no such day in the calendar"),
    ],
)
def test_broken_fixtures(name: str, reason: str) -> None:
    origin = f"articles/{name}"
    with pytest.raises(SourceError) as caught:
        parse_digest(load(f"bad/{name}"), origin)
    assert caught.value.reason == reason
    assert str(caught.value) == f"{origin}: {reason}"


@pytest.mark.parametrize(
    ("lines", "authors", "credit"),
    [
        ("**By Jane Roe**", ("Jane Roe",), ""),
        ("**Jane Roe** and **John Doe**", ("Jane Roe", "John Doe"), ""),
        ("**Jane Roe**, **John Doe** & **Ann Lee**", ("Jane Roe", "John Doe", "Ann Lee"), ""),
        ("__Jane Roe__", ("Jane Roe",), ""),
        ("**Jane Roe**\n\n**Jane Roe**", ("Jane Roe",), ""),
        ("**Jane Roe**\n\n**Photo by Max Mustermann**", ("Jane Roe",), "Photo by Max Mustermann"),
        ("Photo by [Max](https://example.org/max)", (), "Photo by Max"),
        ("**Jane Roe**\n\nIllustration by A\nand B", ("Jane Roe",), "Illustration by A and B"),
        ("**Jane** Roe", (), "Jane Roe"),
    ],
)
def test_author_and_credit_lines(lines: str, authors: tuple[str, ...], credit: str) -> None:
    header = f"# ***R***\n\n## Section\n\nMay 6, 2025\n\n{lines}\n\n"
    draft = parse_digest(digest("Body.", header=header), "x.md")
    assert draft.authors == authors
    assert draft.image_credit == credit


@pytest.mark.parametrize(
    ("header", "section"),
    [
        ("# ***R***\n\nMay 6, 2025\n\n", ""),  # no section line
        ("## World News\n\nMay 6, 2025\n\n", "World News"),  # no publication line
        ("# R\n\n## **Tech & *Society***\n\nMay 6, 2025\n\n", "Tech & Society"),
    ],
)
def test_section_is_optional_and_plain(header: str, section: str) -> None:
    assert parse_digest(digest("Body.", header=header), "x.md").section == section


@pytest.mark.parametrize(
    ("heading", "title"),
    [
        ("# **Level One**", "Level One"),
        ("#### Level Four", "Level Four"),
        ("### **Why *Das Kapital* Still Sells**", "Why Das Kapital Still Sells"),
        ("### __Underscored__ ###", "Underscored"),
        ("### Tom &amp; Jerry \\*Live\\*", "Tom & Jerry *Live*"),
        ("### C# in `Government`", "C# in Government"),
        ("### **Unbalanced Bold*", "Unbalanced Bold"),
        ("### *** Starred ***", "Starred"),
    ],
)
def test_title_heading_is_plain_text(heading: str, title: str) -> None:
    assert parse_digest(digest("Body.", title=heading), "x.md").title == title


def test_slug_folds_accents_and_survives_non_latin_titles() -> None:
    draft = parse_digest(digest("Body.", title="### **Zoë’s Café: Été 2025**"), "x.md")
    assert draft.slug == "zoes-cafe-ete-2025"
    chinese = parse_digest(digest("Body.", title="### 经济"), "x.md")
    assert chinese.slug.startswith("article-")


def test_summary_is_trimmed_at_a_word_with_an_ellipsis() -> None:
    first = " ".join(f"word{i}" for i in range(100)) + "."
    draft = parse_digest(digest(f"{first}\n\nSecond paragraph."), "x.md")
    assert len(draft.summary) <= 300
    assert draft.summary.endswith("\u2026")
    assert first.startswith(draft.summary[:-1])
    assert draft.summary[-2] != " "
    assert first[len(draft.summary) - 1] == " "  # the cut fell on a word boundary


def test_summary_skips_leading_non_paragraphs_and_may_be_empty() -> None:
    draft = parse_digest(digest("> A quote.\n\n## Sub\n\nThe *first* paragraph."), "x.md")
    assert draft.summary == "The first paragraph."
    assert parse_digest(digest("- only a list"), "x.md").summary == ""
    assert parse_digest(digest(""), "x.md").body_html == ""


def test_body_keeps_template_braces_and_raw_html() -> None:
    html = parse_digest(digest("Dear {{ name }}, <b>hi</b>."), "x.md").body_html
    assert html == "<p>Dear {{ name }}, <b>hi</b>.</p>\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("one and\n\ntwo.", "one and two.\n"),
        ("one “quoted”\n\ntwo.", "one “quoted” two.\n"),
        ("a [link](#)\n\nand more.", "a [link](#) and more.\n"),
        ("one and\n\n*two* more.", "one and *two* more.\n"),
        ("one and\n\n[two](x) more.", "one and [two](x) more.\n"),
        ("a\n\nb\n\nc", "a b c\n"),
        ("ends.\n\nlower", "ends.\n\nlower\n"),
        ("ends!”\n\nlower", "ends!”\n\nlower\n"),
        ("ends.)\n\nlower", "ends.)\n\nlower\n"),
        ("ends…\n\nlower", "ends…\n\nlower\n"),
        ("ends:\n\nlower", "ends:\n\nlower\n"),
        ("no end\n\nUpper", "no end\n\nUpper\n"),
        ("no end\n\n1. item", "no end\n\n1. item\n"),
        ("no end\n\n- item", "no end\n\n- item\n"),
        ("no end\n\n> quote", "no end\n\n> quote\n"),
        ("no end\n\n    code", "no end\n\n    code\n"),
        ("## heading\n\nlower", "## heading\n\nlower\n"),
        ("Setext\n---\n\nlower", "Setext\n---\n\nlower\n"),
        ("a | b\n--|--\n1 | 2\n\nlower", "a | b\n--|--\n1 | 2\n\nlower\n"),
        ("```\ncode\n\nlower\n```\n\nlower", "```\ncode\n\nlower\n```\n\nlower\n"),
        ("<div>\n\nlower", "<div>\n\nlower\n"),
        ("[ref][r]\n\n[r]: https://x.org", "[ref][r]\n\n[r]: https://x.org\n"),
        ("", "\n"),
    ],
)
def test_join_split_paragraphs(body: str, expected: str) -> None:
    assert join_split_paragraphs(body) == expected


def test_split_paragraph_inside_fence_is_untouched_in_html() -> None:
    html = parse_digest(digest("```\nx = [a](#)\n\ny\n```\n"), "x.md").body_html
    assert html == "<pre><code>x = [a](#)\n\ny\n</code></pre>\n"


@pytest.mark.parametrize(
    ("body", "html"),
    [
        ("[plain](#)", "<p>plain</p>\n"),
        ("[“quoted (text)”](#)", "<p>“quoted (text)”</p>\n"),
        ("[a [b] c](#)", "<p>a [b] c</p>\n"),
        ("[**bold**](#)", "<p><strong>bold</strong></p>\n"),
        ('[x](<#>) [y](# "title")', "<p>x y</p>\n"),
        ("[](#)end", "<p>end</p>\n"),
        ("[real](#section)", '<p><a href="#section">real</a></p>\n'),
        ("[real](/#)", '<p><a href="/#">real</a></p>\n'),
        ("[ref][r]\n\n[r]: #", "<p>ref</p>\n"),
        ("![img](#)", '<p><img src="#" alt="img" /></p>\n'),  # images are not links
    ],
)
def test_placeholder_links(body: str, html: str) -> None:
    assert parse_digest(digest(body), "x.md").body_html == html


_WORDS = st.text(
    alphabet=st.sampled_from("abcXYZ  .,;!?:“”\"'()[]*_#-`\n\\&é"), min_size=0, max_size=60
)
_LINK = st.builds(lambda text: f"[{text}](#)", _WORDS)
_PARAGRAPH = st.lists(st.one_of(_WORDS, _LINK), min_size=1, max_size=6).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(paragraphs=st.lists(_PARAGRAPH, min_size=0, max_size=6), title=_WORDS, credit=_WORDS)
def test_digest_parser_never_crashes_and_drops_placeholders(
    paragraphs: list[str], title: str, credit: str
) -> None:
    title_line = "### **" + title.replace("\n", " ") + "**"
    header = HEADER + credit.replace("\n", " ") + "\n\n"
    text = digest("\n\n".join(paragraphs), title=title_line, header=header)
    try:
        draft = parse_digest(text, "prop.md")
    except SourceError as exc:
        assert exc.where == "prop.md"
        assert exc.reason
        return
    assert 'href="#"' not in draft.body_html
    assert draft.published == day(2025, 5, 6)
    assert draft.title
    assert len(draft.summary) <= 300
    assert all(ch.isascii() for ch in draft.slug)
