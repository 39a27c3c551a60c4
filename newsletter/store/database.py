"""One database: its engine, migrated on open, and the query groups built over it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import sqlalchemy as sa

from newsletter.store import migrations
from newsletter.store import urls as dburl
from newsletter.store.articles import ArticleQueries, FileRecord
from newsletter.store.bounces import BounceQueries
from newsletter.store.engine import connect, make_engine, open_engine
from newsletter.store.issues import IssueQueries
from newsletter.store.ledger import LedgerQueries
from newsletter.store.retention import RetentionQueries
from newsletter.store.sessions import SessionQueries
from newsletter.store.subscribers import SubscriberQueries

__all__ = ["FileRecord", "Store", "connect", "make_engine", "open_engine"]

P = ParamSpec("P")
R = TypeVar("R")


class _Via(Generic[P, R]):
    """A Store method that is one of its query groups' methods, typed as that method:
    `store.add_subscriber(...)` is `store.subscribers.add_subscriber(...)`."""

    def __init__(self, group: str, method: Callable[Concatenate[Any, P], R]) -> None:
        self.group, self.name = group, method.__name__

    @overload
    def __get__(self, obj: None, owner: type) -> _Via[P, R]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> Callable[P, R]: ...

    def __get__(self, obj: object | None, owner: type) -> _Via[P, R] | Callable[P, R]:
        if obj is None:
            return self
        method: Callable[P, R] = getattr(getattr(obj, self.group), self.name)
        return method


class Store:
    """One database: created and migrated on open, shared by every entry point.

    The queries live in seven groups over the one engine (`articles`, `issues`, `subscribers`,
    `ledger`, `bounces`, `sessions`, `retention`); each group's methods are reachable on the
    Store too, so a stage's Protocol is satisfied by the Store or by the group alone.
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = open_engine(url)
        if migrate:
            try:
                with connect(self.engine, url) as conn:
                    migrations.migrate(conn)
            except sa.exc.DBAPIError as exc:  # e.g. a read-only file, or no CREATE privilege
                self.engine.dispose()
                raise dburl.connect_error(url, exc, doing="cannot update its schema") from None
            except BaseException:
                self.engine.dispose()  # no caller holds this Store to close it
                raise
        self.articles = ArticleQueries(self.engine)
        self.issues = IssueQueries(self.engine)
        self.subscribers = SubscriberQueries(self.engine)
        self.ledger = LedgerQueries(self.engine)
        self.bounces = BounceQueries(self.engine)
        self.sessions = SessionQueries(self.engine)
        self.retention = RetentionQueries(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- articles and collector state -----------------------------------------------------
    article_hashes = _Via("articles", ArticleQueries.article_hashes)
    save_articles = _Via("articles", ArticleQueries.save_articles)
    latest_articles = _Via("articles", ArticleQueries.latest_articles)
    search_articles = _Via("articles", ArticleQueries.search_articles)
    sections = _Via("articles", ArticleQueries.sections)
    count_articles = _Via("articles", ArticleQueries.count_articles)
    articles_between = _Via("articles", ArticleQueries.articles_between)
    articles_by_ids = _Via("articles", ArticleQueries.articles_by_ids)
    file_records = _Via("articles", ArticleQueries.file_records)
    save_file_records = _Via("articles", ArticleQueries.save_file_records)
    remove_articles = _Via("articles", ArticleQueries.remove_articles)
    forget_files = _Via("articles", ArticleQueries.forget_files)
    feed_states = _Via("articles", ArticleQueries.feed_states)
    save_feed_state = _Via("articles", ArticleQueries.save_feed_state)
    record_collect = _Via("articles", ArticleQueries.record_collect)
    last_collect = _Via("articles", ArticleQueries.last_collect)

    # -- issues ---------------------------------------------------------------------------
    save_issue = _Via("issues", IssueQueries.save_issue)
    get_issue = _Via("issues", IssueQueries.get_issue)
    list_issues = _Via("issues", IssueQueries.list_issues)
    latest_issue = _Via("issues", IssueQueries.latest_issue)
    next_issue_number = _Via("issues", IssueQueries.next_issue_number)
    set_issue_status = _Via("issues", IssueQueries.set_issue_status)
    count_issues = _Via("issues", IssueQueries.count_issues)
    replace_issue_if = _Via("issues", IssueQueries.replace_issue_if)
    set_issue_fields = _Via("issues", IssueQueries.set_issue_fields)
    record_issue_event = _Via("issues", IssueQueries.record_issue_event)
    issue_history = _Via("issues", IssueQueries.issue_history)

    # -- subscribers ----------------------------------------------------------------------
    add_subscriber = _Via("subscribers", SubscriberQueries.add_subscriber)
    get_subscriber = _Via("subscribers", SubscriberQueries.get_subscriber)
    get_subscriber_by_key = _Via("subscribers", SubscriberQueries.get_subscriber_by_key)
    list_subscribers = _Via("subscribers", SubscriberQueries.list_subscribers)
    count_subscribers = _Via("subscribers", SubscriberQueries.count_subscribers)
    update_subscriber = _Via("subscribers", SubscriberQueries.update_subscriber)
    activate_subscriber = _Via("subscribers", SubscriberQueries.activate_subscriber)
    record_consent = _Via("subscribers", SubscriberQueries.record_consent)
    consent_history = _Via("subscribers", SubscriberQueries.consent_history)
    unsubscribe_subscriber = _Via("subscribers", SubscriberQueries.unsubscribe_subscriber)
    set_subscriber_status = _Via("subscribers", SubscriberQueries.set_subscriber_status)
    set_subscriber_sections = _Via("subscribers", SubscriberQueries.set_subscriber_sections)
    mark_confirmation_sent = _Via("subscribers", SubscriberQueries.mark_confirmation_sent)
    claim_confirmation = _Via("subscribers", SubscriberQueries.claim_confirmation)
    record_hard_bounce = _Via("subscribers", SubscriberQueries.record_hard_bounce)
    remove_subscriber = _Via("subscribers", SubscriberQueries.remove_subscriber)
    iter_subscribers = _Via("subscribers", SubscriberQueries.iter_subscribers)
    iter_active = _Via("subscribers", SubscriberQueries.iter_active)
    merge_import_batch = _Via("subscribers", SubscriberQueries.merge_import_batch)

    # -- the delivery ledger --------------------------------------------------------------
    enqueue = _Via("ledger", LedgerQueries.enqueue)
    claim = _Via("ledger", LedgerQueries.claim)
    renew = _Via("ledger", LedgerQueries.renew)
    settle = _Via("ledger", LedgerQueries.settle)
    release = _Via("ledger", LedgerQueries.release)
    cancel_rows = _Via("ledger", LedgerQueries.cancel_rows)
    lease_owners = _Via("ledger", LedgerQueries.lease_owners)
    delivery_counts = _Via("ledger", LedgerQueries.delivery_counts)
    delivery_counts_by_issue = _Via("ledger", LedgerQueries.delivery_counts_by_issue)
    skipped_reasons = _Via("ledger", LedgerQueries.skipped_reasons)
    delivery_totals = _Via("ledger", LedgerQueries.delivery_totals)
    sent_between = _Via("ledger", LedgerQueries.sent_between)
    next_due = _Via("ledger", LedgerQueries.next_due)
    issues_with_due_rows = _Via("ledger", LedgerQueries.issues_with_due_rows)

    # -- what comes back ------------------------------------------------------------------
    record_bounces = _Via("bounces", BounceQueries.record_bounces)
    issue_for_token = _Via("bounces", BounceQueries.issue_for_token)
    recent_delivery = _Via("bounces", BounceQueries.recent_delivery)
    bounce_counts = _Via("bounces", BounceQueries.bounce_counts)
    bounce_counts_by_issue = _Via("bounces", BounceQueries.bounce_counts_by_issue)
    bounce_totals = _Via("bounces", BounceQueries.bounce_totals)
    list_bounces = _Via("bounces", BounceQueries.list_bounces)

    # -- dashboard sessions ---------------------------------------------------------------
    create_session = _Via("sessions", SessionQueries.create_session)
    session_alive = _Via("sessions", SessionQueries.session_alive)
    revoke_session = _Via("sessions", SessionQueries.revoke_session)
    revoke_all_sessions = _Via("sessions", SessionQueries.revoke_all_sessions)
    count_sessions = _Via("sessions", SessionQueries.count_sessions)
    prune_sessions = _Via("sessions", SessionQueries.prune_sessions)

    # -- ledger retention and the SQLite file ---------------------------------------------
    prunable_issues = _Via("retention", RetentionQueries.prunable_issues)
    issue_pruned = _Via("retention", RetentionQueries.issue_pruned)
    prune_batch = _Via("retention", RetentionQueries.prune_batch)
    file_space = _Via("retention", RetentionQueries.file_space)
