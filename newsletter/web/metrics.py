"""Prometheus text exposition at /metrics: counts from the store, no personal data, bearer token.

The service listens on one port that also faces readers, so /metrics is not left open as it
would be on an internal port: scrape it with the admin token (Prometheus scrape config
`authorization: {type: Bearer, credentials_file: ...}`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from newsletter.web.admin_http import NO_STORE, AdminDeps, HttpError, check_bearer, json_response

if TYPE_CHECKING:
    from newsletter.store.database import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RATE_WINDOW = timedelta(seconds=60)

Sample = tuple[dict[str, str], float]


def _escape(value: str) -> str:
    # The exposition format's label value escapes: backslash, double quote, line feed.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    """HELP and TYPE lines, then one line per sample: name{label="value",...} number."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{inner}}} {_number(value)}" if inner else
                     f"{name} {_number(value)}")
    return lines


def render_metrics(store: Store, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    recent = store.sent_between(now - RATE_WINDOW, now)
    last = store.last_collect()
    last_at = last["finished_at"].timestamp() if last else 0.0
    # Every status present, so a series never vanishes.
    issues = store.count_issues()
    deliveries = store.delivery_totals()
    subscribers = store.count_subscribers()
    lines = [
        *family("newsletter_articles_total", "counter", "Articles in the store.",
                [({}, store.count_articles())]),
        # A gauge despite the _total name: issues move from one status to another.
        *family("newsletter_issues_total", "gauge", "Issues by status.",
                [({"status": k}, v) for k, v in issues.items()]),
        *family("newsletter_deliveries", "gauge",
                "Delivery ledger rows by status, summed over every issue.",
                [({"status": k}, v) for k, v in deliveries.items()]),
        *family("newsletter_send_rate_per_second", "gauge",
                "Messages sent in the last 60 seconds, divided by 60.",
                [({}, recent / RATE_WINDOW.total_seconds())]),
        *family("newsletter_last_collect_timestamp_seconds", "gauge",
                "Unix time the last collect run finished (0: never).", [({}, last_at)]),
        *family("newsletter_subscribers", "gauge", "Subscribers by status.",
                [({"status": k}, v) for k, v in subscribers.items()]),
    ]
    return "\n".join(lines) + "\n"


def metrics_routes(deps: AdminDeps) -> list[BaseRoute]:
    """GET /metrics, behind the admin bearer token like the admin API."""

    async def endpoint(request: Request) -> Response:
        try:
            check_bearer(deps, request)
        except HttpError as exc:
            return json_response({"error": exc.text}, exc.code, exc.headers)
        text = await run_in_threadpool(deps.metrics or (lambda: render_metrics(deps.store)))
        return Response(text, headers=NO_STORE, media_type=CONTENT_TYPE)

    return [Route("/metrics", endpoint, methods=["GET"], name="metrics")]
