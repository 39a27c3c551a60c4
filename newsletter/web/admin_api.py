"""Admin JSON API under /admin/api/: bearer-token auth over issue, schedule and subscriber work."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from newsletter import log
from newsletter.audience import consent, subscriptions
from newsletter.config import MIN_ADMIN_TOKEN_CHARS
from newsletter.errors import BadValue, NewsletterError
from newsletter.store.schema import SUBSCRIBER_STATUSES
from newsletter.web.admin_add import add_subscriber
from newsletter.web.limits import SlidingWindow, rate_key
from newsletter.web.requests import BodyTooLarge, ClientAddress, capped_stream, read_capped

if TYPE_CHECKING:
    from newsletter.audience.subscribers_csv import ImportReport
    from newsletter.models import Issue, Subscriber
    from newsletter.pipeline.control import Overview
    from newsletter.pipeline.issues import BuildResult
    from newsletter.store.database import Store

Jobs = list[tuple[str, datetime | None]]
MIN_TOKEN_CHARS = MIN_ADMIN_TOKEN_CHARS  # config refuses shorter; stay disabled anyway
DISABLED = ("the admin API and dashboard are disabled: set NEWSLETTER_SECRETS_ADMIN_TOKEN "
            f"(at least {MIN_TOKEN_CHARS} characters) to enable them")
NO_STORE = {"cache-control": "no-store", "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer"}
CSV_TYPES = ("text/csv", "application/csv")
_MAX_ISSUE_NUMBER = 2**31 - 1  # larger path numbers would overflow the database integer


def _no_jobs() -> Jobs:
    return []


@dataclass(frozen=True)
class AdminDeps:
    """What the admin API, dashboard and /metrics need, as plain callables.

    pipeline.webapp wires them to the pipeline; nothing here knows the settings.
    """

    token: str = field(repr=False)  # never in a repr, so never in a log line by accident
    store: Store
    collect_now: Callable[[], dict[str, Any]]  # {"new", "updated", "errors": [...], ...}
    build_issue: Callable[[bool], BuildResult]  # (force)
    send_issue: Callable[[int], None]  # starts in the background and returns at once
    schedule_issue: Callable[[int, datetime], Any]  # these four raise NewsletterError
    pause_issue: Callable[[int], Any]
    resume_issue: Callable[[int], Any]
    cancel_issue: Callable[[int], Any]
    overview: Callable[[], Overview]
    preview_html: Callable[[int], str]  # the issue as a reader sees it, sample values filled
    import_subscribers: Callable[..., ImportReport]  # (path, actor=who)
    jobs: Callable[[], Jobs] = _no_jobs  # (job name, next run) of the schedule
    next_issue: Callable[[], str] = lambda: ""  # "Next issue: Monday 7 December, 07:00 UTC"
    metrics: Callable[[], str] | None = None  # None: metrics.py computes them from the store
    send_confirmation: Callable[[Subscriber], None] | None = None  # double opt-in mail
    publication_name: str = "Newsletter"
    timezone: str = "UTC"  # [schedule] timezone: the dashboard's example send time
    smtputf8: bool = False
    max_body_bytes: int = 64 * 1024
    max_import_bytes: int = 50 * 1024 * 1024
    session_hours: float = 12.0
    auth_failures_per_minute: int = 20
    templates_dir: Path | None = None  # [newsletter] templates_dir: overrides admin/*.html
    # [server] forwarded_allow_ips: whose X-Forwarded-For names the visitor.
    client_ip: ClientAddress = field(default_factory=ClientAddress.from_setting)
    failures: SlidingWindow = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Wrong tokens per client address (an IPv6 /64 as one) in a sliding minute.
        object.__setattr__(self, "failures", SlidingWindow(self.auth_failures_per_minute, 60,
                                                           max_keys=10_000))

    @property
    def enabled(self) -> bool:
        return len(self.token) >= MIN_TOKEN_CHARS

    def token_ok(self, candidate: str) -> bool:
        # Digests of both, compared in constant time: neither content nor length leaks.
        def digest(text: str) -> bytes:
            return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

        return self.enabled and hmac.compare_digest(digest(candidate), digest(self.token))


# -- helpers shared with the dashboard and /metrics ---------------------------------------


class HttpError(Exception):
    def __init__(self, code: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.code, self.text, self.headers = code, text, headers or {}


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, default=_default, ensure_ascii=False).encode("utf-8")
    return Response(body, status, headers={**NO_STORE, **(headers or {})},
                    media_type="application/json")


def check_bearer(deps: AdminDeps, request: Request) -> None:
    """Raise HttpError unless the request carries the admin token as a bearer token."""
    if not deps.enabled:
        raise HttpError(403, DISABLED)
    ip = deps.client_ip(request)
    wait = deps.failures.blocked(rate_key(ip))
    if wait:
        raise HttpError(429, "too many wrong tokens from your address; try again later",
                        {"retry-after": str(int(wait + 0.999))})
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    challenge = 'Bearer realm="newsletter-admin"'
    if scheme.lower() != "bearer" or not value.strip():
        raise HttpError(401, "missing bearer token: send the header "
                        "'Authorization: Bearer <NEWSLETTER_SECRETS_ADMIN_TOKEN>'",
                        {"www-authenticate": challenge})
    if not deps.token_ok(value.strip()):
        deps.failures.record(rate_key(ip))
        log.event("admin.auth_refused", ip=ip, path=request.url.path)
        raise HttpError(401, "wrong bearer token",
                        {"www-authenticate": challenge + ', error="invalid_token"'})


def done_of(counts: dict[str, int]) -> int:
    """Rows settled for good; deferred ones will be tried again, so they are not done."""
    return counts.get("sent", 0) + counts.get("failed", 0) + counts.get("skipped", 0)


def issue_json(issue: Issue, counts: dict[str, int]) -> dict[str, Any]:
    return {"number": issue.number, "status": issue.status, "subject": issue.subject,
            "preheader": issue.preheader, "created": issue.created, "send_at": issue.send_at,
            "window_start": issue.window_start, "window_end": issue.window_end,
            "counts": counts, "total": sum(counts.values()), "done": done_of(counts)}


def subscriber_json(sub: Subscriber) -> dict[str, Any]:
    return {"id": sub.id, "email": sub.email, "name": sub.name, "status": sub.status,
            "sections": list(sub.sections), "consent_at": sub.consent_at,
            "consent_method": sub.consent_method, "confirmed_at": sub.confirmed_at,
            "unsubscribed_at": sub.unsubscribed_at, "created_at": sub.created_at}


def load_issue(deps: AdminDeps, number: int, *, with_articles: bool = False) -> Issue:
    found = None if number > _MAX_ISSUE_NUMBER else deps.store.get_issue(
        number, with_articles=with_articles)
    if found is None:
        raise HttpError(404, f"issue {number}: no such issue")
    return found


def counted(deps: AdminDeps, issue: Issue) -> dict[str, Any]:
    assert issue.id is not None
    return issue_json(issue, deps.store.delivery_counts(issue.id))


def parse_when(value: Any) -> datetime:
    if not isinstance(value, str):
        raise HttpError(400, 'give "at" as an ISO 8601 time with offset, '
                             'e.g. "2026-11-27T09:00:00+01:00"')
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise HttpError(400, f"{value!r} is not an ISO 8601 time") from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise HttpError(400, f"{value!r} has no UTC offset: add one, e.g. +01:00 or Z")
    return at


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

    async def body(self, request: Request) -> dict[str, Any]:
        raw = await read_capped(request, self.deps.max_body_bytes)
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
        result = await run_in_threadpool(self.deps.build_issue, force)
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

    async def get_issue(self, request: Request) -> Response:
        def run() -> dict[str, Any]:
            issue = load_issue(self.deps, self.number(request), with_articles=True)
            data = counted(self.deps, issue)
            data["sections"] = [{"name": s.name, "articles": [
                {"title": a.title, "link": a.link, "published": a.published}
                for a in s.articles]} for s in issue.sections]
            data["preview_url"] = f"/admin/issues/{issue.number}/preview"
            return data

        return json_response(await run_in_threadpool(run))

    def transition(self, verb: str) -> Handler:
        async def handler(request: Request) -> Response:
            number = self.number(request)
            args: tuple[Any, ...] = (number,)
            if verb == "schedule":
                args += (parse_when((await self.body(request)).get("at")),)
            await run_in_threadpool(load_issue, self.deps, number)
            # send_issue returns at once, the delivery goes on: 202, poll the issue.
            await run_in_threadpool(getattr(self.deps, f"{verb}_issue"), *args)
            log.event(f"admin.{verb}", ip=self.ip(request), number=number)
            issue = await run_in_threadpool(load_issue, self.deps, number)
            return json_response(await run_in_threadpool(counted, self.deps, issue),
                                 202 if verb == "send" else 200)

        return handler

    async def status(self, request: Request) -> Response:
        def run() -> dict[str, Any]:
            view = self.deps.overview()
            return {"last_collect": view.last_collect, "articles": view.articles,
                    "issues": [issue_json(i, c) for i, c in view.issues],
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

    async def remove_subscriber(self, request: Request) -> Response:
        email = request.path_params["email"]

        def run() -> dict[str, Any]:
            try:  # smtputf8=True: removing must work for any address that got stored
                _address, key = subscriptions.normalise_address(email, smtputf8=True)
            except subscriptions.AddressError as exc:
                raise HttpError(400, f"{email!r}: {exc.reason}") from None
            sub = self.deps.store.get_subscriber_by_key(key)
            if sub is None:
                raise HttpError(404, f"{email}: no such subscriber")
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
        *((f"/admin/api/issues/{{number:int}}/{verb}", ["POST"], api.transition(verb))
          for verb in ("send", "schedule", "pause", "resume", "cancel")),
        ("/admin/api/status", ["GET"], api.status),
        ("/admin/api/subscribers", ["GET"], api.list_subscribers),
        ("/admin/api/subscribers", ["POST"], api.add_subscriber),
        ("/admin/api/subscribers/import", ["POST"], api.import_subscribers),
        ("/admin/api/subscribers/{email}", ["DELETE"], api.remove_subscriber),
        ("/admin/api/openapi.json", ["GET"], api.openapi),
    ]
    return [Route(path, api.guarded(handler), methods=methods) for path, methods, handler in table]
