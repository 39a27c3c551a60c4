"""The home page and the dashboard say when the next issue goes out: the earliest of the
cron's next run and an issue scheduled for a date (in review mode only an approved one), the
home page republished whenever that changes, from the API, the dashboard or the CLI."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from click.testing import CliRunner
from webserver import running

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.store.database import Store
from newsletter.words import friendly_time
from tests.helpers.admin import TOKEN, csrf_of
from tests.helpers.sending import seed


@dataclass
class Site:
    settings: Settings
    store: Store
    cron: datetime  # the issue cron's next run
    web: httpx.Client  # a visitor (and, once logged in, the dashboard)
    api: httpx.Client  # carries the admin token


@contextmanager
def served(make_settings: Callable[..., Settings], tmp_path: Path, *,
           review: bool) -> Iterator[Site]:
    """A daily issue cron 11 to 12 hours ahead, issue 1 built (in review mode the editor's
    mail is in the outbox), the site published, the app as `newsletter serve` wires it."""
    now = datetime.now(UTC)
    hour = (now.hour + 12) % 24
    editors = '[newsletter]\nreview = true\neditors = ["ed@example.org"]\n' if review else ""
    settings = make_settings(f'[schedule]\nissue_cron = "0 {hour} * * *"\n{editors}'
                             f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    settings = replace(settings, secrets=replace(settings.secrets, admin_token=TOKEN))
    cron = datetime.combine(now.date(), datetime.min.time(), UTC).replace(hour=hour)
    cron += timedelta(days=1) if cron <= now else timedelta(0)
    store = pipeline.open_store(settings)
    try:
        seed(store, 1)
        assert pipeline.build_issue(settings, store).issue is not None
        pipeline.publish(settings, store)
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=30) as web, \
                httpx.Client(base_url=base, timeout=30,
                             headers={"authorization": f"Bearer {TOKEN}"}) as api:
            yield Site(settings, store, cron, web, api)
    finally:
        store.close()


def next_line(page: str) -> str:
    found = re.search(r'<p class="next-issue">([^<]*)</p>', page)
    return html.unescape(found[1]) if found else ""


def next_issue(when: datetime) -> str:
    return f"Next issue: {friendly_time(when, datetime.now(UTC))}"


def cli_ok(settings: Settings, *args: str) -> None:
    result = CliRunner().invoke(cli, ["--config", str(settings.path), *args])
    assert result.exit_code == 0, result.output


def test_the_home_page_names_the_earliest_of_the_cron_and_a_scheduled_issue(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with served(make_settings, tmp_path, review=False) as site:
        settings, store, cron, web, api = (site.settings, site.store, site.cron, site.web,
                                           site.api)
        assert (settings.site_dir / "index.html").is_file()  # "/" is the published page
        assert next_line(web.get("/").text) == next_issue(cron)
        sooner = (datetime.now(UTC) + timedelta(minutes=30)).replace(second=0, microsecond=0)
        assert api.post("/admin/api/issues/1/schedule",
                        json={"at": sooner.isoformat()}).status_code == 200
        assert next_line(web.get("/").text) == next_issue(sooner)
        assert web.post("/admin/login", data={"token": TOKEN}).status_code == 303
        page = web.get("/admin/").text
        assert next_line(page) == next_issue(sooner)

        # Unscheduled (paused from the dashboard): the cron again; resumed: the issue again.
        assert web.post("/admin/issues/1/pause", data={
            "csrf": csrf_of(page, "/admin/issues/1/pause")}).status_code == 303
        assert store.get_issue(1).status == "paused"  # type: ignore[union-attr]
        assert next_line(web.get("/").text) == next_issue(cron)
        assert api.post("/admin/api/issues/1/resume").status_code == 200
        assert next_line(web.get("/").text) == next_issue(sooner)
        # From the CLI: cancelled, then another issue scheduled after the cron's run.
        cli_ok(settings, "issue", "cancel", "1")
        assert next_line(web.get("/").text) == next_issue(cron)
        assert pipeline.build_issue(settings, store, force=True).issue is not None
        cli_ok(settings, "issue", "schedule", "2", "--at",
               (cron + timedelta(hours=2)).isoformat())
        assert next_line(web.get("/").text) == next_issue(cron)
        cli_ok(settings, "issue", "schedule", "2", "--at", sooner.isoformat())
        assert next_line(web.get("/").text) == next_issue(sooner)


def test_in_review_mode_only_an_approved_issue_has_a_time(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with served(make_settings, tmp_path, review=True) as site:
        store, cron, web, api = site.store, site.cron, site.web, site.api
        # The cron's run builds a draft for the editors: when it goes out, nobody can say.
        prepared = (f"Issues are prepared every day at {cron.hour:02d}:00 UTC; each is sent "
                    f"once the editors approve it.")
        assert next_line(web.get("/").text) == prepared
        sooner = (datetime.now(UTC) + timedelta(minutes=30)).replace(second=0, microsecond=0)
        assert api.post("/admin/api/issues/1/schedule",
                        json={"at": sooner.isoformat()}).status_code == 200
        assert next_line(web.get("/").text) == prepared  # not approved: no time promised
        assert api.post("/admin/api/issues/1/approve").status_code == 200
        assert next_line(web.get("/").text) == next_issue(sooner)
        # An edit withdraws the approval, and the promise with it.
        edited = api.patch("/admin/api/issues/1", json={"subject": "Changed"})
        assert edited.status_code == 200, edited.text
        assert store.get_issue(1).approved_at is None  # type: ignore[union-attr]
        assert next_line(web.get("/").text) == prepared
