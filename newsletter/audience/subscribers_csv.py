"""Subscriber CSV import and export, streamed in batches so a million rows fit in little memory."""

from __future__ import annotations

import codecs
import csv
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol, TextIO

from newsletter import log
from newsletter.audience.subscriptions import (
    AddressError,
    clean_name,
    clean_sections,
    normalise_address,
)
from newsletter.errors import NewsletterError
from newsletter.models import BatchCounts, ImportRow, Subscriber
from newsletter.words import plural


class SubscriberFile(Protocol):
    """The subscriber queries an import and an export need."""

    def merge_import_batch(self, rows: Sequence[ImportRow], now: datetime, *,
                           actor: str = ...) -> BatchCounts: ...
    def iter_subscribers(self, *, batch: int = ...,
                         statuses: Sequence[str] = ...) -> Iterator[Subscriber]: ...


MAX_REPORTED_ERRORS = 1000  # the count goes on; the list stays bounded for huge bad files
EMAIL_COLUMNS = ("email", "e-mail", "email address")
# Spreadsheets run a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
EXPORT_COLUMNS = ("email", "name", "status", "sections", "consent_at", "consent_method",
                  "consent_ip", "consent_user_agent", "confirmed_at", "unsubscribed_at",
                  "created_at")


SKIP_LABELS = {"pending": "pending confirmation"}
SKIP_REASONS = {
    "pending": "skipped: signed up through the form and not yet confirmed; only the person's "
               "own confirmation makes it active",
    "unsubscribed": "skipped: unsubscribed; an import never subscribes it again",
    "bounced": "skipped: bounced; an import never subscribes it again",
    "complained": "skipped: complained (marked as spam); an import never subscribes it again",
}


class CsvError(NewsletterError):
    """A file that cannot be imported at all (no header, not UTF-8, unreadable)."""


@dataclass(slots=True)
class ImportReport:
    rows: int = 0  # records read, header and blank lines not counted
    added: int = 0
    merged: int = 0  # already subscribed, or repeated in the file: merged into one
    # Left as stored, by status: unsubscribed, bounced and complained are never subscribed
    # again by an import, and a pending form sign-up waits for the person's confirmation.
    skipped_by: dict[str, int] = field(default_factory=dict)
    skipped_rows: list[tuple[int, str]] = field(default_factory=list)  # (line, why), bounded
    invalid: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), bounded

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by.values())

    @property
    def suppressed(self) -> int:
        """Skipped because they opted out or the mail system refused them."""
        return self.skipped - self.skipped_by.get("pending", 0)

    def add_error(self, line: int, reason: str) -> None:
        self.invalid += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((line, reason))

    def add_skipped(self, line: int, status: str) -> None:
        self.skipped_by[status] = self.skipped_by.get(status, 0) + 1
        if len(self.skipped_rows) < MAX_REPORTED_ERRORS:
            self.skipped_rows.append((line, SKIP_REASONS.get(status, status)))

    def summary(self) -> str:
        why = ", ".join(f"{n} {SKIP_LABELS.get(k, k)}" for k, n in sorted(self.skipped_by.items()))
        return (f"{plural(self.rows, 'row')}: {self.added} added, {self.merged} merged, "
                f"{self.skipped} skipped{f' ({why})' if why else ''}, {self.invalid} invalid")


