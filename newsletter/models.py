"""Plain data records that flow between sources, the store, feeds and issues."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo


def now_utc() -> datetime:
    """The one clock of the service: aware, in UTC."""
    return datetime.now(UTC)


def example_send_time(zone: str, now: datetime) -> str:
    """Next Monday 07:00 in `zone`, as ISO 8601: a send time to show, never a past one."""
    local = now.astimezone(ZoneInfo(zone))
    ahead = local + timedelta(days=(7 - local.weekday()) % 7 or 7)
    return ahead.replace(hour=7, minute=0, second=0, microsecond=0).isoformat(
        timespec="minutes")


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


@dataclass(slots=True)
class ArticleDraft:
    """What a source read: fields as found, HTML not yet sanitised, links maybe relative."""

    title: str
    published: datetime
    body_html: str
    origin: str  # file path or feed URL, for messages
    updated: datetime | None = None
    authors: tuple[str, ...] = ()
    section: str = ""
    summary: str = ""
    image: str = ""
    image_credit: str = ""
    slug: str = ""
    url: str = ""  # canonical link when the source gives one
    guid: str = ""  # upstream guid / atom id, or front matter `id`
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require_aware("published", self.published)
        _require_aware("updated", self.updated)


@dataclass(frozen=True, slots=True)
class Article:
    """A stored article: sanitised HTML, absolute links, stable identity."""

    key: str  # identity: "guid:…", "link:…" or "hash:…" (first that applies)
    title: str
    link: str
    published: datetime
    updated: datetime
    content_html: str
    content_hash: str
    source: str = ""
    summary: str = ""
    authors: tuple[str, ...] = ()
    section: str = ""
    tags: tuple[str, ...] = ()
    image: str = ""
    image_credit: str = ""
    slug: str = ""
    guid: str = ""  # what feeds publish as guid / id
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        _require_aware("published", self.published)
        _require_aware("updated", self.updated)
        if not self.id:
            object.__setattr__(self, "id", article_id(self.key))


def article_id(key: str) -> str:
    """Short, URL-safe and stable: the same identity key always gives the same id."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


# Status names as the store keeps them (strings in the database, so plain str constants).
ISSUE_STATUSES = ("draft", "scheduled", "sending", "paused", "sent", "cancelled")
SUBSCRIBER_STATUSES = ("pending", "active", "unsubscribed", "bounced", "complained")
# Statuses a person left on purpose or that the mail system said never to use again: nothing
# but their own confirmed opt-in (or an admin's explicit --resubscribe, with a reason) brings
# them back.
SUPPRESSED = ("unsubscribed", "bounced", "complained")
DELIVERY_STATUSES = ("queued", "sending", "sent", "deferred", "failed", "skipped")
SETTLE_STATUSES = ("sent", "deferred", "failed", "skipped")  # how one attempt can end
# Every grant of consent, kept beside the subscriber's latest one (see schema.consent_events).
CONSENT_ACTIONS = ("form", "confirm", "import", "admin", "resubscribe")
# What can happen to an issue, as its history records it (schema.issue_events).
ISSUE_ACTIONS = ("build", "edit", "approve", "schedule", "send", "test_send", "pause",
                 "resume", "cancel", "review_sent", "reminder", "prune")
# What comes back after a send, and where it came from.
BOUNCE_KINDS = ("hard", "soft", "complaint")
BOUNCE_SOURCES = ("smtp", "file", "stdin", "imap", "ses", "mailgun", "postmark", "sendgrid")


@dataclass(frozen=True, slots=True)
class IssueSection:
    """One section of an issue: its name and its articles, newest first."""

    name: str
    articles: tuple[Article, ...]


