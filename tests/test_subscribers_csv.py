"""CSV import and export: BOM, delimiters, quoted newlines, bad rows, formulas, scale."""

from __future__ import annotations

import csv
import io
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from newsletter.audience import subscriptions as subs
from newsletter.audience.subscribers_csv import CsvError, export_csv, import_csv, neutralise
from newsletter.config import Settings
from newsletter.store.database import Store as SubscriberStore

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(make_settings: Callable[..., Settings]) -> Iterator[SubscriberStore]:
    st = SubscriberStore(make_settings().storage.database_url)
    yield st
    st.close()


def write(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def emails(store: SubscriberStore) -> dict[str, tuple[str, str]]:
    return {s.email: (s.name, s.status) for s in store.iter_subscribers()}


def test_bom_semicolons_quoted_newlines(store: SubscriberStore, tmp_path: Path) -> None:
    text = ('\ufeffEmail;Name;Sections\r\n'
            'ann@example.org;"Ann; the\r\nsecond line";World|Tech\r\n'
            'bob@example.org;Bob;\r\n')
    report = import_csv(store, write(tmp_path, text), now=NOW)
    assert (report.rows, report.added, report.invalid) == (2, 2, 0)
    ann = store.get_subscriber_by_key("ann@example.org")
    assert ann is not None
    assert (ann.name, ann.sections, ann.status, ann.consent_method) == (
        "Ann; the second line", ("World", "Tech"), "active", "import")


def test_bad_rows_reported_with_start_line(store: SubscriberStore, tmp_path: Path) -> None:
    text = ("email,name\n"
            "good@example.org,Good\n"          # line 2
            '"bad@@example.org","Two\nlines"\n'  # line 3 (to 4)
            "\n"                                # line 5: blank, skipped
            "trailing@example.org.,x\n"         # line 6
            ",no address\n"                     # line 7
            "jürgen@example.org,J\n"            # line 8
            "also@example.org\n")               # line 9: short row is fine
    report = import_csv(store, write(tmp_path, text), now=NOW)
    assert [line for line, _ in report.errors] == [3, 6, 7, 8]
    assert "SMTPUTF8" in report.errors[3][1]
    assert (report.rows, report.added, report.invalid) == (6, 2, 4)
    assert set(emails(store)) == {"good@example.org", "also@example.org"}


def test_duplicates_merged_and_suppressed_never_resubscribed(store: SubscriberStore,
                                                             tmp_path: Path) -> None:
    gone = subs.subscribe(store, "gone@example.org", "Gone", method="form", ip=None,
                          user_agent=None, now=NOW).subscriber
    store.unsubscribe_subscriber(gone.id, NOW)
    pending = subs.subscribe(store, "wait@example.org", "", method="form", ip="192.0.2.9",
                             user_agent="UA", now=NOW).subscriber
    text = ("email,name\n"
            "Dup@example.org,First\n"
            "gone@example.org,Back?\n"
            "DUP@example.org,Second\n"
            "wait@example.org,Waiting\n"
            "dup@example.org,Third\n")
    report = import_csv(store, write(tmp_path, text), now=NOW, batch_size=2)
    assert (report.added, report.merged, report.suppressed, report.skipped) == (1, 2, 1, 2)
    assert [line for line, _ in report.skipped_rows] == [3, 5]
    got = emails(store)
    assert got["Dup@example.org"] == ("Third", "active")  # the first spelling, the last name
    assert got["gone@example.org"] == ("Gone", "unsubscribed")
    # A form sign-up nobody confirmed stays pending, with the consent the form recorded.
    assert got["wait@example.org"] == ("", "pending")
    assert store.get_subscriber(pending.id).consent_method == "form"  # type: ignore[union-attr]
    # Importing the same file again changes nothing.
    again = import_csv(store, write(tmp_path, text), now=NOW)
    assert (again.added, again.suppressed, again.skipped) == (0, 1, 2)
    assert emails(store) == got


def test_refuses_files_it_cannot_read(store: SubscriberStore, tmp_path: Path) -> None:
    with pytest.raises(CsvError, match="no email column"):
        import_csv(store, write(tmp_path, "name,address\nx,y@example.org\n"), now=NOW)
    with pytest.raises(CsvError, match="header"):
        import_csv(store, write(tmp_path, ""), now=NOW)
    latin1 = "email,name\na@example.org,Zoë\n".encode("latin-1")
    with pytest.raises(CsvError, match="line 2: not UTF-8"):
        import_csv(store, write(tmp_path, latin1), now=NOW)
    with pytest.raises(CsvError, match="cannot read"):
        import_csv(store, tmp_path / "missing.csv", now=NOW)
    assert emails(store) == {}


def test_export_neutralises_formulas_and_round_trips(store: SubscriberStore,
                                                     tmp_path: Path) -> None:
    rows = [("-alice@example.org", "=HYPERLINK(\"http://evil\")"),
            ("bob@example.org", "+1 555"), ("carol@example.org", "@SUM(A1)"),
            ("dan@example.org", "\tTabbed"), ("erin@example.org", "Erin, \"E\"")]
    buf = io.StringIO()
    csv.writer(buf).writerows([("email", "name"), *rows])
    import_csv(store, write(tmp_path, buf.getvalue()), now=NOW)
    out = io.StringIO(newline="")
    assert export_csv(store, out) == 5
    exported = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    by_email = {r["email"]: r for r in exported}
    assert set(by_email) == {"'-alice@example.org", "bob@example.org", "carol@example.org",
                             "dan@example.org", "erin@example.org"}
    assert by_email["'-alice@example.org"]["name"] == "'=HYPERLINK(\"http://evil\")"
    assert by_email["bob@example.org"]["name"] == "'+1 555"
    assert by_email["carol@example.org"]["name"] == "'@SUM(A1)"
    assert by_email["dan@example.org"]["name"] == "Tabbed"  # whitespace collapsed on import
    assert by_email["erin@example.org"]["consent_method"] == "import"
    for row in exported:
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values())
    # Re-importing the export gives back the same addresses, not apostrophe-prefixed ones.
    path = write(tmp_path, out.getvalue(), "export.csv")
    report = import_csv(store, path, now=NOW)
    assert (report.added, report.invalid) == (0, 0)
    assert neutralise("\rx") == "'\rx" and neutralise("plain") == "plain"


