"""The dashboard's issue actions: send, test, approve, schedule, pause, resume, cancel."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from newsletter.errors import NewsletterError
from newsletter.models import now_utc
from newsletter.pipeline.editing import conflict, version_of
from newsletter.web.admin_http import AdminDeps, load_issue, parse_when


def when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "—"


class IssueActions:
    """POST /admin/issues/N/<verb> of the dashboard and the editor page."""

    def __init__(self, deps: AdminDeps) -> None:
        self.deps = deps

    async def act(self, request: Request, fields: dict[str, str]) -> str:
        """The flash text of an action, or NewsletterError/HttpError for a refusal."""
        number, verb = int(request.path_params["number"]), request.path_params["action"]
        actor = request.state.actor
        await run_in_threadpool(load_issue, self.deps, number)
        if verb == "send":
            await run_in_threadpool(self.deps.send_issue, number, actor)
            return f"Issue {number}: sending started."
        if verb == "test":
            return await self.send_test(number, fields.get("to", ""), actor)
        if verb == "approve":
            if fields.get("version"):  # the editor page's: approve what it showed, or nothing
                await run_in_threadpool(self.same_version, number, fields["version"])
            issue = await run_in_threadpool(self.deps.approve_issue, number, actor)
            return (f"Issue {number} approved: " + ("sending started." if issue.status ==
                    "sending" else f"it goes at {when(issue.send_at)}."))
        args: tuple[Any, ...] = (number,)
        if verb == "schedule":
            args += (parse_when(fields.get("at", "")),)
        act: Callable[..., Any] = getattr(self.deps, f"{verb}_issue")
        await run_in_threadpool(act, *args, actor)
        issue = await run_in_threadpool(load_issue, self.deps, number)
        return f"Issue {number} is now {issue.status}."

    def same_version(self, number: int, version: str) -> None:
        """EditConflict (refused, nothing approved) unless the issue is still that version."""
        issue = load_issue(self.deps, number, with_articles=True)
        if version != version_of(issue):
            raise conflict(self.deps.store, issue, now_utc())

    async def send_test(self, number: int, to: str, actor: str) -> str:
        addresses = [a for a in to.replace(",", " ").split() if a] or None  # None: seed list
        outcomes = await run_in_threadpool(self.deps.send_tests, number, addresses, actor)
        sent = ", ".join(o.address for o in outcomes if o.sent)
        failed = "; ".join(f"{o.address}: {o.reply}" for o in outcomes if not o.sent)
        if failed:
            raise NewsletterError(f"Test copies of issue {number}: sent to {sent or 'none'}; "
                                  f"not sent to {failed}")
        return f"Test copy of issue {number} sent to {sent}."
