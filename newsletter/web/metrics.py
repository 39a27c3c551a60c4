"""Prometheus metrics at /metrics: prometheus_client over the store's counts, bearer token."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from newsletter.web.admin_http import NO_STORE, AdminDeps, HttpError, check_bearer, json_response

if TYPE_CHECKING:
    from newsletter.store.database import Store

# The service listens on one port that also faces readers, so /metrics is not left open as it
# would be on an internal port: scrape it with the admin token (docs/metrics.md).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format generate_latest writes
RATE_WINDOW = timedelta(seconds=60)
# Per-issue series for this many latest issues: bounded label values, and the issues whose
# complaint rate a sender still has to answer for.
RECENT_ISSUES = 5


@dataclass(frozen=True)
class MetricsSnapshot:
    """The counts /metrics shows, read in one go; every known status present, 0 or more."""

    articles: int
    issues: dict[str, int]
    deliveries: dict[str, int]
    sent_recently: int  # deliveries sent within RATE_WINDOW before the snapshot
    last_collect_at: float  # Unix time the last collect finished; 0: never
    subscribers: dict[str, int]
    bounces: dict[str, int] = field(default_factory=dict)  # events by kind, every issue
    # The latest sent (or sending) issues: number → (messages sent, {kind: events}).
    recent_issues: dict[int, tuple[int, dict[str, int]]] = field(default_factory=dict)


def metrics_snapshot(store: Store, now: datetime | None = None) -> MetricsSnapshot:
    """The counts, through the store's own queries: the one place here that reads it. The
    delivery counts and the send rate come from what the ledger's triggers and settle keep
    (store/counting.py), never from the ledger's rows: a scrape costs the same however long
    the ledger grows."""
    now = now or datetime.now(UTC)
    last = store.last_collect()
    recent = [i for i in store.list_issues(limit=RECENT_ISSUES, statuses=("sending", "sent"),
                                           with_articles=False) if i.id is not None]
    ids = [i.id for i in recent if i.id is not None]
    bounced, counted = store.bounce_counts_by_issue(ids), store.delivery_counts_by_issue(ids)
    return MetricsSnapshot(
        bounces=store.bounce_totals(),
        recent_issues={i.number: (counted[i.id]["sent"], bounced[i.id])
                       for i in recent if i.id is not None},
        articles=store.count_articles(),
        issues=store.count_issues(),  # every status present, so a series never vanishes
        deliveries=store.delivery_totals(),
        sent_recently=store.sent_between(now - RATE_WINDOW, now),
        last_collect_at=last["finished_at"].timestamp() if last else 0.0,
        subscribers=store.count_subscribers())


def _by_label(family: GaugeMetricFamily, counts: dict[str, int]) -> GaugeMetricFamily:
    for status, n in counts.items():
        family.add_metric([status], n)
    return family


class StoreCollector(Collector):
    """A custom collector: each scrape takes a fresh snapshot, nothing is kept in between.

    Counts of rows in a status go up and down (an issue moves from draft to sent), so they
    are gauges without _total; articles are never removed, so that one is a counter.
    """

    def __init__(self, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        yield CounterMetricFamily("newsletter_articles", "Articles collected into the store.",
                                  value=snap.articles)
        yield _by_label(GaugeMetricFamily("newsletter_issues", "Issues by status.",
                                          labels=["status"]), snap.issues)
        yield _by_label(GaugeMetricFamily(
            "newsletter_deliveries", "Delivery ledger rows by status, summed over every issue.",
            labels=["status"]), snap.deliveries)
        yield GaugeMetricFamily(
            "newsletter_messages_sent_per_second",
            f"Messages sent in the last {int(RATE_WINDOW.total_seconds())} seconds, per second.",
            value=snap.sent_recently / RATE_WINDOW.total_seconds())
        yield GaugeMetricFamily("newsletter_last_collect_timestamp_seconds",
                                "Unix time the last collect run finished (0: never).",
                                value=snap.last_collect_at)
        yield _by_label(GaugeMetricFamily("newsletter_subscribers", "Subscribers by status.",
                                          labels=["status"]), snap.subscribers)
        yield _by_label(GaugeMetricFamily(
            "newsletter_bounce_events", "Bounces and complaints recorded, by kind, every issue.",
            labels=["kind"]), snap.bounces)
        sent = GaugeMetricFamily("newsletter_issue_messages_sent",
                                 "Messages sent of each recent issue.", labels=["issue"])
        events = GaugeMetricFamily("newsletter_issue_bounce_events",
                                   "Bounces and complaints of each recent issue, by kind.",
                                   labels=["issue", "kind"])
        ratio = GaugeMetricFamily("newsletter_issue_bounce_ratio",
                                  "Bounces and complaints of each recent issue per message "
                                  "sent, by kind (alert on complaint >= 0.001).",
                                  labels=["issue", "kind"])
        for number, (n_sent, kinds) in sorted(snap.recent_issues.items()):
            sent.add_metric([str(number)], n_sent)
            for kind, n in kinds.items():
                events.add_metric([str(number), kind], n)
                ratio.add_metric([str(number), kind], n / n_sent if n_sent else 0.0)
        yield sent
        yield events
        yield ratio


def exposition(snapshot: Callable[[], MetricsSnapshot]) -> str:
    """The text format for one snapshot, from a registry of its own (not the global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(snapshot))
    return generate_latest(registry).decode("utf-8")


def render_metrics(store: Store, now: datetime | None = None) -> str:
    return exposition(lambda: metrics_snapshot(store, now))


def metrics_routes(deps: AdminDeps) -> list[BaseRoute]:
    """GET /metrics, behind the admin bearer token like the admin API."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(lambda: metrics_snapshot(deps.store)))
    # The answering process's own memory, CPU and open files (from /proc; nothing where
    # there is none): what an operator alerts on to see a service grow over the months.
    ProcessCollector(registry=registry)

    def text() -> str:
        if deps.metrics is not None:  # an embedding application's own exposition
            return deps.metrics()
        return generate_latest(registry).decode("utf-8")

    async def endpoint(request: Request) -> Response:
        try:
            check_bearer(deps, request)
        except HttpError as exc:
            return json_response({"error": exc.text}, exc.code, exc.headers)
        return Response(await run_in_threadpool(text), headers=NO_STORE,
                        media_type=CONTENT_TYPE)

    return [Route("/metrics", endpoint, methods=["GET"], name="metrics")]
