"""What comes back, ingested: match each report to the subscriber it concerns, then record it."""

# One Ingestor serves every way a report arrives (a file, an mbox, a Maildir, standard input,
# the IMAP poller, provider webhooks). Whose bounce it is: a valid VERP token decides; without
# one, an address counts only if we sent to it within [bounces] unsigned_window_days, so
# random mail to the bounce address cannot suppress anyone; a forged token changes nothing.

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from newsletter import log
from newsletter.audience import bounces as parse_bounces
from newsletter.audience.rates import IssueRates
from newsletter.audience.subscriptions import AddressError, normalise_address
from newsletter.audience.tokens import load_or_create_secret
from newsletter.config import Settings
from newsletter.models import BounceNotice, BouncePolicy, now_utc
from newsletter.store.bounces import DUPLICATE, SUPPRESSED
from newsletter.store.database import Store


class ReportedEvent(Protocol):
    """What a provider's verified webhook event must tell (audience.webhooks gives these)."""

    @property
    def recipient(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def diagnostic(self) -> str: ...
    @property
    def event_id(self) -> str: ...


FORGED = "forged"
_SEVERITY = {parse_bounces.COMPLAINT: 3, parse_bounces.HARD: 2, parse_bounces.SOFT: 1}
_COUNTER = {parse_bounces.HARD: "hard", parse_bounces.SOFT: "soft",
            parse_bounces.COMPLAINT: "complaints"}


@dataclass(slots=True)
class IngestSummary:
    """What one ingestion run found; `line()` is the one line `bounces ingest` prints."""

    messages: int = 0
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    auto_replies: int = 0
    unrecognised: int = 0
    not_ours: int = 0
    duplicates: int = 0
    malformed: int = 0
    suppressed: int = 0  # subscribers whose status changed (bounced or complained)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        line = (f"{self.messages} read: {self.hard} hard, {self.soft} soft, "
                f"{self.complaints} complaints, {self.auto_replies} auto-replies ignored, "
                f"{self.unrecognised} unrecognised, {self.not_ours} not ours")
        extra = [f"{n} {what}" for n, what in ((self.duplicates, "already recorded"),
                                               (self.malformed, "malformed"),
                                               (self.suppressed, "subscribers suppressed"))
                 if n]
        return line + ("; " + ", ".join(extra) if extra else "")

    def add(self, other: IngestSummary) -> None:
        for name in self.__slots__:
            if name != "warnings":
                setattr(self, name, getattr(self, name) + getattr(other, name))
        self.warnings.extend(w for w in other.warnings if w not in self.warnings)


def policy_of(settings: Settings) -> BouncePolicy:
    b = settings.bounces
    return BouncePolicy(max_hard_bounces=settings.delivery.max_hard_bounces,
                        soft_limit=b.soft_limit, soft_window=timedelta(days=b.soft_window_days))


