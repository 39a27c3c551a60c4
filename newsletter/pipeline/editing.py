"""Editors shape an issue before it goes: subject, preheader, intro note and its articles."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from newsletter import log
from newsletter.collect.sanitize import one_line, shorten
from newsletter.compose.issue import default_intro
from newsletter.compose.render import SIZE_LIMIT
from newsletter.config import Settings
from newsletter.errors import BadValue, NewsletterError
from newsletter.models import Article, Issue, IssueEventDraft, IssueSection
from newsletter.pipeline.collecting import now_utc
from newsletter.pipeline.history import HistoryEntry as HistoryEntry
from newsletter.pipeline.history import describe
from newsletter.pipeline.history import issue_history as issue_history
from newsletter.pipeline.issues import issue_rules, render_counted
from newsletter.pipeline.publishing import refresh_site
from newsletter.store.database import Store
from newsletter.words import plural

# An issue can be edited until its first ledger row is written: a draft, a scheduled issue,
# or one paused before it started sending (store.replace_issue_if checks both at the save).
EDITABLE = ("draft", "scheduled", "paused")
FIELDS = ("subject", "preheader", "intro", "articles")
SUBJECT_MAX = 200  # characters; a longer subject is cut off by every inbox anyway
PREHEADER_MAX = 300
INTRO_MAX_BYTES = 20 * 1024  # UTF-8 bytes of Markdown: a note, not an article
ARTICLES_MAX = 500


class IssueLocked(NewsletterError):
    """The issue has started sending, is sent or cancelled: it can no longer be edited (the
    admin API's 409)."""


class EditRefused(BadValue):
    """The changes are not valid, or the edited email would not fit (the admin API's 400)."""


class NoArticles(EditRefused):
    """Every article was removed: an issue needs one (the operator may cancel it instead;
    an editor with the issue's link may not, and is told something else)."""


class EditConflict(NewsletterError):
    """The save names an older version of the issue than the stored one: someone changed
    it since the editor opened it (the admin API's 409). Nothing was saved."""

    def __init__(self, text: str, by: str = "") -> None:
        super().__init__(text)
        self.by = by  # " by dashboard 127.0.0.1 at 23:41 UTC"; "" when nobody is recorded


def version_of(issue: Issue) -> str:
    """The version of what an editor changes: subject, preheader, intro and the articles in
    order with their sections (the issue read with its articles). The editor page and GET
    /admin/api/issues/N give it; a save naming another one was made from an older copy."""
    content = [issue.subject, issue.preheader, issue.intro,
               [[s.name, [a.id for a in s.articles]] for s in issue.sections]]
    text = json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def is_version(issue: Issue, version: str) -> bool:
    """Whether `version` (as a client sends it: spaces or ETag quotes around it) names what
    the issue holds now."""
    return version.strip().strip('"') == version_of(issue)


def generated_preheader(settings: Settings, sections: Sequence[IssueSection]) -> str:
    """The preheader a build computes for these sections when none is configured ("This
    issue: 2 articles in Economy and Technology."), through compose's own function."""
    return one_line(default_intro(sections, issue_rules(settings)))


@dataclass(frozen=True, slots=True)
class EditResult:
    """The issue as saved (or as it was, when nothing changed) and what changed, in words."""

    issue: Issue
    changes: tuple[str, ...] = ()
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)  # as the history records it
    note: str = ""  # said when the order given was regrouped to keep sections whole

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def edit_issue(settings: Settings, store: Store, number: int, changes: Mapping[str, Any],
               actor: str, *, now: datetime | None = None) -> EditResult:
    """Apply `changes` (any of subject, preheader, intro, articles) to issue `number`.

    `articles` is the issue's article ids in the new order: ids left out are removed, ids
    not yet in the issue are added (any stored article). The issue's sections then appear in
    the order of their first article in the list, and within a section the articles keep
    their order in the list: a section stays whole, as readers who chose sections get it.

    The issue is rendered once; an edit whose email would leave articles out to stay under
    the size budget is refused (EditRefused) and nothing is saved, so what the editor
    arranged is what every reader gets. IssueLocked when it is no longer editable (sending,
    sent, cancelled, or sending began while this ran): then too it stays as it was.

    `changes` may name the `version` (version_of) the editor started from: when the issue
    has changed since, EditConflict and nothing is saved. Without it the last save wins.
    When the articles change and the preheader is still the one the build generated for
    the old ones, it is generated again for the new ones.
    """
    now = now or now_utc()
    unknown = sorted(set(changes) - set(FIELDS) - {"version"})
    if unknown:
        raise EditRefused(f"cannot edit {', '.join(map(repr, unknown))}: give any of "
                          f"{', '.join(FIELDS)}")
    version = changes.get("version") or None  # "" (a form without one) names none
    if version is not None and not isinstance(version, str):
        raise EditRefused("version must be the string GET /admin/api/issues/N gave")
    issue = store.get_issue(number)
    if issue is None:
        raise NewsletterError(f"issue {number}: no such issue (see `newsletter issue list`)")
    _check_editable(store, issue)
    if version is not None and not is_version(issue, version):
        raise conflict(store, issue, now)
    edited = replace(issue)
    detail: dict[str, Any] = {}
    if "subject" in changes:
        edited.subject = _one_line("subject", changes["subject"], SUBJECT_MAX, required=True)
    if "preheader" in changes:
        edited.preheader = _one_line("preheader", changes["preheader"], PREHEADER_MAX)
    if "articles" in changes:
        ids = _ids(changes["articles"])
        edited.sections = arrange(ids, _known(store, issue, ids, settings))
        detail.update(_article_changes(issue.articles, edited.articles))
        # The build's own preheader describes the articles it chose: when it is still
        # exactly that, it follows the new ones. An editor's preheader is never touched.
        if edited.preheader == issue.preheader and \
                issue.preheader == generated_preheader(settings, issue.sections):
            edited.preheader = generated_preheader(settings, edited.sections)
            detail["preheader_generated"] = edited.preheader != issue.preheader
    for name in ("subject", "preheader"):
        if getattr(edited, name) != getattr(issue, name):
            detail[name] = [getattr(issue, name), getattr(edited, name)]
    if not detail.get("preheader_generated"):
        detail.pop("preheader_generated", None)
    if "intro" in changes:
        edited.intro = _intro(changes["intro"])
        if edited.intro != issue.intro:
            detail["intro"] = ("added" if not issue.intro else
                               "removed" if not edited.intro else "changed")
    regrouped = "articles" in changes and \
        [a.id for a in edited.articles] != [str(i).strip() for i in changes["articles"]]
    note = ("sections stay whole: each section's articles follow its first one"
            if regrouped else "")
    said = f" ({note})" if note else ""
    if not detail:
        return EditResult(issue, (), f"issue {number}: nothing changed{said}", note=note)
    _render_within_budget(settings, edited)
    edited.edited_at = now
    if issue.approved_at is not None:
        # What was approved is not what it holds now: it must be approved again.
        detail["approval"] = f"withdrawn (approved by {issue.approved_by or 'someone'})"
    event = IssueEventDraft(actor, "edit", detail)
    # With a version, only while no other save came between (the row's edited_at is still
    # the one read): two saves from the same copy cannot both pass the check above.
    read_at = issue.edited_at if version is not None else False
    if not store.replace_issue_if(edited, now, statuses=EDITABLE, event=event,
                                  was_edited_at=read_at):
        current = store.get_issue(number)
        if version is not None and current is not None and current.status in EDITABLE and \
                current.edited_at != issue.edited_at:
            raise conflict(store, current, now)
        raise IssueLocked(f"issue {number} started sending while it was being edited (it "
                          f"is {current.status if current else 'gone'} now): it was not edited")
    if issue.approved_at is not None:
        store.set_issue_fields(number, now, approved_at=None, approved_by=None)
        refresh_site(settings, store, now=now)  # its send time is no longer promised
    lines = tuple(describe("edit", detail))
    log.event("issue.edited", number=number, actor=actor, changes=len(lines))
    saved = store.get_issue(number) or edited
    return EditResult(saved, lines, f"edited issue {number}: {'; '.join(lines)}{said}", detail,
                      note)


