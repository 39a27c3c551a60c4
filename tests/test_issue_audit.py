"""Every schedule, pause, resume, cancel and send names who did it and what changed: from the
command line, the admin API, the dashboard and the scheduler."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from newsletter import pipeline
from newsletter import scheduler as sched
from newsletter.cli.common import cli_actor
from newsletter.cli.main import cli
from newsletter.config import Settings
from newsletter.pipeline import control, scheduling
from newsletter.store.database import Store
from tests.helpers.admin import admin_settings, csrf_of, login, serve


def history(store: Store, number: int) -> list[tuple[str, str, dict[str, object]]]:
    return [(e.action, e.actor, e.detail) for e in store.issue_history(number)
            if e.action != "build"]


def status(frm: str, to: str) -> dict[str, str]:
    return {"from": frm, "to": to}


def test_cli_actions_name_the_user_and_what_changed(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    pipeline.collect(settings, store)
    assert pipeline.build_issue(settings, store).issue is not None
    at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    later = at + timedelta(hours=1)
    args, runner, me = ["--config", str(settings.path)], CliRunner(), cli_actor()
    for command in (["schedule", "1", "--at", at.isoformat()],
                    ["schedule", "1", "--at", later.isoformat()], ["pause", "1"],
                    ["resume", "1"], ["send", "1"]):
        done = runner.invoke(cli, [*args, "issue", *command])
        assert done.exit_code == 0, done.output
    events = history(store, 1)
    store.close()
    assert [(a, who) for a, who, _ in events] == [
        ("schedule", me), ("schedule", me), ("pause", me), ("resume", me), ("send", me)]
    # What changed: the send time old → new, and the status.
    assert events[0][2] == {"status": status("draft", "scheduled"),
                            "send_at": {"from": None, "to": at.isoformat()}}
    assert events[1][2]["send_at"] == {"from": at.isoformat(), "to": later.isoformat()}
    assert events[2][2] == {"status": status("scheduled", "paused")}
    assert events[3][2] == {"status": status("paused", "scheduled")}
    assert events[4][2] == {"status": status("scheduled", "sending"), "rows": 0,
                            "resumed": False}
    assert me.startswith("cli ")


def test_api_dashboard_and_scheduler_actions_name_their_actor(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    pipeline.collect(settings, store)
    assert pipeline.build_issue(settings, store).issue is not None
    at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()
    with serve(settings, store, tmp_path) as admin:
        for verb, body in (("schedule", {"at": at}), ("pause", None), ("resume", None),
                           ("cancel", None)):
            answer = admin.api.post(f"/admin/api/issues/1/{verb}", json=body)
            assert answer.status_code == 200, answer.text
        assert pipeline.build_issue(settings, store, force=True).issue is not None  # 2
        assert admin.api.post("/admin/api/issues/2/send").status_code == 202
        admin.wait_until(lambda: store.get_issue(2).status == "sent")  # type: ignore[union-attr]
        assert pipeline.build_issue(settings, store, force=True).issue is not None  # 3
        with login(admin) as browser:
            page = browser.get("/admin/").text
            done = browser.post("/admin/issues/3/schedule", data={
                "csrf": csrf_of(page, "/admin/issues/3/schedule"), "at": at})
            assert done.status_code == 303
    api = "api 127.0.0.1"
    assert [(a, who) for a, who, _ in history(store, 1)] == [
        ("schedule", api), ("pause", api), ("resume", api), ("cancel", api)]
    assert history(store, 1)[3][2] == {"status": status("scheduled", "cancelled")}
    assert [(a, who) for a, who, _ in history(store, 2)] == [("send", api)]
    assert [(a, who) for a, who, _ in history(store, 3)] == [
        ("schedule", "dashboard 127.0.0.1")]

    # The scheduler: an overdue issue paused by the sweep, a due one sent by it.
    late = datetime.now(UTC) - timedelta(hours=8)
    control.schedule_issue(store, 3, late, now=late - timedelta(days=1), actor="cli ops")
    scheduling._RUNTIME = scheduling.Runtime(settings, store)
    try:
        sched.job_sweep()
        assert store.get_issue(3).status == "paused"  # type: ignore[union-attr]
        control.resume_issue(store, 3, actor="cli ops")
        due = datetime.now(UTC) - timedelta(minutes=1)
        control.schedule_issue(store, 3, due, now=due, actor="cli ops")
        sched.job_sweep()
        assert store.get_issue(3).status == "sent"  # type: ignore[union-attr]
    finally:
        scheduling._RUNTIME = None
    assert [(a, who) for a, who, _ in history(store, 3)][1:] == [
        ("schedule", "cli ops"), ("pause", "scheduler"), ("resume", "cli ops"),
        ("schedule", "cli ops"), ("send", "scheduler")]
    store.close()