def _key(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8", "replace")) \
        .hexdigest()[:48]


class Ingestor:
    """Matches reports to subscribers and records them; tallies into `summary`."""

    def __init__(self, settings: Settings, store: Store, *,
                 clock: Callable[[], datetime] = now_utc, batch: int = 1) -> None:
        # Reports recorded per transaction. 1 where something is acknowledged per message
        # (an IMAP flag, a webhook's answer); more for files, which are simply read again
        # after a crash (and count once).
        self.batch = batch
        self.pending: list[tuple[BounceNotice, str]] = []
        self.settings, self.store, self.clock = settings, store, clock
        self.secret = load_or_create_secret(settings)
        self.policy = policy_of(settings)
        self.window = timedelta(days=settings.bounces.unsigned_window_days)
        self.summary = IngestSummary()
        # Issue id → (hard, complaints) recorded by this ingestor: a warning is given when
        # these events are what took the issue's rate over its line, not on every event after.
        self.touched: dict[int, list[int]] = {}

    # -- bounce messages --------------------------------------------------------------------

    def message(self, raw: bytes, *, source: str, where: str,
                envelope_to: str | None = None) -> str:
        """Read one message and record what it reports; returns its kind. Never raises on
        bad input: a malformed message is logged with `where` and counted."""
        s = self.summary
        s.messages += 1
        if len(raw) > self.settings.bounces.max_message_bytes:
            return self._malformed(where, f"over {self.settings.bounces.max_message_bytes} "
                                          f"bytes ([bounces] max_message_bytes)")
        report = parse_bounces.parse(raw)
        if report.kind == "malformed":
            return self._malformed(where, report.error or "unreadable")
        if report.kind == "auto-reply":
            s.auto_replies += 1
            return report.kind
        if not report.events:
            s.unrecognised += 1
            log.event("bounces.unrecognised", level=10, where=where, kind=report.kind)
            return "unrecognised"
        for note in report.notes:
            log.event("bounces.note", level=30, where=where, note=note)
        mid = report.message_id or "sha256:" + hashlib.sha256(raw).hexdigest()
        notices = self._match(report, mid, source, where, envelope_to)
        self._record(notices, where)
        return report.kind

    def too_large(self, where: str, size: int) -> str:
        """A message known by its size alone to be over the limit: counted, never read."""
        self.summary.messages += 1
        return self._malformed(where, f"{size} bytes, over [bounces] max_message_bytes")

    def _malformed(self, where: str, why: str) -> str:
        self.summary.malformed += 1
        log.event("bounces.malformed", level=30, where=where, error=why,
                  action="left unrecorded; ingestion goes on")
        return "malformed"

    def _token(self, report: parse_bounces.Report, envelope_to: str | None,
               where: str) -> tuple[int, int] | str | None:
        """(issue number, subscriber id) from a valid token; None when there is no token;
        FORGED when there is one that does not verify (forged or damaged)."""
        candidates = [a for a in (envelope_to, report.verp_address) if a]
        for address in candidates:
            found = parse_bounces.verp_token_of(address, self.secret)
            if found is not None:
                return found
        if report.verp_address:
            log.event("bounces.forged_token", level=30, where=where,
                      address=report.verp_address[:120], action="ignored: no change")
            return FORGED
        return None

    def _match(self, report: parse_bounces.Report, mid: str, source: str, where: str,
               envelope_to: str | None) -> list[BounceNotice]:
        token = self._token(report, envelope_to, where)
        if isinstance(token, str):
            self.summary.not_ours += 1
            return []
        if token is not None:
            issue_number, subscriber_id = token
            issue_id = self.store.issue_for_token(issue_number, subscriber_id)
            if issue_id is None:
                self.summary.not_ours += 1
                log.event("bounces.not_ours", level=30, where=where, issue=issue_number,
                          subscriber=subscriber_id, reason="no such delivery")
                return []
            # One message went to one subscriber: its worst event is the one that counts.
            event = max(report.events, key=lambda e: _SEVERITY[e.kind])
            return [BounceNotice(subscriber_id, issue_id, event.kind, event.status,
                                 event.diagnostic, source, event.recipient,
                                 _key("msg", mid, subscriber_id, event.kind))]
        notices = []
        for event in report.events:
            matched = self._recent(event.recipient)
            if matched is None:
                self.summary.not_ours += 1
                log.event("bounces.not_ours", level=20, where=where,
                          recipient=event.recipient[:120],
                          reason=f"not sent to within {self.window.days} days and no VERP "
                                 f"token")
                continue
            subscriber_id, issue_id = matched
            notices.append(BounceNotice(subscriber_id, issue_id, event.kind, event.status,
                                        event.diagnostic, source, event.recipient,
                                        _key("msg", mid, subscriber_id, event.kind)))
        return notices

    def _recent(self, address: str) -> tuple[int, int] | None:
        try:
            _address, key = normalise_address(address, smtputf8=True)
        except AddressError:
            return None
        return self.store.recent_delivery(key, self.clock() - self.window)

    def _record(self, notices: list[BounceNotice], where: str) -> None:
        self.pending.extend((notice, where) for notice in notices)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Record what is pending, in one transaction."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        outcomes = self.store.record_bounces([n for n, _ in pending], self.clock(), self.policy)
        for (notice, where), outcome in zip(pending, outcomes, strict=True):
            if outcome == DUPLICATE:
                self.summary.duplicates += 1
                continue
            counter = _COUNTER[notice.kind]
            setattr(self.summary, counter, getattr(self.summary, counter) + 1)
            if notice.issue_id is not None:
                added = self.touched.setdefault(notice.issue_id, [0, 0])
                added[0] += notice.kind == parse_bounces.HARD
                added[1] += notice.kind == parse_bounces.COMPLAINT
            if outcome == SUPPRESSED:
                self.summary.suppressed += 1
            log.event("bounces.recorded", where=where, kind=notice.kind, status=notice.status,
                      subscriber=notice.subscriber_id, source=notice.source,
                      suppressed=outcome == SUPPRESSED)

    # -- provider webhooks ------------------------------------------------------------------

    def provider_events(self, source: str, events: Iterable[ReportedEvent]) -> dict[str, int]:
        """Record a provider's verified events; the counts of what this call recorded."""
        before = IngestSummary()
        before.add(self.summary)
        notices = []
        for e in events:
            matched = self._recent(e.recipient)
            if matched is None:
                self.summary.not_ours += 1
                log.event("bounces.not_ours", level=20, where=source,
                          recipient=e.recipient[:120],
                          reason=f"not sent to within {self.window.days} days")
                continue
            subscriber_id, issue_id = matched
            notices.append(BounceNotice(subscriber_id, issue_id, e.kind, e.status,
                                        e.diagnostic, source, e.recipient,
                                        _key(source, e.event_id, subscriber_id)))
        self._record(notices, source)
        self.finish()
        s = self.summary
        return {"hard": s.hard - before.hard, "soft": s.soft - before.soft,
                "complaints": s.complaints - before.complaints,
                "not_ours": s.not_ours - before.not_ours,
                "duplicates": s.duplicates - before.duplicates}

    # -- after a run ---------------------------------------------------------------------

    def finish(self) -> IngestSummary:
        """Warn about every issue whose bounce or complaint rate these events took over its
        line (`issue status`, the dashboard and /metrics show it for as long as it is)."""
        self.flush()
        lines = (self.settings.bounces.complaint_rate_warning,
                 self.settings.bounces.hard_bounce_rate_warning)
        for issue_id, (hard, complaints) in sorted(self.touched.items()):
            rates = issue_rates(self.store, issue_id)
            crossed = rates.over(*lines) - rates.without(hard, complaints).over(*lines)
            for warning in rates.warnings(*lines, only=crossed):
                log.event("bounces.rate_warning", level=30, issue=rates.number,
                          warning=warning)
                if warning not in self.summary.warnings:
                    self.summary.warnings.append(warning)
        self.touched.clear()
        return self.summary


def issue_rates(store: Store, issue_id: int) -> IssueRates:
    counts = store.delivery_counts(issue_id)
    number = store.bounces.issue_number(issue_id)
    return IssueRates.of(number, counts.get("sent", 0), store.bounce_counts(issue_id))
