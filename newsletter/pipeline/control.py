"""Operator controls on an issue: schedule, pause, resume, cancel; and the status overview."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from newsletter import log
from newsletter.audience.rates import IssueRates
from newsletter.errors import BadValue, NewsletterError
from newsletter.models import Issue, IssueEventDraft
from newsletter.pipeline.collecting import now_utc
from newsletter.store.database import Store


def _issue(store: Store, number: int) -> Issue:
    found = store.get_issue(number, with_articles=False)
    if found is None:
        raise NewsletterError(f"issue {number}: no such issue (see `newsletter issue list`)")
    return found


# Who acted, as the history names them: "cli <user>", "api <ip>", "dashboard <ip>",
# "scheduler"; a caller that says nothing is recorded as this.
UNKNOWN_ACTOR = "unknown"


def _move(store: Store, number: int, to: str, allowed: tuple[str, ...], verb: str,
          actor: str, **kw: Any) -> Issue:
    issue = _issue(store, number)
    now = now_utc()
    if issue.status not in allowed or not store.set_issue_status(
            number, to, now, expect=allowed, **kw):
        raise NewsletterError(f"issue {number} is {issue.status}: cannot {verb} it "
                              f"(only when {' or '.join(allowed)})")
    detail: dict[str, object] = {"status": {"from": issue.status, "to": to}}
    if "send_at" in kw:
        detail["send_at"] = {"from": _iso(issue.send_at), "to": _iso(kw["send_at"])}
    store.record_issue_event(number, now, IssueEventDraft(actor, verb, detail))
    log.event(f"issue.{verb}", number=number, status=to, actor=actor)
    return _issue(store, number)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


# A time typed as "now" is a few seconds old when it arrives: within this it means "at once".
SCHEDULE_GRACE = timedelta(minutes=1)


def check_send_time(at: datetime, now: datetime) -> None:
    """Refuse a send time already past (beyond the grace): the sweeper would only pause it."""
    if at.tzinfo is None:
        raise BadValue("the send time needs a time zone (e.g. 2026-11-27T09:00+01:00)")
    if at < now - SCHEDULE_GRACE:
        raise BadValue(f"send time {at.isoformat(timespec='minutes')} is in the past (now "
                       f"{now.astimezone(at.tzinfo).isoformat(timespec='minutes')}); give a "
                       f"later time, or send now with `newsletter issue send`")


def schedule_issue(store: Store, number: int, at: datetime, *,
                   now: datetime | None = None, actor: str = UNKNOWN_ACTOR) -> Issue:
    """In review mode a scheduled issue still waits for its approval (the sweep sends only
    approved ones); approving it keeps the time."""
    check_send_time(at, now or now_utc())
    return _move(store, number, "scheduled", ("draft", "scheduled", "paused"), "schedule",
                 actor, send_at=at)


def pause_issue(store: Store, number: int, *, actor: str = UNKNOWN_ACTOR) -> Issue:
    """Workers stop before their next batch; rows in hand finish, nothing is lost."""
    return _move(store, number, "paused", ("scheduled", "sending"), "pause", actor)


def resume_issue(store: Store, number: int, *, actor: str = UNKNOWN_ACTOR) -> Issue:
    issue = _issue(store, number)
    assert issue.id is not None
    started = sum(store.delivery_counts(issue.id).values()) > 0
    to = "sending" if started else ("scheduled" if issue.send_at else "draft")
    return _move(store, number, to, ("paused",), "resume", actor)


def cancel_issue(store: Store, number: int, *, actor: str = UNKNOWN_ACTOR) -> Issue:
    issue = _move(store, number, "cancelled", ("draft", "scheduled", "paused", "sending"),
                  "cancel", actor)
    assert issue.id is not None
    store.cancel_rows(issue.id, now_utc())
    return issue


@dataclass(slots=True)
class Overview:
    last_collect: dict[str, Any] | None
    articles: int
    issues: list[tuple[Issue, dict[str, int]]] = field(default_factory=list)
    jobs: list[tuple[str, datetime | None]] = field(default_factory=list)
    came_back: dict[int, IssueRates] = field(default_factory=dict)  # by issue number


def overview(store: Store, *, limit: int = 5) -> Overview:
    listed = store.list_issues(limit=limit)
    counted = store.delivery_counts_by_issue([i.id for i in listed if i.id is not None])
    issues = [(i, counted[i.id]) for i in listed if i.id is not None]
    bounced = store.bounce_counts_by_issue([i.id for i, _ in issues if i.id is not None])
    came_back = {i.number: IssueRates.of(i.number, c.get("sent", 0), bounced[i.id])
                 for i, c in issues if i.id is not None}
    return Overview(last_collect=store.last_collect(), articles=store.count_articles(),
                    issues=issues, came_back=came_back)
