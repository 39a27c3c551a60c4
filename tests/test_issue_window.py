"""What goes into the issue after the first: every article new since the previous issue was
built, by when it was collected as well as by its date, and never one an issue already holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline.control import cancel_issue
from newsletter.store.database import Store
from tests.helpers.issues import NOW, art, piece

HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def titles(store: Store, number: int) -> list[str]:
    issue = store.get_issue(number)
    assert issue is not None, f"no issue {number}"
    return sorted(a.title for a in issue.articles)


def sent(store: Store, number: int) -> None:
    assert store.set_issue_status(number, "sent", NOW, expect=("draft",))


def markdown(folder: Path, name: str, title: str, when: datetime, body: str = "Body.") -> None:
    (folder / f"{name}.md").write_text(
        f"---\ntitle: {title}\ndate: {when:%Y-%m-%dT%H:%M:%SZ}\nsection: City\n---\n\n{body}\n",
        encoding="utf-8")


def test_files_dropped_in_after_issue_1_dated_before_it_go_into_issue_2(
        make_settings: Callable[..., Settings], db_url: str, tmp_path: Path) -> None:
    """The user trial: two articles dated earlier on issue 1's day, collected after issue 1
    was built, made the next build say "nothing new since issue 1". Real folder, real
    collect, the real clock, both databases."""
    settings = make_settings(database_url=db_url)
    folder = tmp_path / "articles"
    start = datetime.now(UTC)
    markdown(folder, "morning", "Morning piece", start - 5 * HOUR)
    store = pipeline.open_store(settings)
    try:
        assert pipeline.collect(settings, store).new == 1
        first = pipeline.build_issue(settings, store)
        assert first.created and titles(store, 1) == ["Morning piece"]
        sent(store, 1)
        window_end = store.get_issue(1).window_end  # type: ignore[union-attr]
        # Dropped into the folder after the build, dated before it; the article issue 1
        # holds is edited at the same time; and an old archive file turns up.
        markdown(folder, "late-a", "Noon piece", window_end - 2 * HOUR)
        markdown(folder, "late-b", "Yesterday's piece", window_end - DAY)
        markdown(folder, "archive", "Archive piece", window_end - 3 * 365 * DAY)
        markdown(folder, "morning", "Morning piece", start - 5 * HOUR, body="Body, corrected.")
        report = pipeline.collect(settings, store)
        assert (report.new, report.updated) == (3, 1)
        second = pipeline.build_issue(settings, store)
        assert second.created and second.issue is not None and second.issue.number == 2
        assert titles(store, 2) == ["Noon piece", "Yesterday's piece"]
        # Nothing is left that no issue holds and is young enough: nothing new.
        sent(store, 2)
        again = pipeline.build_issue(settings, store)
        assert again.nothing_new and "nothing new since issue 2" in again.message
    finally:
        store.close()


def test_an_article_an_issue_holds_is_not_repeated_when_it_is_redated_or_edited(
        make_settings: Callable[..., Settings], db_url: str) -> None:
    """A feed that moves an entry's date forward when it is edited used to put it into the
    next issue again: it was "published" after the previous window."""
    settings = make_settings(database_url=db_url)
    store = pipeline.open_store(settings)
    try:
        one, two = art(1, "World", 2), art(2, "World", 1)
        store.save_articles([one, two], [], NOW)
        pipeline.build_issue(settings, store, now=NOW)
        sent(store, 1)
        redated = replace(one, published=NOW + HOUR, content_hash="h1b")
        edited = replace(two, content_hash="h2b")
        store.save_articles([art(3, "World", 0.5)], [redated, edited], NOW + HOUR)
        second = pipeline.build_issue(settings, store, now=NOW + 2 * HOUR)
        assert second.created and titles(store, 2) == ["Piece 3"]
    finally:
        store.close()


def test_first_issue_on_a_back_catalogue_then_an_archive_imported_later(
        make_settings: Callable[..., Settings]) -> None:
    """The first issue takes the newest max_articles, however old (as documented). Later,
    an archive imported into the folder does not flood an issue: an article arriving late
    goes in only when dated no earlier than lookback_days before the previous build."""
    settings = make_settings("[newsletter]\nmax_articles = 5\nlookback_days = 7\n")
    store = pipeline.open_store(settings)
    try:
        old = [piece(f"old-{n}", f"Old {n:02d}", "Archive", 24 * (1000 + n), now=NOW)
               for n in range(40)]
        recent = [piece(f"recent-{n}", f"Recent {n}", "City", 10 + n, now=NOW)
                  for n in range(7)]
        store.save_articles([*old, *recent], [], NOW - DAY)
        first = pipeline.build_issue(settings, store, now=NOW)
        assert first.created and titles(store, 1) == [f"Recent {n}" for n in range(5)]
        sent(store, 1)
        # Collected after issue 1: more archive, two dated just inside and outside the
        # look-back before issue 1's build, and one published since.
        archive = [piece(f"more-{n}", f"More {n:02d}", "Archive", 24 * (400 + n), now=NOW)
                   for n in range(20)]
        edges = [piece("inside", "Six days old", "City", 24 * 6, now=NOW),
                 piece("outside", "Eight days old", "City", 24 * 8, now=NOW)]
        # Recent 5, left out of issue 1, is edited: an edit is not a new article.
        edit = replace(recent[5], content_hash="recent-5 edited")
        store.save_articles([*archive, *edges, piece("new", "New", "City", -1, now=NOW)],
                            [edit], NOW + 2 * HOUR)
        second = pipeline.build_issue(settings, store, now=NOW + 3 * HOUR)
        assert second.created and titles(store, 2) == ["New", "Six days old"]
        # What issue 1 left out when it was built (over max_articles: Recent 5 and 6, and
        # the back catalogue) is not offered again.
        held = {a.title for n in (1, 2) for a in store.get_issue(n).articles}  # type: ignore[union-attr]
        assert not held & {"Recent 5", "Recent 6", "Eight days old"}
    finally:
        store.close()


def test_a_collect_running_while_the_issue_is_built_is_not_lost(
        make_settings: Callable[..., Settings]) -> None:
    """A collect stamps its start on what it stores; one that started before the build and
    stored after it read the articles is new for the next issue, though stamped earlier."""
    settings = make_settings()
    store = pipeline.open_store(settings)
    try:
        store.save_articles([art(1, "World", 1)], [], NOW - HOUR)
        store.record_collect(NOW - HOUR, NOW - HOUR + timedelta(seconds=5), 1, 0, 0)
        pipeline.build_issue(settings, store, now=NOW)
        sent(store, 1)
        started = NOW - timedelta(minutes=1)
        store.save_articles([art(2, "World", 0.25)], [], started)  # after the build read
        store.record_collect(started, NOW + timedelta(seconds=30), 1, 0, 0)
        second = pipeline.build_issue(settings, store, now=NOW + HOUR)
        assert second.created and titles(store, 2) == ["Piece 2"]
    finally:
        store.close()


@pytest.mark.parametrize("cancel", [False, True])
def test_a_late_article_refreshes_the_draft_and_outlives_a_cancelled_issue(
        make_settings: Callable[..., Settings], cancel: bool) -> None:
    settings = make_settings()
    store = pipeline.open_store(settings)
    try:
        store.save_articles([art(1, "World", 1)], [], NOW)
        pipeline.build_issue(settings, store, now=NOW)
        sent(store, 1)
        store.save_articles([art(2, "World", 2)], [], NOW + HOUR)
        pipeline.build_issue(settings, store, now=NOW + 2 * HOUR)
        assert titles(store, 2) == ["Piece 2"]
        # Issue 2 is still a draft: the rebuild keeps its articles and adds the late one.
        store.save_articles([art(3, "World", 3)], [], NOW + 3 * HOUR)
        rebuilt = pipeline.build_issue(settings, store, now=NOW + 4 * HOUR)
        assert not rebuilt.created and titles(store, 2) == ["Piece 2", "Piece 3"]
        if cancel:  # a cancelled issue holds nothing: its articles go into the next one
            cancel_issue(store, 2)
            third = pipeline.build_issue(settings, store, now=NOW + 5 * HOUR)
            assert third.created and titles(store, 3) == ["Piece 2", "Piece 3"]
        else:
            sent(store, 2)
            third = pipeline.build_issue(settings, store, now=NOW + 5 * HOUR)
            assert third.nothing_new and store.get_issue(3) is None
    finally:
        store.close()


def test_an_article_only_a_cancelled_issue_held_is_still_new(
        make_settings: Callable[..., Settings]) -> None:
    """Issue 2 (Piece 2) is cancelled; issue 3 takes only Piece 3 (max_articles = 1). Piece 2
    then moves its date forward: no issue was sent with it, so issue 4 takes it."""
    settings = make_settings("[newsletter]\nmax_articles = 1\n")
    store = pipeline.open_store(settings)
    try:
        store.save_articles([art(1, "World", 1)], [], NOW)
        pipeline.build_issue(settings, store, now=NOW)
        sent(store, 1)
        two = art(2, "World", -1)
        store.save_articles([two], [], NOW)
        pipeline.build_issue(settings, store, now=NOW + 2 * HOUR)
        cancel_issue(store, 2)
        store.save_articles([art(3, "World", -3)], [], NOW + 3 * HOUR)
        pipeline.build_issue(settings, store, now=NOW + 4 * HOUR)
        assert titles(store, 3) == ["Piece 3"]
        sent(store, 3)
        redated = replace(two, published=NOW + 5 * HOUR, content_hash="h2b")
        store.save_articles([], [redated], NOW + 5 * HOUR)
        fourth = pipeline.build_issue(settings, store, now=NOW + 6 * HOUR)
        assert fourth.created and titles(store, 4) == ["Piece 2"]
    finally:
        store.close()