def conflict(store: Store, issue: Issue, now: datetime) -> EditConflict:
    """"Issue 2 was changed by dashboard 127.0.0.1 at 23:41 UTC since you opened it; …":
    who last changed its content (an edit or a rebuild), from its history."""
    last = next((e for e in reversed(store.issue_history(issue.number))
                 if e.action in ("edit", "build")), None)
    by = ""
    if last is not None:
        at = last.at.strftime("%H:%M" if last.at.date() == now.date() else "%Y-%m-%d %H:%M")
        by = f" by {last.actor} at {at} UTC"
    return EditConflict(f"Issue {issue.number} was changed{by} since you opened it; reload "
                        f"to see their changes", by)


def _check_editable(store: Store, issue: Issue) -> None:
    started = issue.status == "paused" and issue.id is not None and \
        sum(store.delivery_counts(issue.id).values()) > 0
    if issue.status not in EDITABLE or started:
        why = "it started sending before it was paused" if started else f"it is {issue.status}"
        raise IssueLocked(f"issue {issue.number} can no longer be edited: {why} (only a "
                          f"draft, scheduled or paused issue that has not started sending can)")


# -- validation ---------------------------------------------------------------------------


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise EditRefused(f"{name} must be a string")
    return value


def _one_line(name: str, value: Any, limit: int, *, required: bool = False) -> str:
    text = _text(name, value).strip()
    if len(text.splitlines()) > 1:
        raise EditRefused(f"{name} must be one line (it becomes a mail header or the "
                          f"inbox preview)")
    if any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in text.replace("\t", " ")):
        raise EditRefused(f"{name} must not hold control characters")
    if required and not text:
        raise EditRefused(f"{name} must not be empty")
    if len(text) > limit:
        raise EditRefused(f"{name} is {len(text)} characters: at most {limit}")
    return text.replace("\t", " ")


