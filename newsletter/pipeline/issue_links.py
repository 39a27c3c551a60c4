"""Signed links to one issue: its draft preview (read-only) and an editor's link (one issue)."""

from __future__ import annotations

import hashlib
import html as html_lib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from newsletter.audience import tokens
from newsletter.config import MIN_ADMIN_TOKEN_CHARS, Settings
from newsletter.models import Issue, now_utc

PREVIEW_PURPOSE = "draft-preview"
EDITOR_PURPOSE = "issue-editor"
# How long a mailed link works. A fresh one goes out with every review mail and reminder.
PREVIEW_DAYS = 7
EDITOR_DAYS = 7
# A valid preview link shows the issue unless it was cancelled (once sending, it is public).
PREVIEWABLE = ("draft", "scheduled", "paused", "sending", "sent")
_ISSUE_NUMBER_MAX = 2**31 - 1


class IssueLookup(Protocol):
    def get_issue(self, number: int, *, with_articles: bool = True) -> Issue | None: ...


def editor_key(settings: Settings) -> bytes | None:
    """The key of editor links, derived from the admin token (as the dashboard's): changing
    the token ends every editor link; None while the dashboard is off (no token)."""
    token = settings.secrets.admin_token
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        return None
    return hashlib.sha256(b"newsletter-issue-editor-v1\0" + token.encode("utf-8")).digest()


def _bound(issue: Issue) -> str:
    """Signed into every link (not carried in it): the issue's row, so a link for issue 3 of
    one database never opens issue 3 of another, or a number used again."""
    return f"issue-id:{issue.id}"


@dataclass(frozen=True)
class IssueLinks:
    """Signs and checks the two links. A preview token (purpose "draft-preview", subject the
    issue number, [secrets] secret_key) lets whoever holds it read that one issue as a web
    page until it expires. An editor token (purpose "issue-editor", subject "number:address",
    a key derived from the admin token) is a session scoped to one issue for one of
    [newsletter] editors: it opens that issue's editor page and preview and approves that
    issue, nothing else; it dies when the address leaves the editors or the token changes."""

    site_url: str
    secret: bytes = b""
    editor_secret: bytes | None = None
    editors: tuple[str, ...] = ()
    store: IssueLookup | None = None

    @classmethod
    def from_settings(cls, settings: Settings, store: IssueLookup | None = None) -> IssueLinks:
        return cls(site_url=settings.site_url, secret=tokens.load_or_create_secret(settings),
                   editor_secret=editor_key(settings),
                   editors=tuple(settings.newsletter.editors), store=store)

    # -- signing --------------------------------------------------------------------------

    def preview_url(self, issue: Issue, now: datetime) -> str:
        token = tokens.sign(self.secret, PREVIEW_PURPOSE, str(issue.number), now,
                            extra=_bound(issue))
        return f"{self.site_url}issues/{issue.number}?preview={token}"

    def editor_url(self, issue: Issue, editor: str, now: datetime) -> str | None:
        """The editor page of `issue` for `editor`; None while the dashboard is off."""
        if self.editor_secret is None:
            return None
        token = tokens.sign(self.editor_secret, EDITOR_PURPOSE, f"{issue.number}:{editor}", now,
                            extra=_bound(issue))
        return f"{self.site_url}admin/issues/{issue.number}/edit?token={token}"

    # -- checking -------------------------------------------------------------------------

    def _issue(self, number: int) -> Issue | None:
        if self.store is None or not 0 <= number <= _ISSUE_NUMBER_MAX:
            return None
        return self.store.get_issue(number)

    def preview_issue(self, number: int, token: str, now: datetime | None = None
                      ) -> Issue | None:
        """Issue `number` if `token` is a valid, unexpired preview token for it (and it was
        not cancelled); None for anything else: unsigned, expired, another issue's."""
        issue = self._issue(number)
        if issue is None or issue.status not in PREVIEWABLE:
            return None
        try:
            subject = tokens.verify(self.secret, token, PREVIEW_PURPOSE,
                                    timedelta(days=PREVIEW_DAYS), now or now_utc(),
                                    extra=_bound(issue))
        except tokens.TokenError:
            return None
        return issue if subject == str(number) else None

    def editor_of(self, number: int, token: str, now: datetime | None = None) -> str | None:
        """The editor address a valid editor token for issue `number` was mailed to, while
        that address is still one of the editors; None for anything else."""
        if self.editor_secret is None or not token:
            return None
        issue = self._issue(number)
        if issue is None:
            return None
        try:
            subject = tokens.verify(self.editor_secret, token, EDITOR_PURPOSE,
                                    timedelta(days=EDITOR_DAYS), now or now_utc(),
                                    extra=_bound(issue))
        except tokens.TokenError:
            return None
        named, _, editor = subject.partition(":")
        current = {e.casefold() for e in self.editors}
        return editor if named == str(number) and editor.casefold() in current else None


def with_view_link(html: str, text: str, archive_url: str, url: str) -> tuple[str, str]:
    """The issue's HTML and text with its archive link ("View in browser", "Read the full
    issue") pointing at `url` instead: every other byte is as subscribers get it."""
    old, new = html_lib.escape(archive_url, quote=True), html_lib.escape(url, quote=True)
    html = html.replace(f'href="{old}"', f'href="{new}"')
    text = re.sub(rf"(?<!\S){re.escape(archive_url)}(?!\S)", lambda _m: url, text)
    return html, text