@dataclass(slots=True)
class Issue:
    """A newsletter issue: what it holds and, once built, its rendered HTML and text."""

    number: int
    subject: str
    preheader: str
    created: datetime
    window_start: datetime  # the previous build (articles published or collected since) …
    window_end: datetime  # … up to this instant (compose/issue.py has the whole rule)
    sections: tuple[IssueSection, ...]
    status: str = "draft"
    html: str = ""  # inlined once; per-recipient values are %%PLACEHOLDERS%%
    text: str = ""
    send_at: datetime | None = None
    id: int | None = None
    intro: str = ""  # the editor's note, Markdown; "" uses the preheader as today
    edited_at: datetime | None = None  # an editor changed it: a rebuild leaves it alone
    approved_at: datetime | None = None
    approved_by: str = ""
    review_sent_at: datetime | None = None
    reminded_at: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("created", "window_start", "window_end", "send_at", "edited_at",
                     "approved_at", "review_sent_at", "reminded_at"):
            _require_aware(name, getattr(self, name))
        if self.status not in ISSUE_STATUSES:
            raise ValueError(f"unknown issue status {self.status!r}")

    @property
    def articles(self) -> tuple[Article, ...]:
        return tuple(a for s in self.sections for a in s.articles)


# -- audience -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One person on the list, as stored: address, status and their latest consent."""

    id: int
    email: str
    email_key: str
    name: str
    status: str  # one of SUBSCRIBER_STATUSES
    sections: tuple[str, ...]  # empty means every section
    consent_at: datetime | None
    consent_method: str | None
    consent_ip: str | None
    consent_user_agent: str | None
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    confirmation_sent_at: datetime | None
    hard_bounces: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Consent:
    """One grant of consent to record: what (CONSENT_ACTIONS), who, why, from where."""

    action: str
    actor: str = ""  # empty: the person themself
    reason: str = ""
    previous_status: str | None = None
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentEvent:
    """One recorded grant of consent, as the history shows it."""

    id: int
    subscriber_id: int
    at: datetime
    action: str
    actor: str
    reason: str
    previous_status: str | None
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One valid, normalised CSV record; `line` is where it starts in the file."""

    line: int
    email: str
    email_key: str
    name: str
    sections: tuple[str, ...]


@dataclass(slots=True)
class BatchCounts:
    """What merging one batch of imported rows did."""

    added: int = 0
    merged: int = 0  # already in the store, or earlier in the file: name refreshed
    # Left exactly as stored, (line, status): unsubscribed, bounced, complained, or pending
    # (a form sign-up the person has not confirmed; the operator cannot confirm it for them).
    skipped: list[tuple[int, str]] = field(default_factory=list)


# -- delivery -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A leased ledger row with what is needed to address the message."""

    delivery_id: int
    subscriber_id: int
    email: str  # empty when the subscriber is no longer active: the row is skipped
    name: str
    sections: tuple[str, ...]
    attempts: int
    first_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class Settle:
    """How one claimed row ends this attempt."""

    delivery_id: int
    subscriber_id: int
    status: str  # one of SETTLE_STATUSES
    code: int | None
    reply: str
    next_attempt_at: datetime | None = None
    hard_bounce: bool = False


# -- what comes back ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BounceNotice:
    """One bounce or complaint to record, already matched to the subscriber it concerns."""

    subscriber_id: int
    issue_id: int | None
    kind: str  # one of BOUNCE_KINDS
    status: str  # enhanced status code, e.g. "5.1.1"; "" when the report gives none
    diagnostic: str
    source: str  # one of BOUNCE_SOURCES
    recipient: str  # the address as the report named it
    key: str  # the same key is recorded once: a report read twice changes nothing


@dataclass(frozen=True, slots=True)
class BouncePolicy:
    """When bounces suppress: [delivery] max_hard_bounces and [bounces] soft_*."""

    max_hard_bounces: int = 1
    soft_limit: int = 3
    soft_window: timedelta = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class BounceEvent:
    """One recorded bounce or complaint, as `bounces list` and the API show it."""

    id: int
    subscriber_id: int
    email: str
    issue_number: int | None
    kind: str
    status: str
    diagnostic: str
    source: str
    recipient: str
    received_at: datetime


@dataclass(frozen=True, slots=True)
class IssueEvent:
    """One entry of an issue's history: who did what, when, and what changed."""

    id: int
    issue_number: int
    at: datetime
    actor: str
    action: str  # one of ISSUE_ACTIONS
    detail: dict[str, object]


@dataclass(frozen=True, slots=True)
class IssueEventDraft:
    """An entry to add to an issue's history (the store stamps the time)."""

    actor: str
    action: str  # one of ISSUE_ACTIONS
    detail: dict[str, object] = field(default_factory=dict)
