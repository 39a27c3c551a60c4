"""Hardening, articles: hostile files go through `pipeline.collect` on real files and SQLite.

Each case checks that the error names the file and the problem, that the other files are
still collected, and that nothing already stored is lost or stored twice. Parser-level
cases live in test_sources_files.py, test_sources_markdown.py and test_sources_digest.py.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser
import pytest

from newsletter import pipeline
from newsletter import scheduler as sched
from newsletter.audience import subscriptions
from newsletter.config import Settings
from newsletter.pipeline import collecting, scheduling, sending
from newsletter.store.database import Store

BAD_FIXTURES = Path(__file__).parent / "fixtures" / "articles" / "bad"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def article(title: str, *, date: str = "2026-11-19T08:00:00Z", body: str = "Body.",
            extra: str = "") -> str:
    quoted = json.dumps(title, ensure_ascii=False)
    return f"---\ntitle: {quoted}\ndate: {date}\n{extra}---\n{body}\n"


def collect(settings: Settings, store: Store, now: datetime = NOW) -> pipeline.CollectReport:
    report = pipeline.collect(settings, store, now=now)
    for line in report.errors:
        assert "\n" not in line and "\r" not in line, line  # one line per problem
    return report


def titles(store: Store) -> list[str]:
    return sorted(a.title for a in store.latest_articles(1000))


def error_for(report: pipeline.CollectReport, name: str) -> str:
    found = [e for e in report.errors if f"/{name}:" in e]
    assert len(found) == 1, (name, report.errors)
    return found[0]


def test_every_broken_file_is_named_and_the_rest_collected(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings("[collect]\nmax_file_bytes = 20000000\n")
    folder = tmp_path / "articles"
    # Good files, in every encoding an editor might have used.
    (folder / "good.md").write_text(article("Good piece"), encoding="utf-8")
    (folder / "bom.md").write_bytes(b"\xef\xbb\xbf" + article("BOM first").encode())
    (folder / "utf16.md").write_bytes(article("UTF-16 café").encode("utf-16"))
    (folder / "latin1.md").write_bytes(article("Latin-1 café").encode("latin-1"))
    (folder / "bad-utf8.md").write_bytes(article("Broken UTF-8").encode() + b"\xff\xfe\xc3(\n")
    # Broken ones, each with the phrase its error must contain.
    broken = {
        "unclosed.md": ("---\ntitle: x\ndate: 2026-11-19\nbody\n", "not closed"),
        "list.md": ("---\n- a\n- b\n---\nbody\n", "must be a mapping"),
        "no-title.md": ("---\ndate: 2026-11-19\n---\nbody\n", "missing required field 'title'"),
        "no-date.md": ("---\ntitle: x\n---\nbody\n", "missing required field 'date'"),
        "tomorrow.md": (article("x", date="tomorrow"), "is not a date: 'tomorrow'"),
        "year-9999.md": (article("x", date="9999-01-01"), "has year 9999"),
        "nul.md": (article("x", body="a\x00b"), "looks binary"),
        "js-url.md": (article("x", extra='url: "javascript:alert(1)"\n'), "field 'url' must be"),
        "data-image.md": (article("x", extra='image: "data:image/svg+xml,<svg onload=x>"\n'),
                          "field 'image' must be"),
    }
    for name, (text, _) in broken.items():
        (folder / name).write_text(text, encoding="utf-8")
    shutil.copy(BAD_FIXTURES / "fm-alias-bomb.md", folder / "alias-bomb.md")
    broken["alias-bomb.md"] = ("", "YAML alias")
    (folder / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    broken["binary.md"] = ("", "looks binary")
    (folder / "utf16-no-bom.md").write_bytes(article("x").encode("utf-16-le"))
    broken["utf16-no-bom.md"] = ("", "looks binary")
    # 50 MB without writing 50 MB: a sparse file, refused on its size before any read.
    with open(folder / "huge.md", "wb") as f:
        f.write(article("Huge").encode())
        f.truncate(50 * 1024 * 1024)
    broken["huge.md"] = ("", "is 52428800 bytes, over the limit of 20000000")
    (folder / "long-line.md").write_bytes(article("Long", body="x" * 10_000_000).encode())
    broken["long-line.md"] = ("", "has a line of 10000000 characters (limit 1000000)")

    store = pipeline.open_store(settings)
    report = collect(settings, store)
    assert report.new == 5
    assert titles(store) == ["BOM first", "Broken UTF-8", "Good piece", "Latin-1 café",
                             "UTF-16 café"]
    assert len(report.errors) == len(broken)
    for name, (_, phrase) in broken.items():
        assert phrase in error_for(report, name), name

    # The next run reads nothing again, still names every broken file, loses nothing.
    again = collect(settings, store, NOW + timedelta(minutes=15))
    assert (again.new, again.updated, again.skipped_files) == (0, 0, 5 + len(broken))
    assert sorted(again.errors) == sorted(report.errors)
    assert store.count_articles() == 5
    # Fixing one file brings it in; the others stay as they were.
    (folder / "no-title.md").write_text(article("Fixed now"), encoding="utf-8")
    fixed = collect(settings, store, NOW + timedelta(minutes=30))
    assert (fixed.new, len(fixed.errors)) == (1, len(broken) - 1)
    assert store.count_articles() == 6
    store.close()


def test_symlinks_and_dot_dot_never_leave_the_folder(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    folder = tmp_path / "articles"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text(article("SECRET outside", body="TOP-SECRET"), "utf-8")
    (folder / "good.md").write_text(article("Inside piece", extra="slug: ../../etc/passwd\n"
                                            "image: ../../../../etc/passwd\n"), "utf-8")
    (folder / "link.md").symlink_to(outside / "secret.md")
    (folder / "dir").symlink_to(outside, target_is_directory=True)
    store = pipeline.open_store(settings)
    report = collect(settings, store)
    assert titles(store) == ["Inside piece"]
    assert "outside the articles folder" in error_for(report, "link.md")
    assert len(report.errors) == 1  # the symlinked folder is not walked at all
    [inside] = store.latest_articles(5)
    # `..` in a slug or a relative image stays on the publication's own site.
    assert inside.link == "https://ledger.example.org/articles/etc-passwd/"
    assert inside.image == "https://ledger.example.org/etc/passwd"
    assert all("SECRET" not in a.content_html for a in store.latest_articles(5))
    store.close()


def test_an_unreadable_subfolder_is_named_and_the_rest_collected(
        make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings()
    folder = tmp_path / "articles"
    (folder / "good.md").write_text(article("Still collected"), "utf-8")
    (folder / "locked").mkdir()
    (folder / "locked" / "x.md").write_text(article("Behind a lock"), "utf-8")
    real = os.scandir

    def scandir(path: str = ".") -> object:  # as a folder without read permission would
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # the suite may run as root, who reads all
    store = pipeline.open_store(settings)
    report = collect(settings, store)
    assert titles(store) == ["Still collected"]
    assert report.errors == [f"{folder / 'locked'}: cannot list folder: Permission denied"]
    store.close()


def test_slugs_colliding_by_case_or_normal_form_are_refused_and_stay_refused(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings()
    folder = tmp_path / "articles"
    (folder / "a-nfc.md").write_text(article("Caf\u00e9 society", body="first"), "utf-8")
    (folder / "b-nfd.md").write_text(article("Cafe\u0301 society", body="second"), "utf-8")
    (folder / "c-case.md").write_text(article("x", extra="slug: CAFE-Society\n"), "utf-8")
    (folder / "\u00e9t\u00e9.md").write_text(article("Summer"), "utf-8")  # NFC file name
    (folder / "e\u0301te\u0301.md").write_text(article("SUMMER"), "utf-8")  # NFD, same slug
    store = pipeline.open_store(settings)
    report = collect(settings, store)
    assert report.new == 2
    assert sorted(a.content_html for a in store.latest_articles(5)
                  if a.slug == "cafe-society") == ["<p>first</p>\n"]
    assert len(report.errors) == 3 and all("collides with" in e for e in report.errors)
    assert "a-nfc.md" in error_for(report, "b-nfd.md")
    # Editing the loser changes nothing stored; renaming the winner is not a collision.
    (folder / "b-nfd.md").write_text(article("Cafe\u0301 society", body="edited"), "utf-8")
    again = collect(settings, store, NOW + timedelta(minutes=1))
    assert again.updated == 0 and "collides with" in error_for(again, "b-nfd.md")
    (folder / "b-nfd.md").unlink()
    (folder / "c-case.md").unlink()
    (folder / "a-nfc.md").rename(folder / "z-renamed.md")
    (folder / "z-renamed.md").write_text(article("Caf\u00e9 society", body="moved"), "utf-8")
    moved = collect(settings, store, NOW + timedelta(minutes=2))
    assert [e for e in moved.errors if "collides" in e and "z-renamed" in e] == []
    assert moved.updated == 1 and store.count_articles() == 2
    store.close()


def _issue_email(settings: Settings, store: Store, tmp_path: Path,
                 number: int) -> email.message.EmailMessage:
    issue = sending.get_sendable(store, number)
    sending.start_sending(settings, store, issue)
    sending.run_worker(settings, store, issue)
    files = sorted((tmp_path / "outbox").glob("*.eml"), key=os.path.getmtime)
    return email.message_from_bytes(files[-1].read_bytes(), policy=email.policy.default)


def test_future_dates_are_held_until_due_then_published_and_sent_once(
        make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    folder = tmp_path / "articles"
    (folder / "past.md").write_text(article("Already out", date="2026-11-20T11:00:00Z"), "utf-8")
    (folder / "soon.md").write_text(article("Embargoed", date="2026-11-20T13:00:00Z"), "utf-8")
    store = pipeline.open_store(settings)
    subscriptions.subscribe(store, "reader@example.org", "Reader", method="admin", ip=None,
                            user_agent=None, now=NOW, confirmed=True)
    clock = [NOW]
    monkeypatch.setattr(collecting, "now_utc", lambda: clock[0])
    monkeypatch.setattr(scheduling, "_RUNTIME", scheduling.Runtime(settings, store))
    atom = tmp_path / "feeds" / "atom.xml"

    def feed_titles() -> list[str]:
        return [e.title for e in feedparser.parse(atom.read_bytes()).entries]

    sched.job_collect()  # what `newsletter run` does every collect_minutes
    assert feed_titles() == ["Already out"]
    first = pipeline.build_issue(settings, store, now=NOW).issue
    assert first is not None and [a.title for a in first.articles] == ["Already out"]
    assert "Embargoed" not in _issue_email(settings, store, tmp_path, 1).get_body(
        ("plain",)).get_content()

    # Two hours later nothing new was collected, but the embargo has passed.
    clock[0] = NOW + timedelta(hours=2)
    sched.job_collect()
    assert feed_titles() == ["Embargoed", "Already out"]
    second = pipeline.build_issue(settings, store, now=clock[0]).issue
    assert second is not None and [a.title for a in second.articles] == ["Embargoed"]
    text = _issue_email(settings, store, tmp_path, 2).get_body(("plain",)).get_content()
    assert "Embargoed" in text and "Already out" not in text
    # And it is never sent again.
    later = pipeline.build_issue(settings, store, now=NOW + timedelta(hours=5))
    assert later.issue is None and later.message.startswith("nothing new since issue 2")
    store.close()


def test_scripts_handlers_and_template_syntax_stay_inert_everywhere(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    body = ('Braces {{ 7*7 }} and {% raw %} and %%UNSUBSCRIBE_URL%% stay text. '
            '<script>alert(1)</script><a href="javascript:alert(2)">a</a>'
            '<img src="x.png" onerror="alert(3)"><p onclick="alert(4)">p</p>'
            '<svg onload="alert(5)"></svg><iframe src="https://evil.example/"></iframe>')
    (tmp_path / "articles" / "x.md").write_text(article(
        "Title {{ 7*7 }} %%NAME%%", body=body,
        extra='image: "https://evil.example/pixel.gif?%%UNSUBSCRIBE_URL%%"\n'), "utf-8")
    store = pipeline.open_store(settings)
    assert collect(settings, store).new == 1
    subscriptions.subscribe(store, "reader@example.org", "Reader", method="admin", ip=None,
                            user_agent=None, now=NOW, confirmed=True)
    [stored] = store.latest_articles(1)
    pipeline.publish_feeds(settings, store)
    feeds = {name: (tmp_path / "feeds" / name).read_text("utf-8")
             for name in ("rss.xml", "atom.xml", "feed.json")}
    json_item = json.loads(feeds["feed.json"])["items"][0]
    for where, text in {"stored": stored.content_html, "json": json_item["content_html"],
                        **{n: feedparser.parse(t.encode()).entries[0].content[0].value
                           for n, t in feeds.items() if n != "feed.json"}}.items():
        lowered = text.lower()
        assert "<script" not in lowered and "javascript:" not in lowered, where
        assert "onerror" not in lowered and "onclick" not in lowered, where
        assert "onload" not in lowered and "<iframe" not in lowered, where
        assert "{{ 7*7 }}" in text and "{% raw %}" in text and "49" not in text, where
        assert "%%UNSUBSCRIBE_URL%%" in text, where
    assert json_item["title"] == "Title {{ 7*7 }} %%NAME%%"

    issue = pipeline.build_issue(settings, store, now=NOW + timedelta(days=1)).issue
    assert issue is not None
    msg = _issue_email(settings, store, tmp_path, issue.number)
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    for part in (html, text):
        assert "{{ 7*7 }}" in part and "{% raw %}" in part and "<script" not in part
        # The reader's own links appear once each, in the footer; article text and image
        # URLs never have them filled in (they would reach evil.example).
        assert part.count("/unsubscribe?token=") == 1 and part.count("/preferences?token=") == 1
        assert "Title {{ 7*7 }} Reader" not in part
    assert "https://evil.example/pixel.gif?%25%25UNSUBSCRIBE_URL%25%25" in html
    store.close()
