"""A build as every entry point asks for one: in review mode, the draft mailed to the editors."""

from __future__ import annotations

from datetime import datetime

from newsletter.config import Settings
from newsletter.pipeline.issues import BuildResult
from newsletter.pipeline.issues import build_issue as compose_issue
from newsletter.pipeline.review import request_review
from newsletter.store.database import Store


def build_issue(settings: Settings, store: Store, *, force: bool = False,
                now: datetime | None = None, actor: str = "scheduler") -> BuildResult:
    """pipeline/issues.py's build, then, in review mode ([newsletter] review), the draft
    mailed to the editors unless they already have this version: whoever builds (the cron,
    `issue build`, the dashboard, the API), the editors hear of it, and its reminder
    follows. The message says so: "…; review requested from 2 editors"."""
    result = compose_issue(settings, store, force=force, now=now, actor=actor)
    draft = result.issue
    if not settings.newsletter.review or draft is None or draft.status != "draft":
        return result
    asked = request_review(settings, store, draft.number, actor=actor, now=now)
    result.message += f"; {asked.line()}"
    return result
