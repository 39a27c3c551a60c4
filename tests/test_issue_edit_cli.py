"""Editing from the command line, the size budget, rebuilds of edited drafts, the note's text."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.compose.intro import intro_html, intro_text
from newsletter.compose.render import Renderer
from newsletter.config import Settings
from newsletter.models import Article, IssueEventDraft
from newsletter.pipeline import editing
from tests.helpers.issues import NOW, art
from tests.helpers.render import MASTHEAD, sample_issue


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings("[newsletter]\nmax_articles = 200\n")


def built(settings: Settings, *articles: Article) -> None:
    store = pipeline.open_store(settings)
    try:
        store.save_articles(list(articles), [], NOW)
        assert pipeline.build_issue(settings, store, now=NOW, actor="cli tester").created
    finally:
        store.close()


def run(settings: Settings, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(settings.path), *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_cli_edit_show_and_history(settings: Settings, tmp_path: Path) -> None:
    built(settings, art(1, "World", 1), art(2, "World", 2), art(3, "Economy", 3),
          art(4, "Economy", 4))
    ids = {n: art(n, "", 0).id for n in (1, 2, 3, 4, 5)}
    code, shown, _ = run(settings, "issue", "show", "1")
    assert code == 0
    # Every article with its id, in the email's order (sections by name: none configured).
    lines = [line.split() for line in shown.splitlines() if line.startswith("  ")]
    assert [(parts[0], parts[-1]) for parts in lines if len(parts) > 2] == [
        (ids[3], "3"), (ids[4], "4"), (ids[1], "1"), (ids[2], "2")]
    store = pipeline.open_store(settings)
    store.save_articles([art(5, "Culture", 5)], [], NOW)  # stored, but not in the issue
    store.close()
    code, out, err = run(settings, "issue", "edit", "1", "--subject", "Hand-picked",
                         "--intro-file", "-", "--remove", ids[4],
                         "--order", ",".join([ids[1], ids[3], ids[4], ids[2]]),
                         "--add", ids[5], stdin="A *short* note. See [this](https://x.example/).")
    assert code == 0, err
    assert out.splitlines() == [
        "edited issue 1:",
        "  subject: “Test Ledger No. 1 — 20 November 2026” → “Hand-picked”",
        "  preheader regenerated for the new articles: “This issue: 4 articles in World, "
        "Economy and Culture.”",
        "  intro added",
        f"  removed “Piece 4” ({ids[4]})",
        f"  added “Piece 5” ({ids[5]})",
        "  articles reordered",
        "  (sections stay whole: each section's articles follow its first one)"]
    store = pipeline.open_store(settings)
    issue = store.get_issue(1)
    store.close()
    assert issue is not None
    # World first (its first article leads), then Economy, then the added Culture piece.
    assert [(s.name, [a.title for a in s.articles]) for s in issue.sections] == [
        ("World", ["Piece 1", "Piece 2"]), ("Economy", ["Piece 3"]), ("Culture", ["Piece 5"])]
    assert "A short note. See this (https://x.example/)." in issue.text
    assert "<em>short</em>" in issue.html
    code, shown, _ = run(settings, "issue", "show", "1")
    assert "Intro:     1 line of Markdown" in shown and "Edited:" in shown

    # Refusals: one line on stderr, exit status 2, nothing saved.
    for args, error in [
            (("--subject", "two\nlines"), "error: subject must be one line"),
            (("--remove", "nope"), "error: --remove nope: not in issue 1"),
            (("--add", "nope"), "error: no stored article has the id 'nope'"),
            (("--order", ids[1], "--remove", ids[2]),
             f"error: --remove {ids[2]}: not in issue 1 (or left out by --order)"),
            ((), "error: nothing to change"),
            (("--intro-file", str(tmp_path / "missing.md")),
             f"error: --intro-file {tmp_path / 'missing.md'}: no such file")]:
        code, out, err = run(settings, "issue", "edit", "1", *args)
        assert code == 2 and error in err and out == "", (args, code, out, err)
        assert len(err.strip().splitlines()) == 1, err
    (tmp_path / "latin1.md").write_bytes(b"caf\xe9")
    code, _, err = run(settings, "issue", "edit", "1", "--intro-file",
                       str(tmp_path / "latin1.md"))
    assert code == 2 and "not UTF-8 text" in err
    code, out, _ = run(settings, "issue", "edit", "1", "--subject", "Hand-picked")
    assert code == 0 and out == "issue 1: nothing changed\n"

    code, out, _ = run(settings, "issue", "history", "1")
    assert code == 0
    entries = out.splitlines()
    assert len(entries) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  build      cli tester: built: "
                        r"4 articles", entries[0])
    assert "edit       cli " in entries[1] and "“Hand-picked”" in entries[1]
    assert "intro added" in entries[1] and "articles reordered" in entries[1]
    assert run(settings, "issue", "history", "7")[0] == 2

    # Once sent, the CLI is refused like the API.
    store = pipeline.open_store(settings)
    store.set_issue_status(1, "sent", NOW)
    store.close()
    code, _, err = run(settings, "issue", "edit", "1", "--subject", "Later")
    assert code == 2 and "issue 1 can no longer be edited: it is sent" in err


def test_an_edit_says_what_it_ignored_and_an_unreadable_intro_file_is_one_line(
        settings: Settings, tmp_path: Path) -> None:
    built(settings, art(1, "World", 1), art(2, "World", 2))
    one, two = art(1, "", 0).id, art(2, "", 0).id
    code, out, err = run(settings, "issue", "edit", "1", "--add", one)
    assert code == 0 and "nothing changed" in out
    assert err == f"ignored: --add {one}: already in issue 1 (--order moves an article)\n"
    code, out, err = run(settings, "issue", "edit", "1", "--add", two, "--remove", two)
    assert code == 0 and "nothing changed" in out
    assert err == f"ignored: --add {two} --remove {two}: both given, so it stays as it is\n"
    code, out, err = run(settings, "issue", "edit", "1", "--order", f"{two},{one}", "--add", one)
    assert code == 0 and out.startswith("edited issue 1:")
    assert err.splitlines()[0] == f"ignored: --add {one}: already in --order (--order moves " \
                                  f"an article)"  # then the edit's log line
    store = pipeline.open_store(settings)
    issue = store.get_issue(1)
    store.close()
    assert issue is not None and [a.id for a in issue.articles] == [two, one]
    # A file that cannot be read: one line naming it, exit status 2, not click's usage text.
    for path, why in [(tmp_path / "missing.md", "no such file"),
                      (tmp_path, "a directory, not a file")]:
        code, out, err = run(settings, "issue", "edit", "1", "--intro-file", str(path))
        assert (code, out, err) == (2, "", f"error: --intro-file {path}: {why}\n")


def heavy(n: int) -> Article:
    """An article whose title, byline and links weigh about 2 KB in the email."""
    a = art(n, ("World", "Economy")[n % 2], n / 10)
    return replace(a, title=f"Piece {n} " + "about the harbour and the city " * 5,
                   authors=tuple(f"Writer {i} of the long masthead" for i in range(6)),
                   link=a.link + "x" * 200, image=f"https://cdn.example.org/{'i' * 150}/{n}.jpg")


def test_an_edit_that_would_not_fit_is_refused_and_the_build_says_what_fit(
        settings: Settings) -> None:
    built(settings, *(heavy(n) for n in range(1, 121)))
    store = pipeline.open_store(settings)
    try:
        issue = store.get_issue(1)
        assert issue is not None and len(issue.articles) == 120
        history = store.issue_history(1)
        fit = history[0].detail["in_email"]
        assert isinstance(fit, int) and 0 < fit < 120
        # The build says it honestly (the notice in the email links to the rest).
        assert f"{120 - fit} more articles in the archive" in issue.text
        rebuilt = pipeline.build_issue(settings, store, now=NOW + timedelta(seconds=1),
                                       force=True)
        assert "up to date" in rebuilt.message
        store.save_articles([heavy(200)], [], NOW)
        rebuilt = pipeline.build_issue(settings, store, now=NOW + timedelta(seconds=2))
        assert re.search(r"rebuilt issue 1: 121 articles selected in 2 sections; (\d+) fit in "
                         r"the email, the other (\d+) are in the archive — ", rebuilt.message)

        issue = store.get_issue(1)
        assert issue is not None
        with pytest.raises(editing.EditRefused) as refused:
            editing.edit_issue(settings, store, 1, {"subject": "Edited"}, "test")
        text = str(refused.value)
        found = re.search(r"only the first (\d+) of 121 articles fit, even with summaries left "
                          r"out; remove (\d+) \(from “([^”]+)”, id (\w+), on\)", text)
        assert found, text
        keep = int(found[1])
        assert keep + int(found[2]) == 121 and found[4] == issue.articles[keep].id
        after = store.get_issue(1)
        assert after is not None and after.subject == issue.subject and after.edited_at is None
        assert after.html == issue.html

        # Keeping only what fits is accepted: the email then carries every article.
        ok = editing.edit_issue(settings, store, 1,
                                {"articles": [a.id for a in issue.articles[:keep]]}, "test")
        assert ok.changed and len(ok.issue.articles) == keep
        assert "more article" not in ok.issue.text
        for a in ok.issue.articles:
            assert a.title[:18] in ok.issue.text
        # Adding one back is refused again: an edit never leaves articles out.
        with pytest.raises(editing.EditRefused, match=f"only the first {keep} of "):
            editing.edit_issue(settings, store, 1, {"articles": [
                a.id for a in issue.articles[:keep + 1]]}, "test")
    finally:
        store.close()


def test_a_rebuild_leaves_an_edited_draft_alone(db_url: str,
                                                make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(database_url=db_url)
    store = pipeline.open_store(settings)
    try:
        store.save_articles([art(1, "World", 1)], [], NOW)
        pipeline.build_issue(settings, store, now=NOW)
        assert store.set_issue_fields(1, NOW, approved_at=NOW, approved_by="cli ed")
        store.save_articles([art(2, "World", 0.5)], [], NOW)
        fresh = pipeline.build_issue(settings, store, now=NOW + timedelta(minutes=1),
                                     actor="cli a")
        assert fresh.message.startswith("rebuilt issue 1: 2 articles in 1 section — ")
        # What was approved is not what it now holds: the approval goes with the old content.
        rebuilt = store.get_issue(1)
        assert rebuilt is not None and rebuilt.approved_at is None and not rebuilt.approved_by
        editing.edit_issue(settings, store, 1, {"intro": "Only this one.",
                                                "articles": [art(1, "", 0).id]}, "api x")
        store.save_articles([art(3, "World", 0.2)], [], NOW)
        again = pipeline.build_issue(settings, store, now=NOW + timedelta(minutes=2),
                                     force=True)
        assert again.message.startswith("issue 1 was edited: not rebuilt")
        assert not again.created and again.issue is not None and again.issue.number == 1
        issue = store.get_issue(1)
        assert issue is not None and [a.title for a in issue.articles] == ["Piece 1"]
        assert issue.intro == "Only this one." and "Only this one." in issue.text
        assert [(e.action, e.actor) for e in store.issue_history(1)] == [
            ("build", "scheduler"), ("build", "cli a"), ("edit", "api x")]
        # The store's own guard, for a rebuild that read the draft before the edit landed.
        assert issue.id is not None
        stale = replace(issue, intro="", edited_at=None)
        assert not store.replace_issue_if(stale, NOW, statuses=("draft",), unedited=True,
                                          event=IssueEventDraft("scheduler", "build"))
        assert store.get_issue(1).intro == "Only this one."  # type: ignore[union-attr]
    finally:
        store.close()


def test_the_note_as_html_and_as_text() -> None:
    base = "https://ledger.example.org/"
    note = intro_html("# This week\n\nHello *you*, see [the plan](/plan/) or "
                      "[write](mailto:ed@x.org).  \nNew line.\n\n"
                      "- one\n- two [x](https://x.example/)\n\n1. first\n2. second\n\n"
                      "> quoted\n\n```\nkeep  <this>\n```\n\n"
                      "![a chart](https://cdn.example/c.png) [bad](javascript:x) "
                      "[frag](#top) <b>raw</b>", base)
    assert "<h1" not in note and "<p><strong>This week</strong></p>" in note
    assert '<a href="https://ledger.example.org/plan/"' in note
    assert '<a href="mailto:ed@x.org"' in note
    assert '<a href="https://cdn.example/c.png" rel="noopener noreferrer">a chart</a>' in note
    assert 'href="javascript' not in note and 'href="#top"' not in note
    assert "&lt;b&gt;raw&lt;/b&gt;" in note and "<img" not in note
    assert intro_text(note).split("\n") == [
        "This week",
        "",
        "Hello you, see the plan (https://ledger.example.org/plan/) or write",
        "(ed@x.org).",
        "New line.",
        "",
        "- one",
        "- two x (https://x.example/)",
        "",
        "1. first",
        "2. second",
        "",
        "> quoted",
        "",
        "    keep  <this>",
        "",
        "a chart (https://cdn.example/c.png) [bad](javascript:x) frag <b>raw</b>"]
    assert intro_html("   \n ", base) == "" and intro_text("") == ""


def test_the_archive_page_shows_the_note_and_without_one_the_preheader() -> None:
    url = "https://ledger.example.org/issues/12"
    plain = Renderer().render_archive_page(sample_issue(), MASTHEAD, url)
    assert '<p class="lede">' in plain and 'class="intro"' not in plain
    noted = Renderer().render_archive_page(
        replace(sample_issue(), intro="From the *desk*: [plan](https://x.example/)."),
        MASTHEAD, url)
    assert '<div class="lede"><p>From the <em>desk</em>: <a href="https://x.example/"' in noted
    assert '<p class="lede">' not in noted
