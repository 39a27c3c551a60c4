"""Every door that changes articles republishes feeds and pages in the same operation."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from webserver import running

from newsletter import pipeline
from newsletter import scheduler as sched
from newsletter.config import Settings
from newsletter.pipeline import scheduling
from newsletter.pipeline.webapp import web_app
from tests.helpers.admin import TOKEN, csrf_of


def write_article(folder: Path, name: str, title: str, section: str = "World") -> None:
    (folder / name).write_text(
        f"---\ntitle: {title}\ndate: 2026-11-02T09:00:00Z\nsection: {section}\n"
        f"authors: [Ada]\n---\n\nThe body of {title}.\n", encoding="utf-8")


def cli_collect(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    return subprocess.run([sys.executable, "-m", "newsletter", "--config", str(settings.path),
                           "collect"], cwd=settings.path.parent, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_scheduler_api_and_dashboard_each_republish(
        make_settings: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n'
                             '[schedule]\nissue_cron = ""\n')
    settings = replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))
    folder = tmp_path / "articles"
    store = pipeline.open_store(settings)
    monkeypatch.setattr(scheduling, "_RUNTIME", scheduling.Runtime(settings, store))
    page_of = "/articles/{}/".format
    try:
        with running(web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as client:

            def shows(path: str, text: str) -> bool:
                r = client.get(path)
                return r.status_code == 200 and text in r.text

            # 1. `newsletter collect` in its own process: feeds and page are out when it exits.
            write_article(folder, "one.md", "Harbour Tolls Rise")
            done = cli_collect(settings)
            assert done.returncode == 0, done.stderr
            assert shows(page_of("harbour-tolls-rise"), "<h1>Harbour Tolls Rise</h1>")
            assert shows("/feeds/rss.xml", "Harbour Tolls Rise")
            assert shows("/", "Harbour Tolls Rise") and shows("/sections/world/", "Harbour")

            # 2. The scheduler's collect job after an edit (the slug stays: it is in front
            #    matter now) — the old code republished only when something was new.
            (folder / "one.md").write_text(
                "---\ntitle: Harbour Tolls Fall\nslug: harbour-tolls-rise\n"
                "date: 2026-11-02T09:00:00Z\nsection: World\n---\n\nRevised body.\n",
                encoding="utf-8")
            sched.job_collect()
            assert shows(page_of("harbour-tolls-rise"), "Revised body.")
            assert shows("/feeds/atom.xml", "Harbour Tolls Fall")
            assert not shows("/", "Harbour Tolls Rise")

            # 3. The API's collect: a new article, in a new section.
            write_article(folder, "two.md", "Grid Queues", section="Energy")
            r = client.post("/admin/api/collect", headers={"authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200 and r.json()["new"] == 1
            assert shows(page_of("grid-queues"), "<h1>Grid Queues</h1>")
            assert shows("/sections/energy/", "Grid Queues")
            assert shows("/feeds/sections/energy/feed.json", "Grid Queues")
            assert shows(page_of("grid-queues"), 'rel="next">Harbour Tolls Fall</a>') or \
                shows(page_of("grid-queues"), 'rel="prev">Harbour Tolls Fall</a>')

            # 4. The dashboard's collect after a file was deleted: its article is gone from
            #    the store, the feeds and the pages.
            (folder / "one.md").unlink()
            assert client.post("/admin/login", data={"token": TOKEN}).status_code == 303
            page = client.get("/admin/")
            r = client.post("/admin/collect", data={"csrf": csrf_of(page.text, "/admin/collect")})
            assert r.status_code == 303
            assert client.get(page_of("harbour-tolls-rise")).status_code == 404
            assert not shows("/feeds/rss.xml", "Harbour Tolls")
            assert not shows("/", "Harbour Tolls") and shows("/", "Grid Queues")
            assert client.get("/sections/world/").status_code == 404
            assert "harbour" not in client.get("/sitemap.xml").text
            assert store.count_articles() == 1
    finally:
        store.close()


def test_a_deleted_file_whose_article_went_out_in_an_issue_keeps_its_page(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings('[schedule]\nissue_cron = ""\n')
    folder = tmp_path / "articles"
    write_article(folder, "a.md", "Kept Because Mailed")
    store = pipeline.open_store(settings)
    try:
        pipeline.collect_and_publish(settings, store)
        built = pipeline.build_issue(settings, store)
        assert built.issue is not None and len(built.issue.articles) == 1
        write_article(folder, "b.md", "Never Mailed")
        write_article(folder, "c.md", "Still Here")
        pipeline.collect_and_publish(settings, store)
        for name in ("a.md", "b.md"):
            (folder / name).unlink()
        report = pipeline.collect_and_publish(settings, store)
        assert report.removed == 1 and store.count_articles() == 2
        site = settings.site_dir
        # Issue 1's mail links to it: the page stays rather than become a dead link.
        assert (site / "articles/kept-because-mailed/index.html").is_file()
        assert not (site / "articles/never-mailed").exists()
    finally:
        store.close()


def test_renaming_a_file_keeps_its_article(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings('[schedule]\nissue_cron = ""\n')
    folder = tmp_path / "articles"
    write_article(folder, "old-name.md", "Same Piece")
    store = pipeline.open_store(settings)
    try:
        pipeline.collect_and_publish(settings, store)
        (folder / "old-name.md").rename(folder / "new-name.md")
        report = pipeline.collect_and_publish(settings, store)
        assert report.removed == 0 and store.count_articles() == 1
        assert (settings.site_dir / "articles/same-piece/index.html").is_file()
    finally:
        store.close()


def test_a_folder_emptied_at_once_keeps_its_articles(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings('[schedule]\nissue_cron = ""\n')
    folder = tmp_path / "articles"
    write_article(folder, "a.md", "First")
    write_article(folder, "b.md", "Second")
    store = pipeline.open_store(settings)
    try:
        pipeline.collect_and_publish(settings, store)
        for path in folder.iterdir():
            path.unlink()  # as an unmounted share looks: the folder is there, empty
        report = pipeline.collect_and_publish(settings, store)
        assert report.removed == 0 and store.count_articles() == 2
        assert any("no article files left" in w for w in report.warnings)
        assert (settings.site_dir / "articles/first/index.html").is_file()
    finally:
        store.close()
