"""What the admin API, dashboard and /metrics share: their dependencies, bearer auth, JSON."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from newsletter import log
from newsletter.audience.rates import IssueRates
from newsletter.config import MIN_ADMIN_TOKEN_CHARS
from newsletter.web.limits import SlidingWindow, rate_key
from newsletter.web.requests import ClientAddress

if TYPE_CHECKING:
    from newsletter.audience.subscribers_csv import ImportReport
    from newsletter.models import BounceEvent, Issue, Subscriber
    from newsletter.pipeline.control import Overview
    from newsletter.pipeline.editing import EditResult, HistoryEntry
    from newsletter.pipeline.issues import BuildResult
    from newsletter.pipeline.review import CopyOutcome
    from newsletter.store.database import Store

Jobs = list[tuple[str, datetime | None]]
MIN_TOKEN_CHARS = MIN_ADMIN_TOKEN_CHARS  # config refuses shorter; stay disabled anyway
DISABLED = ("the admin API and dashboard are disabled: set NEWSLETTER_SECRETS_ADMIN_TOKEN "
            f"(at least {MIN_TOKEN_CHARS} characters) to enable them")
NO_STORE = {"cache-control": "no-store", "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer"}
_MAX_ISSUE_NUMBER = 2**31 - 1  # larger path numbers would overflow the database integer


def _no_jobs() -> Jobs:
    return []


class SessionStore(Protocol):
    """Where dashboard sessions live (store/sessions.py's SessionQueries, or the Store): in
    the database, so logout and expiry hold in every web process and after a restart."""

    def create_session(self, session_id: str, *, now: datetime, expires_at: datetime,
                       ip: str = "", user_agent: str = "") -> None: ...

    def session_alive(self, session_id: str, now: datetime) -> bool: ...

    def revoke_session(self, session_id: str, now: datetime) -> bool: ...

    def revoke_all_sessions(self, now: datetime) -> int: ...

    def count_sessions(self, now: datetime) -> int: ...


@dataclass(frozen=True)
class AdminDeps:
    """What the admin API, dashboard and /metrics need, as plain callables.

    pipeline.webapp wires them to the pipeline; nothing here knows the settings.
    """

    token: str = field(repr=False)  # never in a repr, so never in a log line by accident
    store: Store
    collect_now: Callable[[], dict[str, Any]]  # {"new", "updated", "errors": [...], ...}
    build_issue: Callable[..., BuildResult]  # (force, actor=who)
    # The last argument of these is who acts ("api <ip>", "dashboard <ip>"), for the history.
    # (number, actor, new_subscribers=False): starts in the background and returns at once,
    # with the rows it queued (None when the sender does not say)
    send_issue: Callable[..., int | None]
    schedule_issue: Callable[[int, datetime, str], Any]  # these four raise NewsletterError
    pause_issue: Callable[[int, str], Any]
    resume_issue: Callable[[int, str], Any]
    cancel_issue: Callable[[int, str], Any]
    overview: Callable[[], Overview]
    preview_html: Callable[[int], str]  # the issue as a reader sees it, sample values filled
    import_subscribers: Callable[..., ImportReport]  # (path, actor=who)
    sessions: SessionStore  # dashboard logins, shared by every process over one database
    # (number, changes, actor): raises EditRefused (400) or IssueLocked (409)
    edit_issue: Callable[[int, dict[str, Any], str], EditResult]
    issue_history: Callable[[int], list[HistoryEntry]]  # oldest first
    # (number, actor): the issue after; sent now (started in the background) or scheduled
    approve_issue: Callable[[int, str], Issue]
    # (number, addresses or None for the seed list, actor): one [TEST] copy each
    send_tests: Callable[[int, list[str] | None, str], list[CopyOutcome]]
    # (number, actor): the review mail again (review mode); .line() says what happened
    review_issue: Callable[[int, str], Any] | None = None
    jobs: Callable[[], Jobs] = _no_jobs  # (job name, next run) of the schedule
    # (the scheduler's stored next run of the issue cron, or None) → "Next issue: Monday 7
    # December, 07:00 UTC", or what else the home page says of it
    next_issue: Callable[[datetime | None], str] = lambda cron_next: ""
    # (number of a sent issue) → how many joined since: whom sending it again reaches;
    # raises NewsletterError when it cannot be sent again. None: the dashboard offers none.
    newcomers: Callable[[int], int] | None = None
    metrics: Callable[[], str] | None = None  # None: metrics.py computes them from the store
    send_confirmation: Callable[[Subscriber], None] | None = None  # double opt-in mail
    publication_name: str = "Newsletter"
    timezone: str = "UTC"  # [schedule] timezone: the dashboard's example send time
    smtputf8: bool = False
    max_body_bytes: int = 64 * 1024
    # An issue's edit (the editor page's save, PATCH /admin/api/issues/N): room for the
    # longest intro the edit accepts, however its characters are escaped, so an intro over
    # its own limit is told that limit and not the body's.
    max_edit_bytes: int = 256 * 1024
    max_import_bytes: int = 50 * 1024 * 1024
    session_hours: float = 12.0
    auth_failures_per_minute: int = 20
    templates_dir: Path | None = None  # [newsletter] templates_dir: overrides admin/*.html
    # [bounces] complaint_rate_warning and hard_bounce_rate_warning.
    rate_lines: tuple[float, float] = (0.001, 0.02)
    # [server] forwarded_allow_ips: whose X-Forwarded-For names the visitor.
    client_ip: ClientAddress = field(default_factory=ClientAddress.from_setting)
    # (number, token) → the editor a valid editor link of that issue was mailed to, or None
    editor_of: Callable[[int, str], str | None] = lambda number, token: None
    review: bool = False  # [newsletter] review: the dashboard offers Approve, not Send
    untitled_section: str = "More"  # [newsletter] untitled_section: articles without one
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


def issue_json(issue: Issue, counts: dict[str, int], rates: IssueRates | None = None,
               lines: tuple[float, float] = (0.001, 0.02)) -> dict[str, Any]:
    data = {"number": issue.number, "status": issue.status, "subject": issue.subject,
            "preheader": issue.preheader, "created": issue.created, "send_at": issue.send_at,
            "window_start": issue.window_start, "window_end": issue.window_end,
            "counts": counts, "total": sum(counts.values()), "done": done_of(counts)}
    if rates is not None:
        data["came_back"] = came_back_json(rates, lines)
    return data


def came_back_json(rates: IssueRates, lines: tuple[float, float]) -> dict[str, Any]:
    """An issue's bounces and complaints, their rates of messages sent, and any warning."""
    return {"hard": rates.hard, "soft": rates.soft, "complaints": rates.complaints,
            "hard_bounce_rate": round(rates.hard_rate, 6),
            "complaint_rate": round(rates.complaint_rate, 6),
            "warnings": rates.warnings(*lines)}


def bounce_json(event: BounceEvent) -> dict[str, Any]:
    return {"id": event.id, "email": event.email, "subscriber_id": event.subscriber_id,
            "issue": event.issue_number, "kind": event.kind, "status": event.status,
            "diagnostic": event.diagnostic, "source": event.source,
            "recipient": event.recipient, "received_at": event.received_at}


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
    counts = deps.store.delivery_counts(issue.id)
    rates = IssueRates.of(issue.number, counts.get("sent", 0), deps.store.bounce_counts(issue.id))
    return issue_json(issue, counts, rates, deps.rate_lines)


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
