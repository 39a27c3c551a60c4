"""Readers' choices of sections as messages: each joined once from blocks inlined once."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from newsletter import log
from newsletter.config import Settings
from newsletter.deliver.dkim import signer_from_settings
from newsletter.deliver.mail import MailIdentity, MessageTemplate
from newsletter.models import Issue, IssueSection

if TYPE_CHECKING:
    from newsletter.compose.blocks import Choice, IssueBlocks

NONE_HERE = -1  # the key of a choice with no section in this issue: no message


class Variants:
    """One MessageTemplate per distinct choice of sections. The whole issue (no choice, or
    every section) is the one built and inlined with the issue; any other choice is joined
    from blocks inlined once per issue (compose/blocks.py) and encoded once (deliver/mail.py's
    Piece), so a new variant costs a join, not a render: an issue's cost grows with its
    sections and articles, not with the choices its readers make."""

    # Variants kept at once. Each holds references to shared pieces (under 1 KB of its own),
    # so this bounds memory when every reader is a variant of 2^16; one dropped and met again
    # is joined again, which costs about what a join costs.
    KEEP = 8192

    def __init__(self, settings: Settings, issue: Issue, identity: MailIdentity) -> None:
        self.settings, self.issue, self.identity = settings, issue, identity
        self.dkim = signer_from_settings(settings.mail)
        # A choice names sections case-insensitively; a name's bits are the sections that
        # carry it exactly (the last spelling wins, as it always has).
        names = {s.name.casefold(): s.name for s in issue.sections}
        self.bits: dict[str, int] = dict.fromkeys(names, 0)
        for i, section in enumerate(issue.sections):
            if names[section.name.casefold()] == section.name:
                self.bits[section.name.casefold()] |= 1 << i
        self.every = sum(self.bits.values())
        self.cache: dict[int, MessageTemplate | None] = {}
        self.seen: set[int] = set()  # every distinct choice met (a dry run counts them)
        self.full: MessageTemplate | None = None
        self.blocks: IssueBlocks | None = None
        self.whole_renders = False  # set when the blocks cannot be trusted

    def key(self, chosen: tuple[str, ...]) -> int:
        """0: the whole issue (nothing chosen, or every section); NONE_HERE: nothing of this
        issue; else the bits of the chosen sections."""
        if not chosen:
            return 0
        mask = 0
        for name in chosen:
            mask |= self.bits.get(name.casefold(), 0)
        return NONE_HERE if not mask else 0 if mask == self.every else mask

    def __call__(self, chosen: tuple[str, ...]) -> MessageTemplate | None:
        key = self.key(chosen)
        try:
            return self.cache[key]
        except KeyError:
            pass
        built = self.cache[key] = self._build(key)
        self.seen.add(key)
        if len(self.cache) > self.KEEP:
            del self.cache[next(iter(self.cache))]  # the oldest
        return built

    def _build(self, key: int) -> MessageTemplate | None:
        if key == NONE_HERE:
            return None  # none of this reader's sections is in this issue
        if self.full is None:
            self.full = MessageTemplate.build(identity=self.identity, subject=self.issue.subject,
                                              html=self.issue.html, text=self.issue.text,
                                              dkim=self.dkim)
        if not key:
            return self.full
        chosen = [i for i in range(len(self.issue.sections)) if key >> i & 1]
        choice = None if self.whole_renders else self._choose(chosen)
        if choice is not None:  # a join of pieces encoded once, shared by every variant
            return self.full.with_body(text=[b.text_piece for b in choice.blocks],
                                       html=[b.html_piece for b in choice.blocks])
        from newsletter.pipeline.issues import render_into  # premailer: only if needed

        sections = tuple(IssueSection(self.issue.sections[i].name,
                                      self.issue.sections[i].articles) for i in chosen)
        issue = render_into(self.settings, replace(self.issue, sections=sections))
        return MessageTemplate.build(identity=self.identity, subject=issue.subject,
                                     html=issue.html, text=issue.text, dkim=self.dkim)

    def _choose(self, chosen: list[int]) -> Choice | None:
        """The choice joined from blocks; None (and whole renders from now on) when the
        templates cannot be cut into blocks that join to a whole render."""
        from newsletter.compose.blocks import Uncuttable
        from newsletter.pipeline.issues import issue_blocks  # premailer: only if needed

        try:
            if self.blocks is None:
                blocks = issue_blocks(self.settings, self.issue)
                blocks.verify()  # one choice against a whole render, once per issue
                self.blocks = blocks
            return self.blocks.choose(chosen)
        except Uncuttable as exc:
            self.whole_renders = True
            log.event("issue.variants", 30, number=self.issue.number,
                      detail=f"{exc}; each choice of sections is rendered whole")
            return None
