"""An issue's history in words: one plain sentence per entry, for the CLI, API and dashboard."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from newsletter.errors import NewsletterError
from newsletter.models import IssueEvent
from newsletter.store.database import Store
from newsletter.words import joined, plural


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One entry of an issue's history with what it did in words."""

    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]
    summary: str


def issue_history(store: Store, number: int) -> list[HistoryEntry]:
    """Who did what to the issue, oldest first; NewsletterError when there is no issue."""
    if store.get_issue(number, with_articles=False) is None:
        raise NewsletterError(f"issue {number}: no such issue (see `newsletter issue list`)")
    return [entry(e) for e in store.issue_history(number)]


def entry(event: IssueEvent) -> HistoryEntry:
    return HistoryEntry(event.at, event.actor, event.action, event.detail,
                        "; ".join(describe(event.action, event.detail)))


def describe(action: str, detail: Mapping[str, Any]) -> list[str]:
    """What an entry did, one phrase per change: "status draft → sending", "test copy sent
    to a@x and b@y". An edit says what changed ("intro added", "articles reordered"); every
    other action starts with what it was ("approved", "sending started"); an action this
    does not know is told in words too, never as a Python structure."""
    if action == "edit":
        return _edit(detail)
    said = _SAY.get(action, _other)(action, detail)
    return [p for p in said if p]


# -- the phrases --------------------------------------------------------------------------


def _edit(detail: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name in ("subject", "preheader"):
        if isinstance(detail.get(name), list) and len(detail[name]) == 2:
            old, new = detail[name]
            if name == "preheader" and detail.get("preheader_generated"):
                out.append(f"preheader regenerated for the new articles: “{new}”")
            elif name == "subject" or (old and new):
                out.append(f"{name}: “{old}” → “{new}”")
            else:
                out.append(f"{name} {'removed' if old else 'added'}: “{old or new}”")
    if "intro" in detail:
        out.append(f"intro {detail['intro']}")
    for key in ("removed", "added"):
        for item in detail.get(key) or []:
            out.append(f"{key} “{item.get('title', '')}” ({item.get('id', '')})")
    if detail.get("reordered"):
        out.append("articles reordered")
    if "approval" in detail:
        out.append(f"approval {detail['approval']}")
    return out


def _build(action: str, detail: Mapping[str, Any]) -> list[str]:
    verb = "rebuilt" if detail.get("rebuilt") else "built"
    if "articles" not in detail:
        return [verb]
    total, fit = detail["articles"], detail.get("in_email", detail["articles"])
    return [f"{verb}: {plural(total, 'article')}" + (f", {fit} in the email" if fit != total
                                                     else "")]


def _approve(action: str, detail: Mapping[str, Any]) -> list[str]:
    when = _when(detail.get("send_at"))
    goes = f"it goes at {when}" if when else "it goes now"
    return [f"approved: {goes}", _status(detail)]


def _send(action: str, detail: Mapping[str, Any]) -> list[str]:
    rows = detail.get("rows")
    queued = f"{_count(rows, 'message')} queued" if isinstance(rows, int) else ""
    verb = "sending resumed" if detail.get("resumed") else "sending started"
    return [f"{verb}: {queued}" if queued else verb, _status(detail)]


def _schedule(action: str, detail: Mapping[str, Any]) -> list[str]:
    times = detail.get("send_at")
    before, after = (times.get("from"), times.get("to")) if isinstance(times, dict) \
        else (None, times)
    first = f"scheduled for {_when(after) or 'no time'}"
    if _when(before) and before != after:
        first += f" (was {_when(before)})"
    return [first, _status(detail)]


def _moved(action: str, detail: Mapping[str, Any]) -> list[str]:
    verb = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[action]
    return [verb, _status(detail)]


def _test_send(action: str, detail: Mapping[str, Any]) -> list[str]:
    sent, failed = _addresses(detail.get("to")), _addresses(detail.get("failed"))
    out = []
    if sent:
        out.append(f"test {'copy' if len(sent) == 1 else 'copies'} sent to {joined(sent, 6)}")
    if failed:
        out.append(f"test {'copy' if len(failed) == 1 else 'copies'} not sent to "
                   f"{joined(failed, 6)}")
    return out or ["test copy sent to nobody"]


def _review_sent(action: str, detail: Mapping[str, Any]) -> list[str]:
    to = _addresses(detail.get("to"))
    return [f"review requested from {plural(len(to), 'editor')}" +
            (f" ({joined(to, 6)})" if to else "")]


def _reminder(action: str, detail: Mapping[str, Any]) -> list[str]:
    to, hours = _addresses(detail.get("to")), detail.get("waited_hours")
    waited = f" after {hours:g} hours without an approval" if isinstance(hours, int | float) \
        else ""
    if not to:
        return [f"review reminder due{waited}, but no editor was reached"]
    return [f"review reminder sent to {plural(len(to), 'editor')} ({joined(to, 6)}){waited}"]


def _prune(action: str, detail: Mapping[str, Any]) -> list[str]:
    rows, kept, days = detail.get("rows"), detail.get("kept"), detail.get("retention_days")
    out = f"delivery records pruned: {_count(rows, 'row')} removed"
    if isinstance(kept, int) and kept:
        out += f", {_count(kept, 'row')} kept"
    return [out + (f" (older than {plural(days, 'day')})" if isinstance(days, int) else "")]


def _other(action: str, detail: Mapping[str, Any]) -> list[str]:
    """An action without its own sentence: its name and its details in words."""
    parts = [f"{k.replace('_', ' ')} {_plain(v)}" for k, v in detail.items()
             if v not in (None, "", [], {})]
    name = action.replace("_", " ")
    return [f"{name}: {', '.join(parts)}" if parts else name]


_SAY: dict[str, Callable[[str, Mapping[str, Any]], list[str]]] = {
    "build": _build, "approve": _approve, "send": _send, "schedule": _schedule,
    "pause": _moved, "resume": _moved, "cancel": _moved, "test_send": _test_send,
    "review_sent": _review_sent, "reminder": _reminder, "prune": _prune}


# -- values in words ----------------------------------------------------------------------


def _status(detail: Mapping[str, Any]) -> str:
    status = detail.get("status")
    if isinstance(status, dict) and status.get("from") and status.get("to") and \
            status["from"] != status["to"]:
        return f"status {status['from']} → {status['to']}"
    return ""


def _when(value: Any) -> str:
    """An ISO time as "2026-05-04 07:00 UTC"; "" for none."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    if at.tzinfo is None:
        return f"{at:%Y-%m-%d %H:%M}"
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _addresses(value: Any) -> list[str]:
    return [str(a) for a in value] if isinstance(value, list) else []


def _count(value: Any, noun: str) -> str:
    return f"{value:,} {noun}{'' if value == 1 else 's'}" if isinstance(value, int) \
        else f"some {noun}s"


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        if set(value) == {"from", "to"}:
            return f"{_plain(value['from'])} → {_plain(value['to'])}"
        return ", ".join(f"{k.replace('_', ' ')} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return joined([_plain(v) for v in value], 6) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    return _when(value) if isinstance(value, str) and _looks_iso(value) else str(value)


def _looks_iso(text: str) -> bool:
    return len(text) >= 16 and text[4:5] == "-" and text[10:11] == "T"

