"""Readers' choices of sections joined from blocks: the same bytes as rendering each whole."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from smtpserver import SmtpTestServer

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.compose.blocks import Choice, IssueBlocks, Uncuttable
from newsletter.compose.render import (
    DEFAULT_TEMPLATES,
    SIZE_LIMIT,
    RenderedIssue,
    Renderer,
    _encoded_size,
)
from newsletter.config import Settings
from newsletter.deliver.dkim import DkimSigner
from newsletter.deliver.mail import MessageTemplate, encode_piece, identity_from_settings
from newsletter.models import Issue, IssueSection
from newsletter.pipeline import sending
from newsletter.pipeline.variants import Variants
from tests.helpers.mail import IDENTITY
from tests.helpers.render import (
    ARCHIVE_URL,
    GOLDEN,
    MASTHEAD,
    T0,
    article,
    long_issue,
    sample_issue,
)
from tests.helpers.sending import seed, smtp_settings

INTRO = ("**Welcome** to the [harbour](https://ledger.example.org/harbour) issue.\n\n"
         "- the terminal\n- the budget\n\n> A quote & an ampersand.")


def five_sections(intro: str = "") -> Issue:
    """Five sections unlike each other: images with and without credits, markup and "%%" in
    titles, summaries missing (the body stands in), an article without a link."""
    a = [
        article(1, "Harbour terminal approved", section="City", authors=("Maria Keller",),
                image="https://cdn.example.org/1.jpg", credit="Photo: Jonas Weber",
                summary="After three years of hearings the authority voted 7–2."),
        article(2, "Budget <script>alert(1)</script> & %%UNSUBSCRIBE_URL%% arithmetic",
                section="City", authors=("Sam Ortiz", "Lee Chen"), summary="It adds up."),
        article(3, "Grid bottleneck delays solar parks", section="Economy",
                authors=("Zoë Ångström", "Jürgen Groß", "Ōkubo Tarō"),
                summary="Forty megawatts of panels wait for a substation. " * 4),
        article(4, "What the rate decision means", section="Economy"),
        article(5, "Chamber music in the old library", section="Culture",
                image="https://cdn.example.org/5.jpg", summary="Six evenings of Haydn."),
        article(6, "A comet, seen from the pier", section="Science", summary="Look north."),
        article(7, "Untitled by design", section="Science", link="#",
                summary="No link: the title stands alone."),
        article(8, "Tide tables, corrected", section="Science", summary="Errata."),
        article(9, "Rowing club wins the regatta", section="Sport",
                image="https://cdn.example.org/9.jpg", summary="By a length."),
    ]
    names = ("City", "Economy", "Culture", "Science", "Sport")
    sections = tuple(IssueSection(n, tuple(x for x in a if x.section == n)) for n in names)
    return Issue(number=12, subject="The Ledger — issue 12",
                 preheader="A new terminal, the budget's arithmetic and more.", created=T0,
                 window_start=T0 - timedelta(days=7), window_end=T0, sections=sections,
                 intro=intro)


def subsets(n: int) -> Iterator[tuple[int, ...]]:
    for size in range(1, n + 1):
        yield from itertools.combinations(range(n), size)


def whole(renderer: Renderer, issue: Issue, chosen: Sequence[int]) -> RenderedIssue:
    """The reference: the path every variant took before, a render of the subset issue."""
    subset = dataclasses.replace(issue, sections=tuple(issue.sections[i] for i in chosen))
    return renderer.render_issue(subset, MASTHEAD, ARCHIVE_URL)


def assert_same(got: Choice, want: RenderedIssue) -> None:
    assert got.html_doc == want.html
    assert got.text_doc == want.text
    assert (got.omitted, got.summary_limit) == (want.omitted, want.summary_limit)
    # The budget was counted on the blocks: their sizes add up to the join's.
    assert len(got.html_doc.encode("utf-8")) < SIZE_LIMIT
    assert _encoded_size(got.html_doc, MASTHEAD.base_url) < SIZE_LIMIT


@pytest.mark.parametrize("intro", ["", INTRO], ids=["preheader", "intro"])
def test_every_choice_of_sections_is_what_a_whole_render_gives(intro: str) -> None:
    issue = five_sections(intro)
    renderer = Renderer()
    blocks = IssueBlocks(renderer, issue, MASTHEAD, ARCHIVE_URL)
    blocks.verify()
    for chosen in subsets(len(issue.sections)):
        assert_same(blocks.choose(chosen), whole(renderer, issue, chosen))


def test_block_sizes_add_up_to_the_size_of_the_join() -> None:
    issue = five_sections(INTRO)
    blocks = IssueBlocks(Renderer(), issue, MASTHEAD, ARCHIVE_URL)
    cut = blocks._cut(None)
    for chosen in subsets(len(issue.sections)):
        parts = [cut.head, *(cut.sections[i] for i in chosen), cut.foot]
        doc = "".join(b.html for b in parts)
        assert sum(b.size for b in parts) == len(doc.encode("utf-8"))
        assert sum(b.sent for b in parts) == _encoded_size(doc, MASTHEAD.base_url)


def test_the_whole_issue_joined_is_the_golden_file() -> None:
    blocks = IssueBlocks(Renderer(), sample_issue(), MASTHEAD, ARCHIVE_URL)
    got = blocks.choose(range(3))
    assert got.html_doc == (GOLDEN / "issue.html").read_bytes().decode("utf-8")
    assert got.text_doc == (GOLDEN / "issue.txt").read_bytes().decode("utf-8")


def test_choices_that_need_shorter_summaries_each_get_their_own() -> None:
    # The whole issue fits only with summaries cut; one or two sections fit with more.
    issue = long_issue(60)
    renderer = Renderer()
    blocks = IssueBlocks(renderer, issue, MASTHEAD, ARCHIVE_URL)
    limits = set()
    for chosen in subsets(4):
        got = blocks.choose(chosen)
        assert_same(got, whole(renderer, issue, chosen))
        limits.add(got.summary_limit)
    assert len(limits) >= 3, limits  # whole summaries, cut ones, and the notice with them


def test_choices_that_must_leave_articles_out_leave_out_the_same() -> None:
    issue = long_issue(120, summary_bytes=400)
    renderer = Renderer()
    blocks = IssueBlocks(renderer, issue, MASTHEAD, ARCHIVE_URL)
    omitted = []
    for chosen in [(0, 1, 2, 3), (0, 1, 3), (1, 2, 3), (0, 2)]:
        got = blocks.choose(chosen)
        assert_same(got, whole(renderer, issue, chosen))
        omitted.append(got.omitted)
    assert omitted[0] > omitted[1] > 0 and omitted[-1] == 0, omitted


def override(tmp_path: Path, name: str, change: Callable[[str], str]) -> Renderer:
    (tmp_path / "email").mkdir(parents=True, exist_ok=True)
    text = (DEFAULT_TEMPLATES / "email" / name).read_text(encoding="utf-8")
    (tmp_path / "email" / name).write_text(change(text), encoding="utf-8")
    return Renderer(tmp_path)


@pytest.mark.parametrize(("name", "change", "why"), [
    # An operator's copy from before the marks: nothing to cut at.
    ("_content.html", lambda t: t.replace("{{ cut.section }}", "").replace(
        "{{ cut.article }}", ""), "does not mark"),
    # A sheet that styles by position: inlined alone, a block could be styled otherwise.
    ("styles.css", lambda t: t + "\n.article:first-child { color: red; }\n", "by position"),
    ("styles.css", lambda t: t + "\ntr + tr .section { padding: 0; }\n", "by position"),
    # A row that knows where it is: caught by the probe against a whole render.
    ("_content.html", lambda t: t.replace("{{ section.name }}</h2>",
                                          "{{ loop.index }}. {{ section.name }}</h2>"),
     "differ from a whole render"),
])
def test_templates_that_cannot_be_cut_are_refused(tmp_path: Path, name: str,
                                                  change: Callable[[str], str],
                                                  why: str) -> None:
    blocks = IssueBlocks(override(tmp_path, name, change), five_sections(), MASTHEAD,
                         ARCHIVE_URL)
    with pytest.raises(Uncuttable, match=why):
        blocks.verify()


# -- messages ----------------------------------------------------------------------------------

def built_issue(settings: Settings, intro: str = "") -> Issue:
    issue = pipeline.render_into(settings, five_sections(intro))
    issue.id = 1
    return issue


def render(template: MessageTemplate | None, i: int = 1) -> bytes:
    assert template is not None
    return template.render(to_address=f"reader{i}@example.org", to_name=f"Reader {i}",
                           message_id=f"<issue-12.sub-{i}@ledger.example.org>",
                           unsubscribe_url=f"https://ledger.example.org/u?t={i}",
                           preferences_url=f"https://ledger.example.org/p?t={i}",
                           date=datetime(2024, 6, 3, 9, 0, tzinfo=UTC))


def signer() -> DkimSigner:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return DkimSigner("s1", "ledger.example.org", pem, clock=lambda: 1_717_400_000.0)


def test_every_variant_message_is_byte_for_byte_the_old_one(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    issue = built_issue(settings, INTRO)
    identity = identity_from_settings(settings)
    variants = Variants(settings, issue, identity)
    variants.dkim = signer()  # DKIM per message, with a fixed clock so both sign alike
    names = [s.name for s in issue.sections]
    for chosen in subsets(len(names)):
        picked = tuple(names[i].upper() if i % 2 else names[i] for i in chosen)  # any case
        old = pipeline.render_into(settings, dataclasses.replace(
            issue, sections=tuple(issue.sections[i] for i in chosen)))
        want = MessageTemplate.build(identity=identity, subject=old.subject, html=old.html,
                                     text=old.text, dkim=variants.dkim)
        assert render(variants(picked)) == render(want), chosen
    assert not variants.whole_renders
    # Chose nothing, or every section: the issue as built; chose none of these: no message.
    full = MessageTemplate.build(identity=identity, subject=issue.subject, html=issue.html,
                                 text=issue.text, dkim=variants.dkim)
    assert render(variants(())) == render(variants(tuple(names))) == render(full)
    assert variants(("Gardening", "Chess")) is None
    assert len(variants.seen) == 2 ** len(names) - 1 + 1  # every subset, and "none here"


def test_variants_are_built_once_and_kept_within_a_bound(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings()
    variants = Variants(settings, built_issue(settings), identity_from_settings(settings))
    monkeypatch.setattr(Variants, "KEEP", 2)
    first = variants(("City",))
    assert variants(("city",)) is first  # met again: the same template, not built again
    variants(("Economy",))
    variants(("Culture",))
    assert len(variants.cache) == 2 and len(variants.seen) == 3
    again = variants(("City",))  # dropped, then joined anew: the same bytes
    assert again is not first and render(again) == render(first)
    # Blocks are encoded once and shared: variants hold references to the same bytes.
    a, b = variants(("City", "Economy")), variants(("City", "Culture"))
    assert a is not None and b is not None
    city = [c for c in a._chunks if isinstance(c, bytes) and b"Harbour terminal" in c]
    assert len(city) == 2 and all(any(c is d for d in b._chunks) for c in city)


def test_an_operator_template_without_marks_still_sends_the_same_bytes(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    override(folder, "_content.html", lambda t: t.replace("{{ cut.section }}", ""))
    settings = make_settings(f'[newsletter]\ntemplates_dir = "{folder}"\n')
    issue = built_issue(settings)
    identity = identity_from_settings(settings)
    variants = Variants(settings, issue, identity)
    got = variants(("Economy", "Sport"))
    assert variants.whole_renders  # refused to cut, and rendered the choice whole instead
    old = pipeline.render_into(settings, dataclasses.replace(
        issue, sections=(issue.sections[1], issue.sections[4])))
    assert render(got) == render(MessageTemplate.build(
        identity=identity, subject=old.subject, html=old.html, text=old.text))


def test_with_body_is_build_of_the_joined_text() -> None:
    html = ["<p>Hello %%NAME%%,</p>\n", "<p>" + "économie, tariffs " * 30 + "</p>\n",
            ".dot\nFrom here\n", '<a href="%%UNSUBSCRIBE_URL%%">x</a>\n']
    text = ["Hello %%NAME%%,\n", "Prefs: %%PREFERENCES_URL%%\n"]
    base = MessageTemplate.build(identity=IDENTITY, subject="S", html="x", text="y")
    joined = base.with_body(text=[encode_piece(t, "text") for t in text],
                            html=[encode_piece(h, "html") for h in html])
    want = MessageTemplate.build(identity=IDENTITY, subject="S", html="".join(html),
                                 text="".join(text))
    assert render(joined) == render(want)


# -- the ledger says why ------------------------------------------------------------------------

def test_status_counts_readers_whose_sections_are_not_in_the_issue(
        make_settings: Callable[..., Settings]) -> None:
    with SmtpTestServer() as srv:
        settings = smtp_settings(make_settings, srv)
        store = pipeline.open_store(settings)
        # 0: chose nothing (gets everything); 1: Economy; 2 and 3: only sections not here.
        seed(store, 4, prefs={1: ["Economy"], 2: ["Gardening"], 3: ["Chess", "Gardening"]})
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        summary = sending.run_worker(settings, store, issue)
        assert (summary.sent, summary.skipped) == (2, 2)
        assert store.skipped_reasons(issue.id) == {"no chosen section here": 2}
        by_rcpt = {m.rcpt_tos[0]: m.data for m in srv.messages}
        assert b"World piece" in by_rcpt["reader0@example.org"]
        assert b"Economy piece" in by_rcpt["reader0@example.org"]
        assert b"World piece" not in by_rcpt["reader1@example.org"]
        store.close()
        status = CliRunner().invoke(cli, ["--config", str(settings.path), "issue", "status",
                                          str(issue.number)])
        assert status.exit_code == 0, status.output
        assert "skipped 2" in status.output
        assert "skipped: 2 no chosen section here" in status.output
