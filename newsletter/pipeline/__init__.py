"""The one place that wires sources, store, renderers and transports; entry points call it."""

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
                                            build_issue,
                                            issue_rules,
                                            masthead,
                                            render_into,
                                            renderer,
                                            write_preview,
)
from newsletter.pipeline.webapp import web_app

__all__ = ["BuildResult", "CollectReport", "archive_url", "build_issue", "collect", "feed_meta",
           "issue_rules", "masthead", "now_utc", "open_store", "publish_feeds", "render_into",
           "renderer", "web_app", "write_preview"]
