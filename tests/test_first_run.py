"""The first run shows the whole flow: collect, build issue 1 without --force, next issue shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
from webserver import running

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline.webapp import web_app
from newsletter.store.database import Store
from newsletter.words import friendly_time, joined, plural
from tests.helpers.admin import TOKEN, csrf_of
from tests.helpers.checkout import ROOT, fresh_copy
from tests.helpers.issues import NOW, art

# "Monday 7 December, 07:00 UTC", maybe with a year: the shipped cron in human words.
WHEN = r"Monday \d{1,2} [A-Z][a-z]+( \d{4})?, 07:00 UTC"
NEXT_ISSUE = re.compile(f"Next issue: {WHEN}")


def age_examples(folder: Path) -> None:
    """Move every example article ten years back, so none is in any look-back window."""
    for path in folder.glob("*.md"):
        text = path.read_text(encoding="utf-8")
        path.write_text(re.sub(r"\b20(1\d|2\d)\b", lambda m: f"20{int(m[1]) - 10:02d}", text),
                        encoding="utf-8")


def cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run([sys.executable, "-m", "newsletter", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


def test_fresh_checkout_collect_then_build_makes_issue_1(tmp_path: Path) -> None:
    repo = fresh_copy(tmp_path / "repo")
    age_examples(repo / "examples" / "articles")
    collected = cli(repo, "collect")
    assert collected.returncode == 0, collected.stderr
    built = cli(repo, "issue", "build")
    assert built.returncode == 0, built.stderr
    assert "Traceback" not in built.stderr
    store = Store(f"sqlite:///{repo / 'var' / 'newsletter.db'}")
    try:
        stored = store.count_articles()
        issue = store.get_issue(1)
        newest = max(a.published for a in store.latest_articles(1))
    finally:
        store.close()
    assert newest.year <= datetime.now(UTC).year - 9  # all of them long out of the window
    assert issue is not None and issue.status == "draft"
    assert len(issue.articles) == min(stored, 30) > 1
    assert built.stdout.startswith(f"built issue 1: {len(issue.articles)} articles in ")
    assert re.search(r"No\. 1 — \d\d [A-Z][a-z]+ \d{4}$", built.stdout.strip())
    # The shipped schedule is shown, in words, before the service has ever run.
    status = cli(repo, "status")
    assert status.returncode == 0, status.stderr
    assert re.search(r"^  issue +cron\[.*next: \d{4}-\d\d-\d\d 07:00 UTC", status.stdout, re.M)
    assert re.search(rf"^next issue: {WHEN}$", status.stdout, re.M), status.stdout


def shipped_schedule() -> str:
    """The [schedule] table of config/newsletter.toml, as TOML to append to a test config."""
    table = tomllib.loads((ROOT / "config" / "newsletter.toml").read_text("utf-8"))["schedule"]
    assert table.get("issue_cron"), "config/newsletter.toml ships no issue_cron"
    return "[schedule]\n" + "".join(f'{k} = "{v}"\n' for k, v in table.items())


def old_articles_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    articles = tmp_path / "articles"
    articles.mkdir(exist_ok=True)
    for path in (ROOT / "examples" / "articles").glob("*.md"):
        (articles / path.name).write_bytes(path.read_bytes())
    age_examples(articles)
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n'
                             + shipped_schedule())
    return replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))


def test_dashboard_build_makes_issue_1_and_home_shows_next_issue(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = old_articles_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        with running(web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as client:
            home = client.get("/")
            assert home.status_code == 200
            assert NEXT_ISSUE.search(home.text), home.text
            assert client.post("/admin/login", data={"token": TOKEN}).status_code == 303
            page = client.get("/admin/")
            assert NEXT_ISSUE.search(page.text) and "--force" not in page.text
            client.post("/admin/collect", data={"csrf": csrf_of(page.text, "/admin/collect")})
            page = client.get("/admin/")
            r = client.post("/admin/build", data={"csrf": csrf_of(page.text, "/admin/build")})
            assert r.status_code == 303
            page = client.get("/admin/")
            issue = store.get_issue(1)
            assert issue is not None and len(issue.articles) == store.count_articles() > 1
            assert f"Built issue 1: {len(issue.articles)} articles in" in page.text
            # Once issue 1 is out, nothing is new: the dashboard says how, in its own terms.
            assert store.set_issue_status(1, "sent", datetime.now(UTC), expect=("draft",))
            r = client.post("/admin/build", data={"csrf": csrf_of(page.text, "/admin/build")})
            page = client.get("/admin/")
            assert "Nothing new since issue 1" in page.text
            assert "Tick “even if nothing is new” to build one anyway." in page.text
            assert "--force" not in page.text
            api = client.post("/admin/api/issues", json={},
                              headers={"authorization": f"Bearer {TOKEN}"})
            assert api.status_code == 200 and api.json()["message"] == (
                'nothing new since issue 1: no issue built (send {"force": true} to build one '
                'anyway)')
            assert store.get_issue(2) is None
    finally:
        store.close()


def test_counts_are_singular_for_one(make_settings: Callable[..., Settings]) -> None:
    assert [plural(n, "article") for n in (0, 1, 2)] == ["0 articles", "1 article",
                                                         "2 articles"]
    assert plural(1, "delivery", "deliveries") == "1 delivery"
    assert plural(2, "delivery", "deliveries") == "2 deliveries"
    assert joined(["A"]) == "A" and joined(["A", "B"]) == "A and B"
    assert joined(list("ABCDEF")) == "A, B, C and 3 more"
    settings = make_settings()
    store = pipeline.open_store(settings)
    try:
        store.save_articles([art(1, "World", 1)], [], NOW)
        one = pipeline.build_issue(settings, store, now=NOW)
        assert one.message.startswith("built issue 1: 1 article in 1 section — ")
        assert one.issue is not None and one.issue.preheader == "This issue: 1 article in World."
        store.save_articles([art(2, "Economy", 0.5)], [], NOW)
        two = pipeline.build_issue(settings, store, now=NOW)
        assert two.message.startswith("rebuilt issue 1: 2 articles in 2 sections — ")
        again = pipeline.build_issue(settings, store, now=NOW)
        assert again.message == "issue 1 is up to date (draft, 2 articles)"
    finally:
        store.close()


def test_default_subject_carries_the_issue_number(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    store = pipeline.open_store(settings)
    try:
        store.save_articles([art(1, "World", 1)], [], NOW)
        first = pipeline.build_issue(settings, store, now=NOW).issue
        assert first is not None and store.set_issue_status(1, "sent", NOW, expect=("draft",))
        store.save_articles([art(2, "World", -1)], [], NOW)
        second = pipeline.build_issue(settings, store, now=NOW.replace(hour=14)).issue
        assert first.subject == "Test Ledger No. 1 — 20 November 2026"
        assert second is not None and second.subject == "Test Ledger No. 2 — 20 November 2026"
        # The text part names the publication once at the top, not again in the subject.
        head = second.text.partition("View in browser")[0]
        assert head.count("Test Ledger") == 1 and "No. 2" not in head
    finally:
        store.close()


def test_friendly_time() -> None:
    when = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)
    assert friendly_time(when, datetime(2026, 12, 1, tzinfo=UTC)) == "Monday 7 December, 07:00 UTC"
    assert friendly_time(when, datetime(2025, 12, 1, tzinfo=UTC)) == \
        "Monday 7 December 2026, 07:00 UTC"