def generate(path: Path, rows: int) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("email,name,sections\n")
        for i in range(rows):
            f.write(f"user{i}@example.org,User {i},World\n")
    return path


def test_fifty_thousand_rows(store: SubscriberStore, tmp_path: Path) -> None:
    path = generate(tmp_path / "big.csv", 50_000)
    started = time.monotonic()
    report = import_csv(store, path, now=NOW)
    elapsed = time.monotonic() - started
    assert (report.rows, report.added, report.invalid) == (50_000, 50_000, 0)
    assert store.count_subscribers()["active"] == 50_000
    assert elapsed < 60, f"import took {elapsed:.1f}s"


def peak_import_memory(make_settings: Callable[..., Settings], tmp_path: Path,
                       rows: int) -> int:
    folder = tmp_path / f"m{rows}"
    folder.mkdir()
    path = generate(folder / "in.csv", rows)
    st = SubscriberStore(f"sqlite:///{folder / 'n.db'}")
    try:
        tracemalloc.start()
        import_csv(st, path, now=NOW)
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        st.close()
    return peak


def test_memory_does_not_grow_with_rows(make_settings: Callable[..., Settings],
                                        tmp_path: Path) -> None:
    small = peak_import_memory(make_settings, tmp_path, 10_000)
    large = peak_import_memory(make_settings, tmp_path, 40_000)
    assert large < 2 * small, (small, large)
