"""Review mode and test copies: the editors' preview mail, its reminder, approval, [TEST] copies."""

from __future__ import annotations

import hashlib
import html as html_lib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from newsletter import log
from newsletter.config import Settings
from newsletter.deliver.headers import HeaderError, check_address, message_id
from newsletter.deliver.mail import MessageTemplate, identity_from_settings
from newsletter.errors import BadValue, NewsletterError
from newsletter.models import Issue, IssueEventDraft, now_utc
from newsletter.pipeline.issue_links import PREVIEW_DAYS, IssueLinks, with_view_link
from newsletter.pipeline.issues import archive_url
from newsletter.pipeline.sending import send_one
from newsletter.store.database import Store
from newsletter.words import plural

REVIEW_PREFIX, REMINDER_PREFIX, TEST_PREFIX = "[Review] ", "[Review reminder] ", "[TEST] "
# An issue that is not public yet: its archive link would be a 404, so copies carry the
# signed draft preview instead.
UNPUBLISHED = ("draft", "scheduled", "paused")
# Issues an approval can still release: nothing of them has gone out yet.
APPROVABLE = ("draft", "scheduled", "paused")
MAX_TEST_ADDRESSES = 20
_BODY_RE = re.compile(r"<body\b[^>]*>", re.I)


def _issue(store: Store, number: int) -> Issue:
    found = store.get_issue(number, with_articles=False)
    if found is None:
        raise NewsletterError(f"issue {number}: no such issue (see `newsletter issue list`)")
    return found


def generic_links(settings: Settings) -> str:
    """Where a copy's unsubscribe and preferences links lead: the public "manage my
    subscription" form. Real and harmless: it changes nothing, and a reader who is
    subscribed gets their own links from it by mail."""
    return settings.site_url + "manage"


def reader_copy(settings: Settings, links: IssueLinks, issue: Issue,
                now: datetime) -> tuple[str, str]:
    """The issue's HTML and text as readers get them; while it is unpublished its archive
    link is the signed draft preview, which works, rather than the archive's 404."""
    if issue.status not in UNPUBLISHED:
        return issue.html, issue.text
    return with_view_link(issue.html, issue.text, archive_url(settings, issue.number),
                          links.preview_url(issue, now))


def _message_id(settings: Settings, issue: Issue, kind: str, address: str,
                now: datetime) -> str:
    domain = settings.mail.from_address.rpartition("@")[2]
    tag = hashlib.sha256(f"{address}:{now.isoformat()}".encode()).hexdigest()[:12]
    return message_id(issue.number, f"{kind}-{tag}", domain)


# -- test copies ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CopyOutcome:
    address: str
    sent: bool
    reply: str


def copy_addresses(settings: Settings, to: list[str] | tuple[str, ...] | None, *,
                   seed: bool = False) -> list[str]:
    """The addresses given, and [newsletter] seed_list with `seed` or when none is given;
    each checked (BadValue), each once (however it is capitalised)."""
    chosen = list(to or ())
    if seed or not chosen:
        if seed and not settings.newsletter.seed_list:
            raise BadValue("--seed: [newsletter] seed_list is empty")
        chosen += settings.newsletter.seed_list
    if not chosen:
        raise BadValue("no address: give one (--to ADDRESS) or set [newsletter] seed_list")
    for address in chosen:
        try:
            check_address(address.strip())
        except HeaderError:
            raise BadValue(f"{address!r} is not an email address") from None
    once: dict[str, str] = {}
    for address in chosen:
        once.setdefault(address.strip().lower(), address.strip())
    if len(once) > MAX_TEST_ADDRESSES:
        raise BadValue(f"at most {MAX_TEST_ADDRESSES} test addresses at once, got {len(once)}")
    return list(once.values())


