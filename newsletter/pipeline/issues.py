"""Build, render and preview newsletter issues from the stored articles."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from newsletter import log, named_fields
from newsletter.compose.blocks import IssueBlocks
from newsletter.compose.issue import IssueRules, make_issue, oldest_late, window_start
from newsletter.compose.render import (
    Masthead,
    RenderedIssue,
    Renderer,
    personalize,
    personalize_text,
)
from newsletter.config import Settings
from newsletter.models import Issue, IssueEventDraft
from newsletter.pipeline.collecting import now_utc
from newsletter.store.database import Store
from newsletter.words import plural


def issue_rules(settings: Settings) -> IssueRules:
    n = settings.newsletter
    return IssueRules(publication=settings.publication.name,
                      lookback=timedelta(days=n.lookback_days), max_articles=n.max_articles,
                      section_order=tuple(n.section_order), subject=n.subject,
                      preheader=n.preheader, untitled_section=n.untitled_section)


def masthead(settings: Settings) -> Masthead:
    p, n = settings.publication, settings.newsletter
    return Masthead(name=p.name, base_url=settings.site_url, language=p.language,
                    direction=n.direction, postal_address=p.postal_address,
                    reason=named_fields.fill(n.reason, {"publication": p.name}))


def renderer(settings: Settings) -> Renderer:
    folder = settings.newsletter.templates_dir
    return Renderer(Path(folder) if folder else None)


def archive_url(settings: Settings, number: int | None = None) -> str:
    base = settings.site_url + "issues/"
    return base if number is None else f"{base}{number}"


def issue_blocks(settings: Settings, issue: Issue) -> IssueBlocks:
    """The issue's email in blocks inlined once, for joining readers' choices of sections."""
    return IssueBlocks(renderer(settings), issue, masthead(settings),
                       archive_url(settings, issue.number))


def render_into(settings: Settings, issue: Issue) -> Issue:
    render_counted(settings, issue)
    return issue


def render_counted(settings: Settings, issue: Issue) -> RenderedIssue:
    """Render both parts into the issue; the record says what gave way to fit the budget
    (`omitted` articles left to the archive, summaries cut to `summary_limit`)."""
    rendered = renderer(settings).render_issue(issue, masthead(settings),
                                               archive_url(settings, issue.number))
    issue.html, issue.text = rendered.html, rendered.text
    return rendered


def fit_line(total: int, sections: int, omitted: int) -> str:
    """'60 articles selected in 4 sections; 46 fit in the email, the other 14 are in the
    archive', or '5 articles in 2 sections' when every one fits."""
    where = plural(sections, "section")
    if not omitted:
        return f"{plural(total, 'article')} in {where}"
    return (f"{plural(total, 'article')} selected in {where}; {total - omitted} fit in the "
            f"email, the other {omitted} {'is' if omitted == 1 else 'are'} in the archive")


_EDITED = ("issue {number} was edited: not rebuilt (add articles to it with an edit, or "
           "cancel it and build again)")


@dataclass(slots=True)
class BuildResult:
    issue: Issue | None
    message: str
    created: bool = False
    # Nothing new since the previous issue: each caller says how to build one anyway in its
    # own terms (a CLI flag, a dashboard checkbox, an API field).
    nothing_new: bool = False


def build_issue(settings: Settings, store: Store, *, force: bool = False,
                now: datetime | None = None, actor: str = "scheduler") -> BuildResult:
    """Build the next issue; rebuilding while the last one is a draft refreshes that draft,
    unless an editor has changed it (pipeline/editing.py): an edited draft is left alone.

    The first issue (none sent or being sent before it) takes the newest articles up to
    [newsletter] max_articles, however old they are, so a fresh install has something to
    show; later issues take what was published since the previous one. `actor` (who asked:
    "scheduler", "cli <user>", "api <ip>", "dashboard <ip>") goes into the issue's history."""
    now = now or now_utc()
    rules = issue_rules(settings)
    latest = store.latest_issue()
    draft = latest if latest and latest.status == "draft" else None
    if draft is not None and draft.edited_at is not None:
        return BuildResult(draft, _EDITED.format(number=draft.number))
    previous = store.latest_issue(exclude=("cancelled", "draft")) if draft else latest
    if previous is None:
        articles = store.latest_articles(rules.max_articles, until=now)  # future ones wait
        if not articles:
            return BuildResult(None, "no articles published yet: nothing to build")
        start = min(a.published for a in articles)
    else:
        start = window_start(previous, now, rules)
        articles = store.articles.articles_for_next_issue(
            after=start, through=previous.number, oldest=oldest_late(previous, rules), until=now)
        if not articles and not force:
            return BuildResult(draft, f"nothing new since issue {previous.number}: no issue "
                                      f"built", nothing_new=True)
        if not articles:
            articles = store.articles_between(now - rules.lookback, now)
            if not articles:
                return BuildResult(None, f"nothing published in the last "
                                         f"{plural(settings.newsletter.lookback_days, 'day')}: "
                                         f"nothing to build")
    number = draft.number if draft else store.next_issue_number()
    issue = make_issue(number=number, articles=articles, start=start, end=now, rules=rules)
    if draft and [a.id for a in draft.articles] == [a.id for a in issue.articles] \
            and draft.subject == issue.subject:
        return BuildResult(draft, f"issue {draft.number} is up to date (draft, "
                                  f"{plural(len(draft.articles), 'article')})")
    issue.id = draft.id if draft else None
    rendered = render_counted(settings, issue)
    total = len(issue.articles)
    event = IssueEventDraft(actor, "build", {"articles": total,
                                             "in_email": total - rendered.omitted,
                                             "rebuilt": bool(draft)})
    if draft is None:
        store.save_issue(issue, now)
        store.record_issue_event(issue.number, now, event)
    else:
        # Only while it is still an unedited draft: an editor's save or a send that began
        # since it was read wins, and the rebuild is dropped.
        if not store.replace_issue_if(issue, now, statuses=("draft",), event=event,
                                      unedited=True):
            current = store.get_issue(draft.number) or draft
            if current.edited_at is not None:
                return BuildResult(current, _EDITED.format(number=draft.number))
            return BuildResult(current, f"issue {draft.number} is {current.status} now: not "
                                        f"rebuilt")
        for name in ("send_at", "review_sent_at", "reminded_at"):
            setattr(issue, name, getattr(draft, name))  # as stored: a rebuild keeps them
        if draft.approved_at is not None:  # approved was what it held before: not this
            store.set_issue_fields(issue.number, now, expect=("draft",), approved_at=None,
                                   approved_by=None)
    verb = "rebuilt" if draft else "built"
    log.event("issue.built", number=issue.number, articles=total, omitted=rendered.omitted,
              rebuilt=bool(draft))
    return BuildResult(issue, f"{verb} issue {issue.number}: "
                              f"{fit_line(total, len(issue.sections), rendered.omitted)} — "
                              f"{issue.subject}", created=not draft)


def write_preview(settings: Settings, issue: Issue, folder: Path) -> tuple[Path, Path]:
    """The issue as one reader would get it, with example personal values filled in."""
    values = {"unsubscribe_url": settings.site_url + "unsubscribe?preview",
              "preferences_url": settings.site_url + "preferences?preview",
              "name": "Reader"}
    folder.mkdir(parents=True, exist_ok=True)
    html_path = folder / f"issue-{issue.number}.html"
    text_path = folder / f"issue-{issue.number}.txt"
    html_path.write_text(personalize(issue.html, **values), encoding="utf-8")
    text_path.write_text(personalize_text(issue.text, **values), encoding="utf-8")
    return html_path, text_path
