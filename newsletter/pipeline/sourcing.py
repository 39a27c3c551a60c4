"""What every kind of source is given and returns when `collect` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Protocol

from newsletter.config import Settings, Source
from newsletter.models import Article
from newsletter.store.database import Store


@dataclass(slots=True)
class CollectReport:
    new: int = 0
    updated: int = 0
    removed: int = 0  # articles whose file is gone
    unchanged: int = 0
    skipped_files: int = 0  # unchanged on disk since the last run: not parsed again
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(slots=True)
class Run:
    """One collect run, shared by every source kind in it."""

    settings: Settings
    store: Store
    started: datetime
    report: CollectReport
    # Identities of articles whose source owns them (a folder's files, even unchanged
    # ones): an entry of another source with one of these is skipped, never stored over it.
    owned: set[str] = field(default_factory=set)


class SourceKind(Protocol):
    """One `[[sources]] type`: reads all the sources of that type in one call."""

    # Kinds that own their identities run first and fill `Run.owned`.
    owns_identity: ClassVar[bool]

    def collect(self, run: Run, sources: list[Source]) -> list[Article]: ...