def send_test_copies(settings: Settings, store: Store, number: int,
                     to: list[str] | tuple[str, ...] | None, *, actor: str, seed: bool = False,
                     now: datetime | None = None) -> list[CopyOutcome]:
    """One copy of the issue to each address (and/or the seed list), outside the ledger: the
    whole issue as built, subject prefixed [TEST], signed like every reader's copy; its
    "View in browser" is the signed draft preview while the issue is unpublished, and its
    unsubscribe and preferences links the generic manage page. Recorded in the history."""
    from newsletter.pipeline.sending import get_sendable

    now = now or now_utc()
    addresses = copy_addresses(settings, to, seed=seed)
    issue = get_sendable(store, number)  # NewsletterError for a cancelled one
    html, text = reader_copy(settings, IssueLinks.from_settings(settings, store), issue, now)
    # List-Unsubscribe names the manage page, a page to visit: no one-click POST is offered
    # (RFC 8058's button would POST to /manage, which unsubscribes nobody).
    template = MessageTemplate.build(identity=identity_from_settings(settings),
                                     subject=TEST_PREFIX + issue.subject, html=html, text=text,
                                     list_fields="manage")
    outcomes = []
    for address in addresses:
        message = template.render(
            to_address=address, to_name="", date=now,
            message_id=_message_id(settings, issue, "test", address, now),
            unsubscribe_url=generic_links(settings), preferences_url=generic_links(settings))
        try:
            outcomes.append(CopyOutcome(address, True,
                                        send_one(settings, address, message, what="test copy")))
        except NewsletterError as exc:
            outcomes.append(CopyOutcome(address, False, str(exc)))
    store.record_issue_event(number, now, IssueEventDraft(actor, "test_send", {
        "to": [o.address for o in outcomes if o.sent],
        "failed": [o.address for o in outcomes if not o.sent]}))
    log.event("issue.test_sent", number=number, sent=sum(o.sent for o in outcomes),
              failed=sum(not o.sent for o in outcomes))
    return outcomes


# -- review mail ---------------------------------------------------------------------------

def _note(settings: Settings, issue: Issue, edit_url: str | None, preview_url: str,
          reminder: bool) -> tuple[str, str]:
    """The short note above the issue in a review mail, as HTML and as text."""
    n = issue.number
    waited = (f"It has waited {settings.newsletter.review_reminder_hours} hours. "
              if reminder else "")
    lead = (f"For review: issue {n} is a draft, not yet sent. {waited}Subscribers get it "
            f"once an editor approves it.")
    how = f"Approve it on its editor page, or run: newsletter issue approve {n}"
    if edit_url is None:
        how = f"Approve it with: newsletter issue approve {n} (the dashboard is off)"
    scope = (f"The links open this issue only and work for {PREVIEW_DAYS} days; do not "
             f"forward this mail.")
    text = [lead, how]
    if edit_url:
        text.append(f"Editor page: {edit_url}")
    text += [f"View in browser: {preview_url}", scope, "", "-" * 20, "", ""]
    e = html_lib.escape
    link = 'style="color:#0b57d0;font-weight:bold"'
    buttons = (f'<a {link} href="{e(edit_url)}">Open the editor page to approve</a> · '
               if edit_url else "")
    note = (f'<div style="margin:0 auto;max-width:600px;padding:12px 16px;'
            f'background:#fff4ce;color:#1f1f1f;border:1px solid #d9b200;'
            f'font:14px/1.5 Arial,Helvetica,sans-serif" role="note">'
            f"<strong>{e(lead)}</strong><br>{buttons}"
            f'<a {link} href="{e(preview_url)}">View in browser</a><br>'
            f'<span style="color:#555555">{e(how)}. {e(scope)}</span></div>')
    return note, "\n".join(text)


def _with_note(html: str, note: str) -> str:
    found = _BODY_RE.search(html)
    at = found.end() if found else 0
    return html[:at] + note + html[at:]


