"""The current database schema as SQLAlchemy Core tables (migrations build it step by step)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)

# Re-exported for callers that read the status names beside the tables.
from newsletter.models import CONSENT_ACTIONS as CONSENT_ACTIONS
from newsletter.models import DELIVERY_STATUSES as DELIVERY_STATUSES
from newsletter.models import SUBSCRIBER_STATUSES as SUBSCRIBER_STATUSES


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (no zone support) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime refused by the store: {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        when: datetime = value
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

articles = Table(
    "articles", metadata,
    Column("id", String(40), primary_key=True),
    Column("key", Text, nullable=False, unique=True),
    Column("source", Text, nullable=False, default=""),
    Column("guid", Text, nullable=False, default=""),
    Column("link", Text, nullable=False),
    Column("slug", String(200), nullable=False, default=""),
    Column("title", Text, nullable=False),
    Column("summary", Text, nullable=False, default=""),
    Column("content_html", Text, nullable=False, default=""),
    Column("authors", Text, nullable=False, default="[]"),  # JSON list: portable, rarely queried
    Column("section", String(200), nullable=False, default=""),
    Column("tags", Text, nullable=False, default="[]"),
    Column("image", Text, nullable=False, default=""),
    Column("image_credit", Text, nullable=False, default=""),
    Column("published", UTCDateTime, nullable=False),
    Column("updated", UTCDateTime, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("collected_at", UTCDateTime, nullable=False),
    Index("ix_articles_published", "published"),
    Index("ix_articles_section_published", "section", "published"),
)

# Re-collecting an unchanged folder must not re-parse it: remember each file's stat.
source_files = Table(
    "source_files", metadata,
    Column("path", Text, primary_key=True),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("article_key", Text, nullable=True),
    Column("error", Text, nullable=True),
)

feed_sources = Table(
    "feed_sources", metadata,
    Column("url", Text, primary_key=True),
    Column("etag", Text, nullable=True),
    Column("last_modified", Text, nullable=True),
    Column("last_status", String(20), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_fetched_at", UTCDateTime, nullable=True),
    Column("last_success_at", UTCDateTime, nullable=True),
    Column("retry_after", UTCDateTime, nullable=True),
    Column("gone", Boolean, nullable=False, default=False),
)

collect_runs = Table(
    "collect_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("new", Integer, nullable=False),
    Column("updated", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
)

issues = Table(
    "issues", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("number", Integer, nullable=False, unique=True),
    Column("status", String(20), nullable=False),
    Column("subject", Text, nullable=False),
    Column("preheader", Text, nullable=False),
    Column("created", UTCDateTime, nullable=False),
    Column("window_start", UTCDateTime, nullable=False),
    Column("window_end", UTCDateTime, nullable=False),
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("send_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    # v7: what editors add and decide (migrations._ISSUES_LATER names them).
    Column("intro", Text, nullable=False, server_default="", default=""),  # Markdown
    Column("edited_at", UTCDateTime, nullable=True),  # set by an edit: a rebuild keeps it
    Column("approved_at", UTCDateTime, nullable=True),
    Column("approved_by", Text, nullable=True),
    Column("review_sent_at", UTCDateTime, nullable=True),  # editors mailed a preview
    Column("reminded_at", UTCDateTime, nullable=True),
)

issue_articles = Table(
    "issue_articles", metadata,
    Column("issue_id", Integer, sa.ForeignKey("issues.id", ondelete="CASCADE"),
           primary_key=True),
    Column("article_id", String(40), sa.ForeignKey("articles.id"), primary_key=True),
    Column("section", String(200), nullable=False),
    Column("position", Integer, nullable=False),
)

subscribers = Table(
    "subscribers", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("email", Text, nullable=False),  # as normalised by email-validator
    Column("email_key", Text, nullable=False, unique=True),  # case-folded: one person, one row
    Column("name", Text, nullable=False, default=""),
    Column("status", String(20), nullable=False),
    Column("sections", Text, nullable=False, default="[]"),  # JSON; empty means every section
    Column("consent_at", UTCDateTime, nullable=True),
    Column("consent_method", String(20), nullable=True),  # form, import, admin
    Column("consent_ip", String(64), nullable=True),
    Column("consent_user_agent", Text, nullable=True),
    Column("confirmed_at", UTCDateTime, nullable=True),
    Column("unsubscribed_at", UTCDateTime, nullable=True),
    Column("confirmation_sent_at", UTCDateTime, nullable=True),
    Column("hard_bounces", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_subscribers_status", "status"),
)

deliveries = Table(
    "deliveries", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("issue_id", Integer, sa.ForeignKey("issues.id"), nullable=False),
    Column("subscriber_id", Integer, sa.ForeignKey("subscribers.id"), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("first_attempt_at", UTCDateTime, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_code", Integer, nullable=True),
    Column("last_reply", Text, nullable=True),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("issue_id", "subscriber_id", name="uq_deliveries_issue_subscriber"),
    Index("ix_deliveries_claim", "issue_id", "status", "next_attempt_at"),
)

# Each issue's ledger rows by status, kept by triggers on `deliveries` in the transaction of
# every change (store/counting.py), so status pages and /metrics never count the ledger.
# Deleting ledger rows (retention) leaves these as they are: they are the record after it.
# On PostgreSQL an issue's counts are spread over up to counting.SHARDS rows (by the writing
# session), so workers settling at once do not queue on one row; readers sum them. A shard
# may hold a negative count (a row counted into one shard, moved on by another session).
delivery_counts = Table(
    "delivery_counts", metadata,
    Column("issue_id", Integer, sa.ForeignKey("issues.id", ondelete="CASCADE"),
           primary_key=True, autoincrement=False),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    *(Column(status, Integer, nullable=False, server_default="0")
      for status in ("queued", "sending", "sent", "deferred", "failed", "skipped")),
)

# Messages that became `sent`, per second of their sent_at: a ring of counting.SEND_SLOTS
# slots (the second modulo that), each holding the latest second written to it. Kept by the
# same triggers; the send rate reads a minute of it.
delivery_sends = Table(
    "delivery_sends", metadata,
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    Column("second", BigInteger, nullable=False),  # Unix time, whole seconds
    Column("n", Integer, nullable=False),
)

# Every grant of consent, kept beside the subscriber's latest one: who (actor: "cli <user>",
# "api <ip>", "dashboard <ip>"; empty for the person themself), when, why, and from which
# status an operator brought someone back (models.CONSENT_ACTIONS).

consent_events = Table(
    "consent_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("subscriber_id", Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
           nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("action", String(20), nullable=False),
    Column("actor", Text, nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("previous_status", String(20), nullable=True),
    Column("ip", String(64), nullable=True),
    Column("user_agent", Text, nullable=True),
    Index("ix_consent_events_subscriber", "subscriber_id", "at"),
)

# What came back after a send: bounces (hard, soft) and complaints, each tied to the subscriber
# it concerns and, where known, the issue. `key` is unique: the same report (a bounce
# message's Message-ID, a provider's event id) read twice is recorded, and counted, once.
bounce_events = Table(
    "bounce_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("subscriber_id", Integer, sa.ForeignKey("subscribers.id", ondelete="CASCADE"),
           nullable=False),
    Column("issue_id", Integer, sa.ForeignKey("issues.id", ondelete="SET NULL"), nullable=True),
    Column("kind", String(20), nullable=False),  # models.BOUNCE_KINDS
    Column("status", String(20), nullable=False, default=""),  # e.g. 5.1.1
    Column("diagnostic", Text, nullable=False, default=""),
    Column("source", String(20), nullable=False),  # models.BOUNCE_SOURCES
    Column("recipient", Text, nullable=False, default=""),  # as the report named it
    Column("key", String(200), nullable=False, unique=True),
    Column("received_at", UTCDateTime, nullable=False),
    Index("ix_bounce_events_subscriber", "subscriber_id", "received_at"),
    Index("ix_bounce_events_issue", "issue_id", "kind"),
    Index("ix_bounce_events_received", "received_at"),
)

# Dashboard sessions, one per login. `id` is the SHA-256 of the random secret the signed
# cookie carries, so a copy of this table opens no session; a row past `expires_at` or with
# `revoked_at` set is refused by every web process, and pruned once expired.
admin_sessions = Table(
    "admin_sessions", metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("ip", String(64), nullable=False, default=""),
    Column("user_agent", Text, nullable=False, default=""),
    Index("ix_admin_sessions_expires", "expires_at"),
)

# Who did what to an issue, when: builds, edits (with what changed), approvals, schedule
# changes, sends, test sends. `actor` is "cli <user>", "api <ip>", "dashboard <ip>",
# "editor link <ip>" or "scheduler"; `detail` is JSON.
issue_events = Table(
    "issue_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("issue_id", Integer, sa.ForeignKey("issues.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False, default=""),
    Column("action", String(20), nullable=False),  # models.ISSUE_ACTIONS
    Column("detail", Text, nullable=False, default="{}"),
    Index("ix_issue_events_issue", "issue_id", "at"),
)
