"""The one place that wires sources, store, renderers and transports; entry points call it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from newsletter.pipeline.building import build_issue
    from newsletter.pipeline.collecting import (
        CollectReport,
        collect,
        feed_meta,
        now_utc,
        open_store,
        publish_feeds,
    )
    from newsletter.pipeline.issues import (
        BuildResult,
        archive_url,
        issue_rules,
        masthead,
        render_into,
        renderer,
        write_preview,
    )
    from newsletter.pipeline.publishing import collect_and_publish, publish, publish_site
    from newsletter.pipeline.webapp import web_app

# Loaded on first use (PEP 562): a delivery worker process needs none of the collectors,
# renderers or web modules, and importing them all cost it about a second of CPU at start.
_WHERE = {
    **dict.fromkeys(("CollectReport", "collect", "feed_meta", "now_utc", "open_store",
                     "publish_feeds"), "collecting"),
    **dict.fromkeys(("BuildResult", "archive_url", "issue_rules", "masthead", "render_into",
                     "renderer", "write_preview"), "issues"),
    "build_issue": "building",  # in review mode, the editors are mailed too
    **dict.fromkeys(("collect_and_publish", "publish", "publish_site"), "publishing"),
    "web_app": "webapp",
}

__all__ = ["BuildResult", "CollectReport", "archive_url", "build_issue", "collect",
           "collect_and_publish", "feed_meta", "issue_rules", "masthead", "now_utc",
           "open_store", "publish", "publish_feeds", "publish_site", "render_into", "renderer",
           "web_app", "write_preview"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