def mail_editors(settings: Settings, store: Store, issue: Issue, *, now: datetime,
                 reminder: bool = False) -> list[str]:
    """Mail each editor the issue as readers will get it under a short note with their own
    signed editor link and the draft preview link; the addresses reached (one refused is
    logged and skipped)."""
    links = IssueLinks.from_settings(settings, store)
    html, text = reader_copy(settings, links, issue, now)
    preview = links.preview_url(issue, now)
    identity = identity_from_settings(settings)
    subject = (REMINDER_PREFIX if reminder else REVIEW_PREFIX) + issue.subject
    reached = []
    for editor in settings.newsletter.editors:
        note_html, note_text = _note(settings, issue, links.editor_url(issue, editor, now),
                                     preview, reminder)
        # Not list mail (a notification to an editor): no list fields. The footer's links
        # are the generic manage page, as in a test copy.
        message = MessageTemplate.build(
            identity=identity, subject=subject, html=_with_note(html, note_html),
            text=note_text + text, list_fields="none").render(
            to_address=editor, to_name="", date=now,
            message_id=_message_id(settings, issue, "review", editor, now),
            unsubscribe_url=generic_links(settings), preferences_url=generic_links(settings))
        try:
            send_one(settings, editor, message, what="review mail")
            reached.append(editor)
        except NewsletterError as exc:
            log.event("issue.review_mail_failed", level=30, number=issue.number,
                      error=str(exc))
    return reached


