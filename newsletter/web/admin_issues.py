"""The dashboard's issue actions and what its rows offer (versions, a sent issue's newcomers)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from newsletter.errors import NewsletterError
from newsletter.models import now_utc
from newsletter.pipeline.control import Overview
from newsletter.pipeline.editing import conflict, is_version, version_of
from newsletter.pipeline.sending import AlreadySent
from newsletter.web.admin_http import AdminDeps, load_issue, parse_when
from newsletter.words import plural

DONE = {"approve": "approved", "send": "sent"}  # the verbs that name the version they saw


def when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "—"


def changed_since(deps: AdminDeps, number: int, version: str) -> str | None:
    """None while issue `number` is still `version` (editing.version_of); else who changed
    it since, from its history (" by dashboard 127.0.0.1 at 23:41 UTC", or "")."""
    issue = load_issue(deps, number, with_articles=True)
    if is_version(issue, version):
        return None
    return conflict(deps.store, issue, now_utc()).by


class IssueActions:
    """POST /admin/issues/N/<verb> of the dashboard and the editor page, and what the
    dashboard's issue rows need beyond the overview."""

    def __init__(self, deps: AdminDeps) -> None:
        self.deps = deps

    async def act(self, request: Request, fields: dict[str, str]) -> str:
        """The flash text of an action, or NewsletterError/HttpError for a refusal."""
        number, verb = int(request.path_params["number"]), request.path_params["action"]
        actor = request.state.actor
        await run_in_threadpool(load_issue, self.deps, number)
        if verb == "send":
            version = fields.get("version") or None  # the dashboard's Send: what it showed
            if version:  # who changed it, if anyone did (the send checks again, atomically)
                await run_in_threadpool(self.same_version, number, version, "send")
            return await self.send(number, actor, again=fields.get("new_subscribers") == "1",
                                   version=version)
        if verb == "test":
            return await self.send_test(number, fields.get("to", ""), actor)
        if verb == "approve":
            if fields.get("version"):  # the editor page's: approve what it showed, or nothing
                await run_in_threadpool(self.same_version, number, fields["version"],
                                        "approve")
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

    def versions(self) -> dict[int, str]:
        """The version of each issue not yet sending, which its Approve (review mode) or
        Send button sends: the newest ten, as many as the overview lists."""
        waiting = self.deps.store.list_issues(limit=10, statuses=("draft", "scheduled",
                                                                   "paused"),
                                              with_articles=True)
        return {i.number: version_of(i) for i in waiting}

    def newcomers(self, view: Overview) -> dict[int, tuple[int, str]]:
        """{number: (how many joined since it went out, why it cannot go again or "")} of
        the newest issue out, once sent: the one a newcomer is sent. Counting them is a
        pass over every subscriber, so not for older ones (the CLI and the API send those)."""
        latest = next((i for i, _ in view.issues if i.status in ("sending", "sent")), None)
        if latest is None or latest.status != "sent" or self.deps.newcomers is None:
            return {}
        try:
            return {latest.number: (self.deps.newcomers(latest.number), "")}
        except NewsletterError as exc:
            return {latest.number: (0, str(exc))}

    async def send(self, number: int, actor: str, *, again: bool,
                   version: str | None = None) -> str:
        """Send the issue; `again`: a sent one to those who joined since (only when the
        form says so, as the CLI's --to-new-subscribers); `version`: only if still that."""
        kwargs: dict[str, Any] = {"new_subscribers": True} if again else {}
        if version:
            kwargs["version"] = version
        try:
            added = await run_in_threadpool(self.deps.send_issue, number, actor, **kwargs)
        except AlreadySent as exc:  # the pipeline's words name the CLI; these the button
            late = plural(exc.newcomers, "subscriber")
            raise NewsletterError(f"Issue {number} was sent already: nothing was sent. " + (
                f"The {late} who joined since can get it: “Send to the {exc.newcomers} who "
                f"joined since”, on its row." if exc.newcomers else
                "Every active subscriber has it.")) from None
        if not again:
            return f"Issue {number}: sending started."
        return (f"Issue {number}: sending started to the {plural(added, 'subscriber')} who "
                f"joined since." if added is not None else
                f"Issue {number}: sending started to those who joined since.")

    def same_version(self, number: int, version: str, verb: str) -> None:
        """Refused (nothing approved or sent) unless the issue is still the version the page
        showed: two tabs must not approve or send what someone has edited since."""
        by = changed_since(self.deps, number, version)
        if by is not None:
            raise NewsletterError(f"Issue {number} was not {DONE[verb]}: it was changed{by} "
                                  f"since this page was loaded. Review the latest, then "
                                  f"{verb} again.")

    async def send_test(self, number: int, to: str, actor: str) -> str:
        addresses = [a for a in to.replace(",", " ").split() if a] or None  # None: seed list
        outcomes = await run_in_threadpool(self.deps.send_tests, number, addresses, actor)
        sent = ", ".join(o.address for o in outcomes if o.sent)
        failed = "; ".join(f"{o.address}: {o.reply}" for o in outcomes if not o.sent)
        if failed:
            raise NewsletterError(f"Test copies of issue {number}: sent to {sent or 'none'}; "
                                  f"not sent to {failed}")
        return f"Test copy of issue {number} sent to {sent}."