def _check_utf8(path: Path) -> None:
    """Refuse a file that is not UTF-8 before changing anything, naming the first bad line.

    Decoding with errors="replace" instead would import a Latin-1 file's names garbled.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    line += chunk.count(b"\n", 0, max(exc.start, 0))
                    raise CsvError(f"{path}: line {line}: not UTF-8 text; save the file "
                                   f"as CSV UTF-8 and import it again") from None
                line += chunk.count(b"\n")
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise CsvError(f"{path}: ends in the middle of a UTF-8 character") from None
    except OSError as exc:
        raise CsvError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _unneutralise(cell: str) -> str:
    # Undo export's leading apostrophe, so exporting and importing gives the same addresses.
    if len(cell) > 1 and cell[0] == "'" and cell[1] in "=+-@\t\r":
        return cell[1:]
    return cell


def _records(f: TextIO) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """(line where the record starts, its cells or the csv error), header first."""
    header = f.readline()
    # Sniff from the header only: a comma inside a quoted name must not decide it.
    delimiter = ";" if header.count(";") > header.count(",") else ","
    reader = csv.reader(itertools.chain([header], f), delimiter=delimiter, strict=False)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, exc
            continue
        if any(cell.strip() for cell in row):
            yield start, row


def import_csv(store: SubscriberFile, path: str | Path, *, now: datetime,
               batch_size: int = 1000, smtputf8: bool = False,
               actor: str = "") -> ImportReport:
    """Import columns email (required), name and sections ("a|b"); one transaction per batch.

    Rows are read, checked and written batch by batch, so memory does not grow with the
    file. Bad rows are reported with their line number, and so are rows left as stored.
    """
    path = Path(path)
    _check_utf8(path)
    report = ImportReport()
    batch: list[ImportRow] = []

    def flush() -> None:
        counts = store.merge_import_batch(batch, now, actor=actor)
        report.added += counts.added
        report.merged += counts.merged
        for line, status in sorted(counts.skipped):
            report.add_skipped(line, status)
        batch.clear()

    # utf-8-sig drops a spreadsheet's byte order mark; newline="" keeps quoted newlines.
    with open(path, encoding="utf-8-sig", newline="") as f:
        records = _records(f)
        first = next(records, None)
        if first is None or isinstance(first[1], csv.Error):
            raise CsvError(f"{path}: empty or unreadable: the first line must be a header "
                           f"naming an email column")
        names = [cell.strip().lower() for cell in first[1]]
        found = [names.index(n) for n in EMAIL_COLUMNS if n in names]
        if not found:
            raise CsvError(f"{path}: line 1: no email column in the header "
                           f"(found: {', '.join(names) or 'nothing'})")
        email_at = found[0]
        name_at = names.index("name") if "name" in names else None
        sections_at = names.index("sections") if "sections" in names else None
        for line, row in records:
            report.rows += 1
            if isinstance(row, csv.Error):
                report.add_error(line, f"unreadable CSV: {row}")
                continue

            def cell(at: int | None, row: list[str] = row) -> str:
                return _unneutralise(row[at]) if at is not None and at < len(row) else ""

            try:
                email, key = normalise_address(cell(email_at), smtputf8=smtputf8)
            except AddressError as exc:
                report.add_error(line, exc.reason)
                continue
            sections = clean_sections(cell(sections_at).split("|"))
            batch.append(ImportRow(line, email, key, clean_name(cell(name_at)), sections))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    log.event("subscribers_imported", path=path, rows=report.rows, added=report.added,
              merged=report.merged, skipped=report.skipped, invalid=report.invalid)
    return report


def neutralise(cell: str) -> str:
    """A cell a spreadsheet will show as text, never evaluate."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _export_row(sub: Subscriber) -> list[str]:
    def when(value: datetime | None) -> str:
        return value.isoformat() if value else ""

    return [neutralise(v) for v in (
        sub.email, sub.name, sub.status, "|".join(sub.sections), when(sub.consent_at),
        sub.consent_method or "", sub.consent_ip or "", sub.consent_user_agent or "",
        when(sub.confirmed_at), when(sub.unsubscribed_at), when(sub.created_at))]


def export_csv(store: SubscriberFile, out: TextIO, *, batch: int = 1000) -> int:
    """Write every subscriber (header first) as CSV to `out`; return the number of rows.

    Open `out` with newline="" so quoted newlines survive.
    """
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for sub in store.iter_subscribers(batch=batch):
        writer.writerow(_export_row(sub))
        count += 1
    return count
