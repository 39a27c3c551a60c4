"""Admin JSON API under /admin/api/: bearer-token auth over issue, schedule and subscriber work."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from newsletter import log
from newsletter.audience import consent, subscriptions
from newsletter.errors import BadValue, NewsletterError
from newsletter.models import BOUNCE_KINDS, Subscriber
from newsletter.pipeline.editing import version_of
from newsletter.store.schema import SUBSCRIBER_STATUSES
from newsletter.web.admin_add import add_subscriber
from newsletter.web.admin_http import (
    AdminDeps,
    HttpError,
    bounce_json,
    check_bearer,
    counted,
    issue_json,
    json_response,
    load_issue,
    parse_when,
    subscriber_json,
)
from newsletter.web.admin_issues import DONE, changed_since
from newsletter.web.issue_editor import too_large
from newsletter.web.requests import BodyTooLarge, capped_stream, read_capped

CSV_TYPES = ("text/csv", "application/csv")

# -- the API ------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


class _Api:
    def __init__(self, deps: AdminDeps) -> None:
        self.deps = deps
        self.ip = deps.client_ip

    def guarded(self, handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                check_bearer(self.deps, request)  # before reading a byte of the body
                return await handler(request)
            except HttpError as exc:
                return json_response({"error": exc.text}, exc.code, exc.headers)
            except BodyTooLarge as exc:
                return json_response({"error": str(exc)}, 413)
            except BadValue as exc:  # e.g. a send time already past
                return json_response({"error": str(exc)}, 400)
            except NewsletterError as exc:  # an invalid transition, an unsendable issue
                return json_response({"error": str(exc)}, 409)

        return endpoint

    async def body(self, request: Request, limit: int = 0) -> dict[str, Any]:
        raw = await read_capped(request, limit or self.deps.max_body_bytes)
        try:
            data = json.loads(raw or b"{}")
        except ValueError:  # includes bad UTF-8
            raise HttpError(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        return data

    def number(self, request: Request) -> int:
        return int(request.path_params["number"])

    async def collect(self, request: Request) -> Response:
        summary = await run_in_threadpool(self.deps.collect_now)
        log.event("admin.collect", ip=self.ip(request), new=summary.get("new"))
        return json_response(summary)

    async def build(self, request: Request) -> Response:
        force = (await self.body(request)).get("force", False)
        if not isinstance(force, bool):
            raise HttpError(400, '"force" must be true or false')
        result = await run_in_threadpool(self.deps.build_issue, force,
                                         actor=f"api {self.ip(request)}")
        issue = None
        if result.issue is not None:
            issue = await run_in_threadpool(counted, self.deps, result.issue)
        log.event("admin.build", ip=self.ip(request), force=force, created=result.created)
        hint = ' (send {"force": true} to build one anyway)' if result.nothing_new else ""
        return json_response({"message": result.message + hint, "created": result.created,
                              "issue": issue}, 201 if result.created else 200)

    async def list_issues(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 20, 1, 200)

        def run() -> list[dict[str, Any]]:
            return [counted(self.deps, i) for i in self.deps.store.list_issues(limit=limit)]

        return json_response({"issues": await run_in_threadpool(run)})

    def detail(self, number: int) -> dict[str, Any]:
        """The issue with its articles (ids in order), note and editorial times."""
        issue = load_issue(self.deps, number, with_articles=True)
        data = counted(self.deps, issue)
        data["sections"] = [{"name": s.name, "articles": [
            {"id": a.id, "title": a.title, "link": a.link, "published": a.published}
            for a in s.articles]} for s in issue.sections]
        data["articles"] = [{"id": a.id, "title": a.title, "section": s.name, "link": a.link,
                             "published": a.published}
                            for s in issue.sections for a in s.articles]
        data.update(intro=issue.intro, edited_at=issue.edited_at,
                    approved_at=issue.approved_at, version=version_of(issue),
                    preview_url=f"/admin/issues/{issue.number}/preview")
        return data

    async def get_issue(self, request: Request) -> Response:
        data = await run_in_threadpool(self.detail, self.number(request))
        return json_response(data, headers={"etag": f'"{data["version"]}"'})

    async def edit_issue(self, request: Request) -> Response:
        """The changes; a "version" (or If-Match with it) refuses the edit with 409 when the
        issue changed since that version was read. Without one the last save wins."""
        number = self.number(request)
        try:
            changes = await self.body(request, self.deps.max_edit_bytes)
        except BodyTooLarge:
            raise HttpError(413, too_large(self.deps)) from None
        match = _if_match(request)
        if match and "version" not in changes:
            changes["version"] = match
        await run_in_threadpool(load_issue, self.deps, number)  # 404 before anything else
        result = await run_in_threadpool(self.deps.edit_issue, number, changes,
                                         f"api {self.ip(request)}")
        log.event("admin.edit", ip=self.ip(request), number=number, changed=result.changed)
        data = await run_in_threadpool(self.detail, number)
        data.update(changes=list(result.changes), message=result.message)
        return json_response(data, headers={"etag": f'"{data["version"]}"'})

    async def issue_history(self, request: Request) -> Response:
        def run() -> dict[str, Any]:
            number = self.number(request)
            load_issue(self.deps, number)
            return {"number": number, "history": [
                {"at": e.at, "actor": e.actor, "action": e.action, "summary": e.summary,
                 "detail": e.detail} for e in self.deps.issue_history(number)]}

        return json_response(await run_in_threadpool(run))

    def transition(self, verb: str) -> Handler:
        async def handler(request: Request) -> Response:
            number = self.number(request)
            args: tuple[Any, ...] = (number,)
            kwargs: dict[str, Any] = {}
            body = await self.body(request) if verb in ("schedule", *DONE) else {}
            if verb == "schedule":
                args += (parse_when(body.get("at")),)
            elif verb == "send":
                wanted = body.get("new_subscribers", False)
                if not isinstance(wanted, bool):
                    raise HttpError(400, '"new_subscribers" must be true or false')
                if wanted:  # an issue already sent, to those who joined since
                    kwargs["new_subscribers"] = True
            await run_in_threadpool(load_issue, self.deps, number)
            if verb in DONE:  # send and approve may name the version they mean, as PATCH
                version = body.get("version", _if_match(request))
                if version is not None and not isinstance(version, str):
                    raise HttpError(400, '"version" must be a string (GET\'s "version")')
                if version:
                    await run_in_threadpool(self.same_version, number, version, verb)
                    if verb == "send":  # checked again as it starts: an edit in between
                        kwargs["version"] = version
            # send_issue returns at once, the delivery goes on: 202, poll the issue. So does
            # approve when the issue is due now (else it is scheduled: 200).
            act: Callable[..., Any] = getattr(self.deps, f"{verb}_issue")
            await run_in_threadpool(act, *args, f"api {self.ip(request)}", **kwargs)
            log.event(f"admin.{verb}", ip=self.ip(request), number=number)
            issue = await run_in_threadpool(load_issue, self.deps, number)
            data = await run_in_threadpool(counted, self.deps, issue)
            if verb == "approve":
                data.update(approved_at=issue.approved_at, approved_by=issue.approved_by)
            started = verb == "send" or (verb == "approve" and issue.status == "sending")
            return json_response(data, 202 if started else 200)

        return handler

    def same_version(self, number: int, version: str, verb: str) -> None:
        """409 (nothing approved or sent) when the issue changed since `version` was read."""
        by = changed_since(self.deps, number, version)
        if by is not None:
            raise NewsletterError(f"Issue {number} was not {DONE[verb]}: it was changed{by} "
                                  f"since that version was read. Read the latest (GET "
                                  f"/admin/api/issues/{number}), then {verb} again.")

    async def review(self, request: Request) -> Response:
        """The review mail again, with fresh links; 409 outside review mode or when nothing
        awaits approval, 502 when no editor could be reached."""
        number = self.number(request)
        if self.deps.review_issue is None:
            raise HttpError(409, "review mode is off ([newsletter] review = false)")
        await run_in_threadpool(load_issue, self.deps, number)
        result = await run_in_threadpool(self.deps.review_issue, number,
                                         f"api {self.ip(request)}")
        log.event("admin.review", ip=self.ip(request), number=number,
                  editors=len(result.reached))
        body = {"number": number, "message": result.line(), "reached": list(result.reached)}
        return json_response(body, 502 if result.failed else 200)

    async def send_test(self, request: Request) -> Response:
        """[TEST] copies to {"to": [addresses]}, or to [newsletter] seed_list without it."""
        number = self.number(request)
        to = (await self.body(request)).get("to")
        if to is not None and (not isinstance(to, list) or not to
                               or not all(isinstance(a, str) for a in to)):
            raise HttpError(400, '"to" must be a list of addresses (leave it out to use '
                                 '[newsletter] seed_list)')
        await run_in_threadpool(load_issue, self.deps, number)
        outcomes = await run_in_threadpool(self.deps.send_tests, number, to,
                                           f"api {self.ip(request)}")
        log.event("admin.test", ip=self.ip(request), number=number, copies=len(outcomes))
        body = {"sent": [{"to": o.address, "reply": o.reply} for o in outcomes if o.sent],
                "failed": [{"to": o.address, "error": o.reply} for o in outcomes
                           if not o.sent]}
        return json_response(body, 502 if body["failed"] else 200)

    async def status(self, request: Request) -> Response:
        def run() -> dict[str, Any]:
            view = self.deps.overview()
            return {"last_collect": view.last_collect, "articles": view.articles,
                    "issues": [issue_json(i, c, view.came_back.get(i.number),
                                          self.deps.rate_lines) for i, c in view.issues],
                    "jobs": [{"name": n, "next_run": at}
                             for n, at in self.deps.jobs() or view.jobs],
                    "subscribers": self.deps.store.count_subscribers()}

        return json_response(await run_in_threadpool(run))

    async def list_subscribers(self, request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in SUBSCRIBER_STATUSES:
            raise HttpError(400, f"status must be one of {', '.join(SUBSCRIBER_STATUSES)}")
        limit = _int_param(request, "limit", 100, 1, 1000)
        offset = _int_param(request, "offset", 0, 0, 10**12)

        def run() -> dict[str, Any]:
            subs = self.deps.store.list_subscribers(status=status, limit=limit, offset=offset)
            return {"subscribers": [subscriber_json(s) for s in subs], "limit": limit,
                    "offset": offset, "next_offset": offset + limit if len(subs) == limit
                    else None, "counts": self.deps.store.count_subscribers()}

        return json_response(await run_in_threadpool(run))

    async def add_subscriber(self, request: Request) -> Response:
        data = await self.body(request)
        actor = f"api {self.ip(request)}"
        try:
            code, body = await run_in_threadpool(add_subscriber, self.deps, data, actor,
                                                 consent.HINT_API)
        except consent.ConsentRefused as exc:
            log.event("admin.subscriber_add_refused", ip=self.ip(request),
                      subscriber=exc.subscriber.id, status=exc.subscriber.status)
            return json_response({"error": str(exc), "status": exc.subscriber.status,
                                  "how": 'send "resubscribe": true and a "reason" (who '
                                         'asked, when, how)'}, 409)
        log.event("admin.subscriber_add", ip=self.ip(request), state=body["state"])
        return json_response(body, code)

    def find(self, email: str) -> Subscriber:
        try:  # smtputf8=True: any address that got stored can be found (and removed)
            _address, key = subscriptions.normalise_address(email, smtputf8=True)
        except subscriptions.AddressError as exc:
            raise HttpError(400, f"{email!r}: {exc.reason}") from None
        sub = self.deps.store.get_subscriber_by_key(key)
        if sub is None:
            raise HttpError(404, f"{email}: no such subscriber")
        return sub

    async def get_subscriber(self, request: Request) -> Response:
        """The subscriber's record: status, consent history, bounces and complaints."""
        def run() -> dict[str, Any]:
            sub = self.find(request.path_params["email"])
            store = self.deps.store
            return {**subscriber_json(sub), "hard_bounces": sub.hard_bounces,
                    "consent": [{"at": e.at, "action": e.action, "actor": e.actor,
                                 "reason": e.reason, "previous_status": e.previous_status}
                                for e in store.consent_history(sub.id)],
                    "bounces": [bounce_json(b) for b in
                                store.list_bounces(subscriber_id=sub.id, limit=200)]}

        return json_response(await run_in_threadpool(run))

    async def list_bounces(self, request: Request) -> Response:
        kind = request.query_params.get("kind") or None
        if kind is not None and kind not in BOUNCE_KINDS:
            raise HttpError(400, f"kind must be one of {', '.join(BOUNCE_KINDS)}")
        limit = _int_param(request, "limit", 100, 1, 1000)
        before = _int_param(request, "before", 0, 0, 2**62) or None
        issue = _int_param(request, "issue", 0, 0, 2**31 - 1) or None

        def run() -> dict[str, Any]:
            events = self.deps.store.list_bounces(kind=kind, issue_number=issue, limit=limit,
                                                  before_id=before)
            return {"bounces": [bounce_json(b) for b in events],
                    "next_before": events[-1].id if len(events) == limit else None,
                    "totals": self.deps.store.bounce_totals()}

        return json_response(await run_in_threadpool(run))

    async def remove_subscriber(self, request: Request) -> Response:
        email = request.path_params["email"]

        def run() -> dict[str, Any]:
            sub = self.find(email)
            result = self.deps.store.remove_subscriber(sub.id, datetime.now(UTC))
            return {"email": sub.email, "result": result}

        body = await run_in_threadpool(run)
        log.event("admin.subscriber_remove", ip=self.ip(request), result=body["result"])
        return json_response(body)

    async def import_subscribers(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if ctype not in CSV_TYPES:
            raise HttpError(415, "send the CSV file as the body with Content-Type: text/csv")
        fd, name = tempfile.mkstemp(prefix="newsletter-import-", suffix=".csv")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in capped_stream(request, self.deps.max_import_bytes):
                    await run_in_threadpool(out.write, chunk)  # disk must not stall the loop
            try:
                report = await run_in_threadpool(self.deps.import_subscribers, path,
                                                 actor=f"api {self.ip(request)}")
            except NewsletterError as exc:  # the file as a whole is unusable
                raise HttpError(400, str(exc).replace(str(path), "the CSV body")) from None
        finally:
            path.unlink(missing_ok=True)
        log.event("admin.subscriber_import", ip=self.ip(request), rows=report.rows,
                  added=report.added, invalid=report.invalid)
        return json_response({"rows": report.rows, "added": report.added,
                              "merged": report.merged, "suppressed": report.suppressed,
                              "skipped": report.skipped, "skipped_by": report.skipped_by,
                              "invalid": report.invalid, "summary": report.summary(),
                              "errors": [{"line": n, "reason": r} for n, r in report.errors],
                              "skipped_rows": [{"line": n, "reason": r}
                                               for n, r in report.skipped_rows]})

    async def openapi(self, request: Request) -> Response:
        from newsletter.web.openapi import openapi_document

        return json_response(openapi_document())


def _if_match(request: Request) -> str | None:
    """The version an If-Match header names (the ETag of GET /admin/api/issues/N); None
    without one, or for "*"."""
    match = request.headers.get("if-match", "").strip()
    return match.removeprefix("W/").strip('"') if match and match != "*" else None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise HttpError(400, f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def admin_api_routes(deps: AdminDeps) -> list[BaseRoute]:
    """The /admin/api/ routes; every one needs `Authorization: Bearer <admin token>`."""
    api = _Api(deps)
    table: list[tuple[str, list[str], Handler]] = [
        ("/admin/api/collect", ["POST"], api.collect),
        ("/admin/api/issues", ["GET"], api.list_issues),
        ("/admin/api/issues", ["POST"], api.build),
        ("/admin/api/issues/{number:int}", ["GET"], api.get_issue),
        ("/admin/api/issues/{number:int}", ["PATCH"], api.edit_issue),
        ("/admin/api/issues/{number:int}/history", ["GET"], api.issue_history),
        *((f"/admin/api/issues/{{number:int}}/{verb}", ["POST"], api.transition(verb))
          for verb in ("send", "schedule", "pause", "resume", "cancel", "approve")),
        ("/admin/api/issues/{number:int}/test", ["POST"], api.send_test),
        ("/admin/api/issues/{number:int}/review", ["POST"], api.review),
        ("/admin/api/status", ["GET"], api.status),
        ("/admin/api/subscribers", ["GET"], api.list_subscribers),
        ("/admin/api/subscribers", ["POST"], api.add_subscriber),
        ("/admin/api/subscribers/import", ["POST"], api.import_subscribers),
        ("/admin/api/subscribers/{email}", ["GET"], api.get_subscriber),
        ("/admin/api/subscribers/{email}", ["DELETE"], api.remove_subscriber),
        ("/admin/api/bounces", ["GET"], api.list_bounces),
        ("/admin/api/openapi.json", ["GET"], api.openapi),
    ]
    return [Route(path, api.guarded(handler), methods=methods) for path, methods, handler in table]