def _intro(value: Any) -> str:
    text = _text("intro", value).replace("\r\n", "\n").replace("\r", "\n").replace("\0", "")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > INTRO_MAX_BYTES:
        raise EditRefused(f"intro is {size:,} bytes: at most {INTRO_MAX_BYTES:,} (a note "
                          f"at the top, not an article)")
    if any(0xd800 <= ord(c) <= 0xdfff for c in text):
        raise EditRefused("intro is not valid Unicode text")
    return text.strip()


def _ids(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise EditRefused("articles must be a list of article ids (strings), in the new order")
    ids = [i.strip() for i in value]
    if not ids:
        raise NoArticles("articles is empty: an issue needs at least one article (cancel "
                         "the issue instead)")
    if len(ids) > ARTICLES_MAX:
        raise EditRefused(f"articles lists {len(ids)} ids: at most {ARTICLES_MAX}")
    twice = [i for i, n in Counter(ids).items() if n > 1]
    if twice:
        raise EditRefused(f"articles lists {_names(twice)} more than once")
    return ids


def _names(ids: Sequence[str]) -> str:
    shown = [repr(i[:40]) for i in ids[:10]]
    more = len(ids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _known(store: Store, issue: Issue, ids: Sequence[str],
           settings: Settings) -> dict[str, tuple[Article, str]]:
    """id → (article, its section in the issue) for every id; EditRefused naming the rest."""
    known = {a.id: (a, s.name) for s in issue.sections for a in s.articles}
    wanted = [i for i in ids if i not in known]
    found = store.articles_by_ids(wanted) if wanted else {}
    missing = [i for i in wanted if i not in found]
    if missing:
        raise EditRefused(f"no stored article has the id {_names(missing)}")
    untitled = settings.newsletter.untitled_section
    known.update((i, (a, a.section or untitled)) for i, a in found.items())
    return known


def arrange(ids: Sequence[str],
            known: Mapping[str, tuple[Article, str]]) -> tuple[IssueSection, ...]:
    """Sections in the order of their first article in `ids`; each section's articles in
    their order in `ids`. ["w2", "e1", "w1"] gives World [w2, w1], then Economy [e1]."""
    by_section: dict[str, list[Article]] = {}
    for i in ids:
        article, section = known[i]
        by_section.setdefault(section, []).append(article)
    return tuple(IssueSection(name, tuple(arts)) for name, arts in by_section.items())


def _article_changes(before: Sequence[Article], after: Sequence[Article]) -> dict[str, Any]:
    old, new = [a.id for a in before], [a.id for a in after]
    old_set, new_set = set(old), set(new)
    out: dict[str, Any] = {}
    removed = [{"id": a.id, "title": a.title} for a in before if a.id not in new_set]
    added = [{"id": a.id, "title": a.title} for a in after if a.id not in old_set]
    if removed:
        out["removed"] = removed
    if added:
        out["added"] = added
    if [i for i in old if i in new_set] != [i for i in new if i in old_set]:
        out["reordered"] = True
    if out:
        out["articles"] = new
    return out


def _render_within_budget(settings: Settings, issue: Issue) -> None:
    try:
        rendered = render_counted(settings, issue)
    except NewsletterError as exc:  # the template and the note alone are over the budget
        raise EditRefused(f"issue {issue.number}: {exc}: shorten the intro") from None
    if not rendered.omitted:
        return
    total = len(issue.articles)
    fit = total - rendered.omitted
    first_out = issue.articles[fit]
    note = ", or shorten the intro" if issue.intro else ""
    raise EditRefused(
        f"issue {issue.number}: the edited email would be over the {SIZE_LIMIT // 1000} KB "
        f"limit: only the first {fit} of {plural(total, 'article')} fit, even with summaries "
        f"left out; remove {rendered.omitted} (from “{shorten(first_out.title, 60)}”, "
        f"id {first_out.id}, on){note}: nothing was saved")
