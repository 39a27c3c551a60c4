"""Tests for Markdown articles with YAML front matter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.collect.sanitize import shorten, slug_for, slugify
from newsletter.collect.sources.markdown import (
    has_front_matter,
    parse_markdown,
    render_markdown,
)
from newsletter.errors import SourceError
from newsletter.models import ArticleDraft

FIXTURES = Path(__file__).parent / "fixtures" / "articles"


def load(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def article(front: str, body: str = "Body.\n") -> str:
    return f"---\n{front.strip()}\n---\n{body}"


def parse(front: str, body: str = "Body.\n") -> ArticleDraft:
    return parse_markdown(article(front, body), "a.md")


def test_full_front_matter_fills_every_field() -> None:
    draft = parse_markdown(load("good/front-matter-full.md"), "full.md")
    assert draft.title == "Budgets Are Moral Documents: A Reading of the Autumn Statement"
    assert draft.published == datetime(2025, 10, 21, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    assert draft.updated == datetime(2025, 10, 22, 8, 0, tzinfo=UTC)
    assert draft.authors == ("Helena Brandt", "Owen Mackay")
    assert draft.section == "Economy"
    assert draft.summary == "What the autumn statement says about priorities, line by line."
    assert draft.image == "/images/autumn-statement.jpg"
    assert draft.image_credit == "Photo by Ruth Adeyemi"
    assert draft.slug == "autumn-statement-reading"  # given slug, normalised
    assert draft.url == "https://review.example.org/economy/autumn-statement"
    assert draft.guid == "urn:meridian:2025:0142"
    assert draft.tags == ("budget", "fiscal policy")  # "Budget" is a case-insensitive repeat
    assert draft.origin == "full.md"
    assert draft.body_html == (
        "<p>The autumn statement runs to <em>212 pages</em>.</p>\n"
        "<table>\n<thead>\n<tr>\n<th>Line</th>\n<th>Change</th>\n</tr>\n</thead>\n"
        "<tbody>\n<tr>\n<td>Health</td>\n<td>+4%</td>\n</tr>\n</tbody>\n</table>\n"
        "<p>Templates stay literal: {{ reader.name }}.</p>\n"
        '<div class="note">Raw HTML passes through untouched here.</div>\n'
    )


def test_minimal_front_matter_leaves_optional_fields_empty() -> None:
    draft = parse_markdown(load("good/front-matter-minimal.md"), "min.md")
    assert draft == ArticleDraft(
        title="A Short Note",
        published=datetime(2024, 2, 29, tzinfo=UTC),
        body_html="<p>Just one paragraph.</p>\n",
        origin="min.md",
        slug="a-short-note",  # derived from the title when not given
    )


def test_bom_and_crlf_are_tolerated() -> None:
    text = "\ufeff---\r\ntitle: Windows\r\ndate: 2025-01-02\r\n---\r\nLine one\r\n\r\nLine two\r\n"
    draft = parse_markdown(text, "w.md")
    assert draft.title == "Windows"
    assert draft.body_html == "<p>Line one</p>\n<p>Line two</p>\n"


def test_yaml_document_end_marker_closes_front_matter() -> None:
    draft = parse_markdown("---\ntitle: Dots\ndate: 2025-01-02\n...\nBody\n", "d.md")
    assert draft.title == "Dots"
    assert draft.body_html == "<p>Body</p>\n"


def test_empty_body_gives_empty_html() -> None:
    assert parse_markdown("---\ntitle: T\ndate: 2025-01-02\n---\n", "e.md").body_html == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-09-05", datetime(2025, 9, 5, tzinfo=UTC)),
        ("2025-09-05 10:15:00", datetime(2025, 9, 5, 10, 15, tzinfo=UTC)),
        ("2025-09-05T10:15:00Z", datetime(2025, 9, 5, 10, 15, tzinfo=UTC)),
        ("2025-09-05T10:15:00-05:00", datetime(2025, 9, 5, 15, 15, tzinfo=UTC)),
        ("'2025-09-05'", datetime(2025, 9, 5, tzinfo=UTC)),
        ("'2025-09-05T10:15:00+05:30'", datetime(2025, 9, 5, 4, 45, tzinfo=UTC)),
        ("'2025-09-05 10:15'", datetime(2025, 9, 5, 10, 15, tzinfo=UTC)),
        ("Fri, 05 Sep 2025 10:15:00 +0000", datetime(2025, 9, 5, 10, 15, tzinfo=UTC)),
        ("1999-12-31", datetime(1999, 12, 31, tzinfo=UTC)),
    ],
)
def test_dates_are_timezone_aware(value: str, expected: datetime) -> None:
    published = parse(f"title: T\ndate: {value}").published
    assert published == expected
    assert published.utcoffset() is not None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("tomorrow", "field 'date' is not a date: 'tomorrow'"),
        ("next Tuesday", "field 'date' is not a date: 'next Tuesday'"),
        ("''", "field 'date' is not a date: ''"),
        ("9999-12-31", "field 'date' has year 9999, outside 1000-2999"),
        ("'9999-12-31T23:59:59+00:00'", "field 'date' has year 9999"),
        ("0099-01-01", "field 'date' has year 99"),
        ("2025", "field 'date' must be a date such as 2025-09-05, got int"),
        ("true", "field 'date' must be a date such as 2025-09-05, got true/false"),
        ("[2025-01-01]", "field 'date' must be a date such as 2025-09-05, got a list"),
        ("2025-13-01", "front matter has an impossible value"),
        ("2025-02-30", "front matter has an impossible value"),
    ],
)
def test_bad_dates_are_refused(value: str, reason: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse(f"title: T\ndate: {value}")
    assert caught.value.where == "a.md"
    assert reason in caught.value.reason


def test_bad_updated_names_the_field() -> None:
    with pytest.raises(SourceError, match="field 'updated' is not a date: 'soon'"):
        parse("title: T\ndate: 2025-01-01\nupdated: soon")


def test_empty_updated_is_absent() -> None:
    assert parse("title: T\ndate: 2025-01-01\nupdated:").updated is None


@pytest.mark.parametrize(
    ("front", "authors"),
    [
        ("authors: Jane Roe", ("Jane Roe",)),
        ("author: Jane Roe", ("Jane Roe",)),
        ("author: [Jane Roe, John Doe]", ("Jane Roe", "John Doe")),
        ("authors: ['  Jane   Roe ', '', Jane Roe]", ("Jane Roe",)),
        ("authors: []", ()),
        ("authors: [Main]\nauthor: Ignored", ("Main",)),
    ],
)
def test_authors_forms(front: str, authors: tuple[str, ...]) -> None:
    assert parse(f"title: T\ndate: 2025-01-01\n{front}").authors == authors


@pytest.mark.parametrize(
    ("front", "tags"),
    [
        ("tags: 'economy, trade ,, Economy'", ("economy", "trade")),
        ("tags: [AI, 2025]", ("AI", "2025")),
        ("tags: single", ("single",)),
    ],
)
def test_tags_forms(front: str, tags: tuple[str, ...]) -> None:
    assert parse(f"title: T\ndate: 2025-01-01\n{front}").tags == tags


def test_guid_from_id_or_guid_and_numbers_as_text() -> None:
    assert parse("title: 1984\ndate: 2025-01-01\nguid: abc").guid == "abc"
    draft = parse("title: 1984\ndate: 2025-01-01\nid: 42\nguid: other")
    assert draft.guid == "42"
    assert draft.title == "1984"


def test_keys_are_case_insensitive_and_unknown_keys_ignored() -> None:
    draft = parse("Title: Upper\nDATE: 2025-01-01\nlayout: post\n7: seven\nextra: {a: 1}")
    assert draft.title == "Upper"


@pytest.mark.parametrize(
    ("front", "reason"),
    [
        ("date: 2025-01-01", "missing required field 'title'"),
        ("title: '   '\ndate: 2025-01-01", "missing required field 'title'"),
        ("title: T", "missing required field 'date'"),
        ("title: T\ndate:", "missing required field 'date'"),
        ("title: [a, b]\ndate: 2025-01-01", "field 'title' must be text, got a list"),
        ("title: yes\ndate: 2025-01-01", "field 'title' must be text, got true/false"),
        ("title: T\ndate: 2025-01-01\nsection: {a: 1}", "field 'section' must be text"),
        ("title: T\ndate: 2025-01-01\nauthors: {a: 1}", "field 'authors' must be a list or text"),
        ("title: T\ndate: 2025-01-01\ntags: [[x]]", "field 'tags' must contain only text"),
        ("just a string", "front matter must be a mapping of 'key: value' lines, not a str"),
        ("", "front matter must be a mapping of 'key: value' lines, not empty"),
        ("title: !!python/object:os.system x", "front matter is not valid YAML"),
        ("title: [unclosed", "front matter is not valid YAML"),
        ("title: T\ndate: 2025-01-01\na: &x 1\nb: *x", "YAML alias (*x)"),
    ],
)
def test_bad_front_matter(front: str, reason: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse(front)
    assert caught.value.where == "a.md"
    assert reason in caught.value.reason
    assert str(caught.value).startswith("a.md: ")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("fm-unclosed.md", "front matter is not closed by a '---' line"),
        ("fm-not-mapping.md", "front matter must be a mapping of 'key: value' lines, not a list"),
        ("fm-bad-yaml.md", "front matter is not valid YAML: found unexpected end of stream"),
        ("fm-no-title.md", "missing required field 'title'"),
        ("fm-no-date.md", "missing required field 'date'"),
        ("fm-date-tomorrow.md", "field 'date' is not a date: 'tomorrow'"),
        ("fm-year-9999.md", "field 'date' has year 9999"),
        ("fm-alias-bomb.md", "front matter uses a YAML alias (*a), which is not allowed"),
    ],
)
def test_broken_fixtures_name_the_file_and_problem(name: str, reason: str) -> None:
    origin = f"articles/{name}"
    with pytest.raises(SourceError) as caught:
        parse_markdown(load(f"bad/{name}"), origin)
    assert caught.value.where == origin
    assert reason in caught.value.reason
    assert origin in str(caught.value)


def test_not_starting_with_front_matter() -> None:
    with pytest.raises(SourceError, match="does not start with a '---' front matter line"):
        parse_markdown("# Title\n", "x.md")


def test_yaml_line_number_counts_the_opening_fence() -> None:
    with pytest.raises(SourceError, match=r"\(line 3\)"):
        parse_markdown("---\ntitle: T\ndate: : :\n---\n", "x.md")


def test_huge_front_matter_is_refused() -> None:
    with pytest.raises(SourceError, match="front matter is larger than 64 KiB"):
        parse("title: T\ndate: 2025-01-01\nfiller: " + "x" * 70_000)


@pytest.mark.parametrize("depth", [17, 30_000])
def test_deeply_nested_yaml_is_refused_before_loading(depth: int) -> None:
    # 30 000 levels used to segfault libyaml's recursive loader; the event scan stops it.
    with pytest.raises(SourceError, match="front matter is nested more than 16 levels deep"):
        parse("title: T\ndate: 2025-01-01\nx: " + "[" * depth + "]" * depth)


def test_moderate_nesting_is_fine() -> None:
    assert parse("title: T\ndate: 2025-01-01\nx: " + "[" * 15 + "]" * 15).title == "T"


def test_has_front_matter() -> None:
    assert has_front_matter("---\ntitle: x\n---\n")
    assert has_front_matter("\ufeff---  \r\n")
    assert not has_front_matter("# Heading\n---\n")
    assert not has_front_matter("----\n")
    assert not has_front_matter("")


def test_render_markdown_keeps_placeholders_unless_asked() -> None:
    assert render_markdown("[a](#)") == '<p><a href="#">a</a></p>\n'
    assert render_markdown("[a](#)", drop_placeholder_links=True) == "<p>a</p>\n"


@pytest.mark.parametrize(
    ("text", "slug"),
    [
        ("Hello, World!", "hello-world"),
        ("Zoë’s Café — Été 2025", "zoes-cafe-ete-2025"),
        ("Putin's Plan", "putins-plan"),
        ("  --Already-Slugged--  ", "already-slugged"),
        ("Ærø & Łódź", "r-odz"),  # letters without an ASCII decomposition are dropped
        ("", ""),
    ],
)
def test_slugify(text: str, slug: str) -> None:
    assert slugify(text) == slug


def test_slugify_caps_length_at_a_word() -> None:
    slug = slugify("word " * 40)
    assert len(slug) <= 80
    assert slug.endswith("word")


def test_slug_for_non_latin_title_is_stable_and_not_empty() -> None:
    assert slug_for("中国经济") == slug_for("中国经济")
    assert slug_for("中国经济").startswith("article-")
    assert slug_for("中国经济") != slug_for("日本经济")


def test_shorten() -> None:
    assert shorten("short", 300) == "short"
    text = "alpha beta, gamma " * 30
    short = shorten(text, 50)
    assert len(short) <= 50
    assert short.endswith("\u2026")
    assert not short[:-1].endswith((" ", ","))
    assert text.startswith(short[:-1])
    assert shorten("x" * 400, 10) == "x" * 9 + "\u2026"


_YAML_BITS = st.sampled_from(
    list("titledaugs:-[]{}&*!|>'\"#,. \n0123456789TZ+\t\x00é")
    + ["title: x\n", "date: ", "2025-01-01", "authors: ", "tags: ", "updated: ", "\n  - "]
)


@settings(max_examples=200, deadline=None)
@given(front=st.lists(_YAML_BITS, max_size=60).map("".join), body=st.text(max_size=80))
def test_arbitrary_front_matter_only_ever_raises_source_error(front: str, body: str) -> None:
    try:
        draft = parse_markdown(f"---\n{front}\n---\n{body}", "fuzz.md")
    except SourceError as exc:
        assert exc.where == "fuzz.md"
        assert exc.reason
    else:
        assert draft.title
        assert draft.published.utcoffset() is not None


DEEP_FORMS = {
    "flow": "x: " + "[" * 17 + "]" * 17,
    "braces": "x: " + "{a: " * 17 + "1" + "}" * 17,
    "compact sequences": "x:\n" + "- " * 17 + "1",
    "indented mappings": "".join(" " * i + f"k{i}:\n" for i in range(0, 40, 2)) + " " * 40 + "1",
    "sequences at their key's column": "".join(" " * i + f"k{i}:\n" + " " * i + "-\n"
                                               for i in range(0, 20, 2)),
    "multi-line flow": "x: [\n" + "[\n" * 17 + "]\n" * 17 + "]",
    "after a block scalar": "s: |\n  text\nx: " + "[" * 17 + "]" * 17,
}


@pytest.mark.parametrize("text", DEEP_FORMS.values(), ids=DEEP_FORMS.keys())
def test_deep_nesting_is_refused_by_our_count_before_pyyaml(
        text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    def unreachable(*_a: object, **_k: object) -> None:
        raise AssertionError("PyYAML saw a deeply nested document")

    monkeypatch.setattr(yaml, "parse", unreachable)
    monkeypatch.setattr(yaml, "load", unreachable)
    with pytest.raises(SourceError, match="front matter is nested more than 16 levels deep"):
        parse("title: T\ndate: 2025-01-01\n" + text)


SHALLOW_LOOKALIKES = {
    "brackets in a quoted value": 'x: "' + "[" * 40 + '"',
    "brackets in a single-quoted value": "x: 'it''s " + "{" * 40 + "'",
    "brackets in a comment": "x: 1  # " + "[" * 40,
    "brackets inside a plain value": "x: don't " + "[" * 40,
    "brackets in a block scalar": "x: |\n  " + "[" * 40 + "\n  more\ny: 2",
    "deep indentation in a folded scalar": "x: >\n" + "".join(" " * (2 + i) + "w\n"
                                                              for i in range(40)),
    "a multi-line quoted value": 'x: "a\n  ' + "[" * 40 + '\n  b"',
}


@pytest.mark.parametrize("text", SHALLOW_LOOKALIKES.values(), ids=SHALLOW_LOOKALIKES.keys())
def test_brackets_that_are_text_are_not_nesting(text: str) -> None:
    assert parse("title: T\ndate: 2025-01-01\n" + text).title == "T"


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.text(max_size=8) | st.integers(),
                    lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=30),
       st.sampled_from([False, True, None]), st.sampled_from([None, "'", '"', "|"]))
def test_text_count_matches_what_pyyaml_builds(data: object, flow: bool | None,
                                               style: str | None) -> None:
    import yaml

    from newsletter.collect.sources.yaml_depth import nesting_depth

    def depth(x: object) -> int:
        kids = list(x.values()) if isinstance(x, dict) else x if isinstance(x, list) else None
        return 0 if kids is None else 1 + max(map(depth, kids), default=0)

    text = yaml.safe_dump({"k": data}, default_flow_style=flow, default_style=style,
                          allow_unicode=True, width=40)
    assert nesting_depth(text, 1000) == depth(yaml.safe_load(text))
