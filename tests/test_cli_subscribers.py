"""`newsletter subscribers …` through click's runner, against a real SQLite file."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from newsletter.cli.subscribers import subscribers
from newsletter.config import Settings
from newsletter.store.database import Store as SubscriberStore


@click.group()
@click.option("--config", "config", type=click.Path(path_type=Path))
@click.pass_context
def root(ctx: click.Context, config: Path) -> None:
    """Stands in for `newsletter` until the lead adds the group to it."""
    ctx.obj = {"config": config}


root.add_command(subscribers)


@pytest.fixture
def run(make_settings: Callable[..., Settings], tmp_path: Path) -> Callable[..., Result]:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(root, ["--config", str(settings.path), "subscribers", *args],
                                  catch_exceptions=False)

    return invoke


def db(tmp_path: Path) -> SubscriberStore:
    return SubscriberStore(f"sqlite:///{tmp_path / 'n.db'}")


def test_add_list_remove(run: Callable[..., Result], tmp_path: Path) -> None:
    r = run("add", "Ann@Example.org", "--name", "Ann")
    assert r.exit_code == 0, r.output
    assert "pending confirmation" in r.output and "confirmation mail sent" in r.output
    assert "/confirm?token=" not in r.output  # mailed to the person, not shown here
    mails = [p.read_text() for p in (tmp_path / "outbox").glob("*.eml")]
    assert len(mails) == 1 and "https://ledger.example.org/confirm?token=" in mails[0]
    assert (tmp_path / "secret_key").exists()  # generated beside the database
    r = run("add", "bob@example.org", "--confirmed")
    assert "added, active" in r.output
    r = run("list")
    assert "Ann@example.org  Ann" in r.output and "bob@example.org" in r.output
    assert "1 pending, 1 active" in r.output
    assert "Ann@example.org" not in run("list", "--status", "active").output
    r = run("remove", "ANN@example.org")
    assert r.exit_code == 0 and "deleted" in r.output
    r = run("remove", "ann@example.org")
    assert r.exit_code == 2 and "no such subscriber" in r.output


def test_add_respects_unsubscribe_unless_resubscribed(run: Callable[..., Result],
                                                      tmp_path: Path) -> None:
    run("add", "cy@example.org", "--confirmed")
    store = db(tmp_path)
    try:
        sub = store.get_subscriber_by_key("cy@example.org")
        assert sub is not None
        store.unsubscribe_subscriber(sub.id, datetime.now(UTC))
        for flags in ((), ("--confirmed",)):
            r = run("add", "cy@example.org", *flags)
            assert r.exit_code == 2 and "not added: it is unsubscribed" in r.output
            assert "--resubscribe --reason" in r.output and r.output.count("\n") == 1
        assert store.get_subscriber(sub.id).status == "unsubscribed"  # type: ignore[union-attr]
        r = run("add", "cy@example.org", "--resubscribe")
        assert r.exit_code == 2 and "needs a reason" in r.output
        r = run("add", "cy@example.org", "--resubscribe", "--reason", "asked by phone")
        assert r.exit_code == 0 and "subscribed again (was unsubscribed)" in r.output
        assert store.get_subscriber(sub.id).status == "active"  # type: ignore[union-attr]
    finally:
        store.close()


def test_bad_address_is_one_line(run: Callable[..., Result]) -> None:
    r = run("add", "a@@b")
    assert r.exit_code == 2
    assert r.output.startswith("error: 'a@@b': ") and r.output.count("\n") == 1


def test_import_and_export(run: Callable[..., Result], tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("email;name\nann@example.org;=cmd()\nbad@@x;B\nbob@example.org;Bob\n",
                   encoding="utf-8-sig")
    r = run("import", str(src))
    assert r.exit_code == 1  # some rows were invalid
    assert f"{src}:3: " in r.output
    assert "3 rows: 2 added, 0 merged, 0 skipped, 1 invalid" in r.output
    out = tmp_path / "out.csv"
    r = run("export", "--output", str(out))
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert [(x["email"], x["name"], x["status"]) for x in rows] == [
        ("ann@example.org", "'=cmd()", "active"), ("bob@example.org", "Bob", "active")]
    r = run("export")
    assert r.output.splitlines()[0].startswith("email,name,status")
    r = run("import", str(tmp_path / "missing.csv"))
    assert r.exit_code == 2 and "cannot read" in r.output


def test_dash_is_standard_input_and_output(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    runner = CliRunner()

    def invoke(*args: str, stdin: bytes | None = None) -> Result:
        return runner.invoke(root, ["--config", str(settings.path), "subscribers", *args],
                             input=stdin, catch_exceptions=False)

    r = invoke("import", "-", stdin="email,name\nzoe@example.org,Zoë\nbad@@x,B\n".encode())
    assert r.exit_code == 1
    assert "-:3: " in r.stderr and "2 rows: 1 added" in r.stdout
    out = invoke("export", "--output", "-")
    assert out.exit_code == 0
    # UTF-8 bytes on standard output, as click's text stream wrote them before.
    assert "zoe@example.org,Zoë,active".encode() in out.stdout_bytes
    assert invoke("export").stdout_bytes == out.stdout_bytes
    r = invoke("import", "-", stdin=b"email\nzo\xe9@example.org\n")
    assert r.exit_code == 2 and r.stderr.startswith("error: -: line 2: not UTF-8")
    assert "newsletter-import-" not in r.stderr