def _digest(issue: Issue) -> str:
    return hashlib.sha256(f"{issue.subject}\0{issue.html}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    """What asking the editors to review an issue did: whom the mail reached, of how many,
    and why nothing was sent when nothing was."""

    number: int
    reached: tuple[str, ...] = ()
    editors: int = 0
    why_not: str = ""  # nothing was to be sent: already approved, this version already mailed

    @property
    def failed(self) -> bool:
        """Mail was due and reached nobody."""
        return not self.reached and not self.why_not

    def line(self) -> str:
        """'review requested from 2 editors', or why not, for what a build says."""
        if self.why_not:
            return self.why_not
        if not self.reached:
            return (f"the review mail reached none of the {plural(self.editors, 'editor')} "
                    f"(see the log)")
        missed = self.editors - len(self.reached)
        return (f"review requested from {plural(len(self.reached), 'editor')}"
                + (f" ({missed} not reached: see the log)" if missed else ""))


def request_review(settings: Settings, store: Store, number: int, *, actor: str = "scheduler",
                   now: datetime | None = None, again: bool = False) -> ReviewRequest:
    """Mail the editors the draft, unless they already have this very version (a rebuild
    finding nothing new sends nothing) or `again` (an operator's resend, with fresh links);
    records review_sent and restarts the reminder clock."""
    now = now or now_utc()
    issue = _issue(store, number)
    if issue.approved_at is not None:
        return ReviewRequest(number, why_not=f"already approved by {issue.approved_by} "
                                             f"({issue.approved_at:%Y-%m-%d %H:%M %Z})")
    if issue.status not in APPROVABLE:
        return ReviewRequest(number, why_not=f"issue {number} is {issue.status}: nothing to "
                                             f"review")
    digest = _digest(issue)
    if not again and issue.review_sent_at is not None and any(
            e.action == "review_sent" and e.detail.get("version") == digest
            for e in store.issue_history(number)):
        return ReviewRequest(number, why_not=f"the editors have had this version for review "
                                             f"since {issue.review_sent_at:%Y-%m-%d %H:%M %Z}")
    reached = mail_editors(settings, store, issue, now=now)
    if reached:
        store.set_issue_fields(number, now, expect=APPROVABLE, review_sent_at=now,
                               reminded_at=None)
        store.record_issue_event(number, now, IssueEventDraft(
            actor, "review_sent", {"to": reached, "version": digest}))
    log.event("issue.review_sent", level=20 if reached else 30, number=number,
              editors=len(reached))
    return ReviewRequest(number, tuple(reached), len(settings.newsletter.editors))


def review_by_hand(settings: Settings, store: Store, number: int, *, actor: str,
                   now: datetime | None = None) -> ReviewRequest:
    """An operator's `issue review N`: the review mail again, with fresh links, even if the
    editors had this version; refused (one line) when there is nothing to review."""
    if not settings.newsletter.review:
        raise NewsletterError("review mode is off ([newsletter] review = false): nothing "
                              "awaits approval; `issue send N --to ADDRESS` sends a test copy")
    _awaiting(store, number, "review")
    return request_review(settings, store, number, actor=actor, now=now, again=True)


def remind_editors(settings: Settings, store: Store, now: datetime) -> list[int]:
    """Once per draft: remind the editors of an issue that has waited review_reminder_hours
    since its review mail without an approval. The numbers reminded."""
    n = settings.newsletter
    if not n.review or not n.review_reminder_hours:
        return []
    wait = timedelta(hours=n.review_reminder_hours)
    reminded = []
    for issue in store.list_issues(limit=20, statuses=APPROVABLE):
        if issue.approved_at is not None or issue.reminded_at is not None \
                or issue.review_sent_at is None or now - issue.review_sent_at < wait:
            continue
        # Claimed before mailing: a failure costs this one reminder, never a stream of them.
        if not store.set_issue_fields(issue.number, now, expect=APPROVABLE, reminded_at=now):
            continue
        reached = mail_editors(settings, store, issue, now=now, reminder=True)
        store.record_issue_event(issue.number, now, IssueEventDraft("scheduler", "reminder", {
            "to": reached,
            "waited_hours": round((now - issue.review_sent_at).total_seconds() / 3600, 1)}))
        reminded.append(issue.number)
    return reminded


# -- approval ------------------------------------------------------------------------------

def _awaiting(store: Store, number: int, what: str) -> Issue:
    """The issue, if it still awaits an approval: nothing of it sent, nobody approved it."""
    issue = _issue(store, number)
    assert issue.id is not None
    if issue.status not in APPROVABLE or any(store.delivery_counts(issue.id).values()):
        raise NewsletterError(f"issue {number} is {issue.status}: nothing to {what} (only a "
                              f"draft, scheduled or paused issue not yet sending)")
    if issue.approved_at is not None:
        raise NewsletterError(f"issue {number} is already approved (by {issue.approved_by}, "
                              f"{issue.approved_at:%Y-%m-%d %H:%M %Z})")
    return issue


@dataclass(frozen=True, slots=True)
class Approval:
    issue: Issue
    send_now: bool  # the caller starts sending it; else it is scheduled for issue.send_at


def approve_issue(store: Store, number: int, *, actor: str,
                  now: datetime | None = None) -> Approval:
    """Record who approved the issue; it goes at its send time if that is still ahead
    (status scheduled), else now (the caller starts sending: its own way of delivering)."""
    now = now or now_utc()
    issue = _awaiting(store, number, "approve")
    later = issue.send_at is not None and issue.send_at > now
    if not store.set_issue_fields(number, now, expect=(issue.status,), approved_at=now,
                                  approved_by=actor):
        raise NewsletterError(f"issue {number} changed meanwhile: look at it again")
    if later and issue.status != "scheduled":
        store.set_issue_status(number, "scheduled", now, expect=(issue.status,))
    store.record_issue_event(number, now, IssueEventDraft(actor, "approve", {
        "status": {"from": issue.status, "to": "scheduled" if later else "sending"},
        "send_at": issue.send_at.isoformat() if later and issue.send_at else None}))
    log.event("issue.approved", number=number, send_now=not later)
    return Approval(_issue(store, number), send_now=not later)


def approve_and_send(store: Store, number: int, actor: str,
                     send: Callable[[int, str], object]) -> Issue:
    """approve_issue, then `send(number, actor)` when it is due now (the web app's way of
    starting a delivery); the issue as it stands after."""
    if approve_issue(store, number, actor=actor).send_now:
        send(number, actor)
    return _issue(store, number)
