"""Building issues: window since the previous issue, sections, cap, future articles, idempotence."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.models import Article
from tests.helpers.issues import NOW, art


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings("""
[newsletter]
section_order = ["World", "Economy"]
max_articles = 4
subject = "{publication} #{number} — {date:%d %B %Y}"
""")


def test_first_issue_groups_orders_caps_and_skips_the_future(settings: Settings) -> None:
    store = pipeline.open_store(settings)
    store.save_articles([art(1, "Economy", 1), art(2, "World", 2), art(3, "Culture", 3),
                         art(4, "World", 30), art(5, "Economy", 24 * 8),  # outside 7 days
                         art(6, "", 5), art(7, "World", -2)], [], NOW)  # 7 is in the future
    result = pipeline.build_issue(settings, store, now=NOW)
    issue = result.issue
    assert result.created and issue is not None and issue.number == 1
    # Newest four of those in the window; World and Economy first, then the rest by name.
    assert [(s.name, [a.title for a in s.articles]) for s in issue.sections] == [
        ("World", ["Piece 2"]), ("Economy", ["Piece 1"]), ("Culture", ["Piece 3"]),
        ("More", ["Piece 6"])]
    assert issue.subject == "Test Ledger #1 — 20 November 2026"
    # The intro counts and names, rather than repeating the summary printed just below it.
    assert issue.preheader == "This issue: 4 articles in World, Economy, Culture and More."
    assert "%%UNSUBSCRIBE_URL%%" in issue.html and "Piece 2" in issue.text
    stored = store.get_issue(1)
    assert stored is not None and stored.status == "draft"
    assert [a.id for a in stored.articles] == [a.id for a in issue.articles]
    store.close()


def test_same_window_gives_the_same_issue_and_next_issue_starts_after(settings: Settings) -> None:
    store = pipeline.open_store(settings)
    store.save_articles([art(1, "World", 1)], [], NOW)
    first = pipeline.build_issue(settings, store, now=NOW)
    again = pipeline.build_issue(settings, store, now=NOW + timedelta(minutes=5))
    assert again.issue is not None and again.issue.number == 1 and not again.created
    assert "up to date" in again.message
    assert len(store.list_issues()) == 1
    # A new article while issue 1 is still a draft refreshes the draft, not a second issue.
    store.save_articles([art(2, "World", -0.5)], [], NOW)
    refreshed = pipeline.build_issue(settings, store, now=NOW + timedelta(hours=1))
    assert refreshed.issue is not None and refreshed.issue.number == 1
    assert {a.title for a in refreshed.issue.articles} == {"Piece 1", "Piece 2"}
    # Once sent, nothing new means no issue, and --force builds one anyway.
    assert store.set_issue_status(1, "sent", NOW, expect=("draft",))
    nothing = pipeline.build_issue(settings, store, now=NOW + timedelta(hours=2))
    assert nothing.issue is None and "nothing new since issue 1" in nothing.message
    forced = pipeline.build_issue(settings, store, force=True, now=NOW + timedelta(hours=2))
    assert forced.issue is not None and forced.issue.number == 2 and first.issue is not None
    store.close()


def test_cancelled_issue_articles_come_back(settings: Settings) -> None:
    store = pipeline.open_store(settings)
    store.save_articles([art(1, "World", 1)], [], NOW)
    pipeline.build_issue(settings, store, now=NOW)
    assert store.set_issue_status(1, "cancelled", NOW)
    again = pipeline.build_issue(settings, store, now=NOW + timedelta(minutes=1))
    assert again.issue is not None and again.issue.number == 2
    assert [a.title for a in again.issue.articles] == ["Piece 1"]
    store.close()


def test_issue_cli_build_list_show_preview(settings: Settings, tmp_path) -> None:  # noqa: ANN001
    store = pipeline.open_store(settings)
    now = datetime.now(UTC)
    store.save_articles([Article(key="link:x", title="Fresh <piece>", link="https://x.example/",
                                 published=now, updated=now, content_html="<p>b</p>",
                                 content_hash="h", section="World")], [], now)
    store.close()
    runner = CliRunner()
    args = ["--config", str(settings.path)]
    built = runner.invoke(cli, [*args, "issue", "build"])
    assert built.exit_code == 0, built.output
    assert "built issue 1" in built.output
    listed = runner.invoke(cli, [*args, "issue", "list"])
    assert "draft" in listed.output and "Test Ledger" in listed.output
    shown = runner.invoke(cli, [*args, "issue", "show", "1"])
    assert "Fresh <piece>" in shown.output and "World" in shown.output
    preview = runner.invoke(cli, [*args, "issue", "preview", "1", "--out", str(tmp_path / "p")])
    assert preview.exit_code == 0, preview.output
    html = (tmp_path / "p/issue-1.html").read_text(encoding="utf-8")
    assert "%%" not in html and "Fresh &lt;piece&gt;" in html
    assert (tmp_path / "p/issue-1.txt").read_text(encoding="utf-8").count("Fresh <piece>") == 1
    missing = runner.invoke(cli, [*args, "issue", "show", "9"])
    assert missing.exit_code == 2 and "issue 9: no such issue" in missing.output
