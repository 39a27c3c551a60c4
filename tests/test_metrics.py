"""/metrics in the Prometheus text format: parsed line by line, values checked against the store."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.pipeline import sending
from newsletter.web.metrics import family, render_metrics
from tests.helpers.admin import TOKEN, admin_settings, serve
from tests.helpers.sending import seed

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^(?P<name>{NAME})(?:\{{(?P<labels>{LABEL}(?:,{LABEL})*)\}})? "
                    rf"(?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|Inf|NaN))$")
HELP = re.compile(rf"^# HELP (?P<name>{NAME}) (?P<text>.+)$")
TYPE = re.compile(rf"^# TYPE (?P<name>{NAME}) (?P<kind>counter|gauge|histogram|summary|untyped)$")


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """(family → type, (name, labels) → value); asserts every line is well formed."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helped: set[str] = set()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if m := HELP.match(line):
            assert m["name"] not in helped, f"second HELP for {m['name']}"
            helped.add(m["name"])
        elif m := TYPE.match(line):
            # TYPE comes once per family, after its HELP and before its samples.
            assert m["name"] in helped and m["name"] not in types, line
            types[m["name"]] = m["kind"]
        elif m := SAMPLE.match(line):
            assert m["name"] in types, f"sample before its TYPE: {line}"
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m["labels"] or ""))
            key = (m["name"], labels)
            assert key not in samples, f"duplicate series: {line}"
            samples[key] = float(m["value"])
        else:
            raise AssertionError(f"not an exposition line: {line!r}")
    return types, samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
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
        assert pipeline.build_issue(settings, store, force=True).created  # a second, draft
        with serve(settings, store, tmp_path) as site:
            assert site.anon.get("/metrics").status_code == 401
            r = site.api.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "@" not in r.text  # counts only: no address, no name
        types, samples = parse(r.text)
        assert types == {"newsletter_articles_total": "counter",
                         "newsletter_issues_total": "gauge", "newsletter_deliveries": "gauge",
                         "newsletter_send_rate_per_second": "gauge",
                         "newsletter_last_collect_timestamp_seconds": "gauge",
                         "newsletter_subscribers": "gauge"}
        assert value(samples, "newsletter_articles_total") == 3  # 2 seeded + 1 Markdown
        assert value(samples, "newsletter_issues_total", status="sent") == 1
        assert value(samples, "newsletter_issues_total", status="draft") == 1
        assert value(samples, "newsletter_issues_total", status="cancelled") == 0
        assert value(samples, "newsletter_deliveries", status="sent") == 4
        assert value(samples, "newsletter_deliveries", status="failed") == 0
        assert value(samples, "newsletter_send_rate_per_second") == 4 / 60
        last = store.last_collect()
        assert last is not None
        assert value(samples, "newsletter_last_collect_timestamp_seconds") == \
            last["finished_at"].timestamp()
        assert value(samples, "newsletter_subscribers", status="active") == 4
        assert value(samples, "newsletter_subscribers", status="unsubscribed") == 1
        # A minute later nothing was sent in the window: the rate falls to zero.
        later = render_metrics(store, now=datetime.now(UTC) + timedelta(seconds=61))
        assert value(parse(later)[1], "newsletter_send_rate_per_second") == 0
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
    lines = family("x", "gauge", "Help.", [({"a": 'q"b\\s\nn'}, 1.5), ({}, 2)])
    assert lines == ["# HELP x Help.", "# TYPE x gauge", 'x{a="q\\"b\\\\s\\nn"} 1.5', "x 2"]
    _types, samples = parse("\n".join(lines) + "\n")
    assert samples[("x", frozenset())] == 2
