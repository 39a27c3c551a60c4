"""/metrics scraped over HTTP, read by prometheus_client's parser, checked against the store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.models import BounceNotice, BouncePolicy
from newsletter.pipeline import sending
from newsletter.web.metrics import MetricsSnapshot, exposition, render_metrics
from tests.helpers.admin import TOKEN, admin_settings, serve
from tests.helpers.sending import seed

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """(family → type, (sample name, labels) → value), read by prometheus_client's parser."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in types, f"second family {family.name}"
        assert family.documentation, f"{family.name} has no HELP"
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series: {key}"
            samples[key] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_over_http(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        seed(store, 4, inactive=1)
        report = pipeline.collect(settings, store)
        assert report.new == 1
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None
        sending.start_sending(settings, store, issue)
        sending.run_worker(settings, store, issue)
        assert issue.id is not None
        subs = store.list_subscribers(status="active", limit=2)
        store.record_bounces([BounceNotice(subs[0].id, issue.id, "complaint", "", "abuse",
                                           "file", subs[0].email, "k1"),
                              BounceNotice(subs[1].id, issue.id, "hard", "5.1.1", "gone",
                                           "file", subs[1].email, "k2")],
                             datetime.now(UTC), BouncePolicy())
        assert pipeline.build_issue(settings, store, force=True).created  # a second, draft
        with serve(settings, store, tmp_path) as site:
            assert site.anon.get("/metrics").status_code == 401
            r = site.api.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "@" not in r.text  # counts only: no address, no name
        types, samples = parse(r.text)
        # The answering process's own: memory to alert on over months, its open files.
        process = {k: v for k, v in types.items() if k.startswith("process_")}
        assert {"process_resident_memory_bytes", "process_open_fds"} <= set(process)
        assert 20 * 2**20 < value(samples, "process_resident_memory_bytes") < 8 * 2**30
        assert value(samples, "process_open_fds") > 0
        types = {k: v for k, v in types.items() if k not in process}
        # Counters end in _total (the parser names their family without it), gauges never.
        assert types == {"newsletter_articles": "counter",
                         "newsletter_issues": "gauge", "newsletter_deliveries": "gauge",
                         "newsletter_messages_sent_per_second": "gauge",
                         "newsletter_last_collect_timestamp_seconds": "gauge",
                         "newsletter_subscribers": "gauge",
                         "newsletter_bounce_events": "gauge",
                         "newsletter_issue_messages_sent": "gauge",
                         "newsletter_issue_bounce_events": "gauge",
                         "newsletter_issue_bounce_ratio": "gauge"}
        assert value(samples, "newsletter_articles_total") == 3  # 2 seeded + 1 Markdown
        assert value(samples, "newsletter_issues", status="sent") == 1
        assert value(samples, "newsletter_issues", status="draft") == 1
        assert value(samples, "newsletter_issues", status="cancelled") == 0
        assert value(samples, "newsletter_deliveries", status="sent") == 4
        assert value(samples, "newsletter_deliveries", status="failed") == 0
        assert value(samples, "newsletter_messages_sent_per_second") == 4 / 60
        last = store.last_collect()
        assert last is not None
        assert value(samples, "newsletter_last_collect_timestamp_seconds") == \
            last["finished_at"].timestamp()
        assert value(samples, "newsletter_subscribers", status="active") == 2  # 2 came back
        assert value(samples, "newsletter_subscribers", status="unsubscribed") == 1
        # What came back: totals, and per recent issue the events and their share of sent.
        assert value(samples, "newsletter_bounce_events", kind="hard") == 1
        assert value(samples, "newsletter_bounce_events", kind="soft") == 0
        n = str(issue.number)
        assert value(samples, "newsletter_issue_messages_sent", issue=n) == 4
        assert value(samples, "newsletter_issue_bounce_events", issue=n, kind="complaint") == 1
        assert value(samples, "newsletter_issue_bounce_ratio", issue=n, kind="complaint") == 0.25
        assert value(samples, "newsletter_issue_bounce_ratio", issue=n, kind="soft") == 0
        assert value(samples, "newsletter_subscribers", status="complained") == 1
        assert value(samples, "newsletter_subscribers", status="bounced") == 1
        # A minute later nothing was sent in the window: the rate falls to zero.
        later = render_metrics(store, now=datetime.now(UTC) + timedelta(seconds=61))
        assert value(parse(later)[1], "newsletter_messages_sent_per_second") == 0
    finally:
        store.close()


def test_empty_store_and_override(make_settings: Callable[..., Settings],
                                  tmp_path: Path) -> None:
    settings = admin_settings(make_settings, tmp_path)
    store = pipeline.open_store(settings)
    try:
        _types, samples = parse(render_metrics(store))
        assert value(samples, "newsletter_last_collect_timestamp_seconds") == 0
        assert value(samples, "newsletter_deliveries", status="queued") == 0
        assert value(samples, "newsletter_articles_total") == 0
        with serve(settings, store, tmp_path, metrics=lambda: "custom 1\n") as site:
            assert site.api.get("/metrics").text == "custom 1\n"
            assert site.anon.get("/metrics",
                                 headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
    finally:
        store.close()


def test_label_values_are_escaped() -> None:
    odd = 'q"b\\s\nn'
    snapshot = MetricsSnapshot(articles=2, issues={odd: 1}, deliveries={}, sent_recently=0,
                               last_collect_at=0.0, subscribers={})
    text = exposition(lambda: snapshot)
    assert 'newsletter_issues{status="q\\"b\\\\s\\nn"} 1.0' in text
    _types, samples = parse(text)
    assert value(samples, "newsletter_issues", status=odd) == 1
    assert value(samples, "newsletter_articles_total") == 2


def test_names_follow_prometheus_rules(make_settings: Callable[..., Settings],
                                       tmp_path: Path) -> None:
    store = pipeline.open_store(admin_settings(make_settings, tmp_path))
    try:
        text = render_metrics(store)
    finally:
        store.close()
    families = list(text_string_to_metric_families(text))
    assert families and all(f.name.startswith("newsletter_") for f in families)
    for family in families:
        # A gauge named *_total would read as a counter to rate(); counters carry it.
        assert not family.name.endswith("_total"), family.name
        if family.type == "counter":
            assert all(s.name == family.name + "_total" for s in family.samples)
        else:
            assert family.type == "gauge" and all(s.name == family.name for s in family.samples)
    assert "newsletter_issues_total" not in text and "send_rate" not in text
