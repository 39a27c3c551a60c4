"""Operator mistakes in configuration and the database: one line on stderr, non-zero exit.

Run through the real `newsletter` command in a subprocess, as an operator (or systemd) would.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import PG_URL

BASE = """[publication]
name = "Test"
base_url = "https://example.org/"
[feeds]
output_dir = "{tmp}/feeds"
[[sources]]
type = "folder"
path = "{tmp}/articles"
"""
PASSWORD = "s3cret-Pw-778"
# run and serve bind their port first: FREE becomes a free one, so the database is next.
COMMANDS = [["status"], ["run", "--port", "FREE"], ["serve", "--port", "FREE"],
            ["worker", "--once"], ["collect"], ["feeds"], ["issue", "list"],
            ["issue", "status", "1"], ["subscribers", "list"]]


def free_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there any more
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


closed_port = free_port


def write_config(tmp: Path, extra: str = "") -> Path:
    (tmp / "articles").mkdir(exist_ok=True)
    path = tmp / "n.toml"
    path.write_text(BASE.format(tmp=tmp) + extra, encoding="utf-8")
    return path


def newsletter(tmp: Path, *args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    args = tuple(str(free_port()) if a == "FREE" else a for a in args)
    return subprocess.run([sys.executable, "-m", "newsletter", *args], cwd=tmp,
                          env={**clean, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def one_line(proc: subprocess.CompletedProcess[str], *phrases: str, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    line = proc.stderr.strip()
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    assert PASSWORD not in proc.stdout + proc.stderr
    return line


def missing_database_url() -> str:
    """A PostgreSQL URL on the test server (or 127.0.0.1:5432) naming no database."""
    base = PG_URL or "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    engine = sa.create_engine(base)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable: {str(exc).splitlines()[0]}")
    finally:
        engine.dispose()
    return sa.engine.make_url(base).set(database="newsletter_no_such_db").render_as_string(
        hide_password=False)


FORM_MISTAKES = [
    (f"postgres://app:{PASSWORD}@db.internal/news", ["postgres://", "postgresql+psycopg://"]),
    (f"mysql://app:{PASSWORD}@db.internal/news", ["'mysql' is not supported", "SQLite",
                                                  "PostgreSQL"]),
    ("not a url", ["expected a database URL", "'not a url'"]),
    (f"postgresql://app:{PASSWORD}@db.internal/news", ["postgresql+psycopg://"]),
]


@pytest.mark.parametrize(("command", "url", "phrases"), [
    *((["status"], url, phrases) for url, phrases in FORM_MISTAKES),
    *((["run", "--port", "FREE"], url, phrases) for url, phrases in FORM_MISTAKES[:3]),
    *((["config", "check"], url, phrases) for url, phrases in FORM_MISTAKES[1:]),
])
def test_malformed_database_url_is_one_line_naming_the_file_key(
        tmp_path: Path, command: list[str], url: str, phrases: list[str]) -> None:
    config = write_config(tmp_path, f'[storage]\ndatabase_url = "{url}"\n')
    line = one_line(newsletter(tmp_path, "--config", str(config), *command), *phrases)
    assert line.startswith(f"error: {config}: storage.database_url: "), line


def test_malformed_database_url_from_the_environment_names_the_variable(
        tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = newsletter(tmp_path, "--config", str(config), "feeds",
                      env={"NEWSLETTER_STORAGE_DATABASE_URL": "mysql://x@h/db"})
    line = one_line(proc, "'mysql' is not supported")
    assert line.startswith("error: environment NEWSLETTER_STORAGE_DATABASE_URL: "), line


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_refused_port_is_one_line_in_every_command(tmp_path: Path, command: list[str]) -> None:
    url = f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:{closed_port()}/news"
    config = write_config(tmp_path, f'[storage]\ndatabase_url = "{url}"\n')
    line = one_line(newsletter(tmp_path, "--config", str(config), *command), "refused")
    assert line.startswith(f"error: database {url.replace(PASSWORD, '***')}: cannot open"), line


@pytest.mark.parametrize("command", [["status"], ["collect"], ["subscribers", "list"],
                                     ["config", "check", "--connect"]], ids=" ".join)
def test_missing_database_is_one_line(tmp_path: Path, command: list[str]) -> None:
    url = missing_database_url()
    config = write_config(tmp_path, f'[storage]\ndatabase_url = "{url}"\n')
    one_line(newsletter(tmp_path, "--config", str(config), *command),
             '"newsletter_no_such_db" does not exist')


def test_config_check_connects_only_when_asked(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:{closed_port()}/news"
    config = write_config(tmp_path, f'[storage]\ndatabase_url = "{url}"\n')
    plain = newsletter(tmp_path, "--config", str(config), "config", "check")
    assert plain.returncode == 0, plain.stderr
    assert PASSWORD not in plain.stdout
    one_line(newsletter(tmp_path, "--config", str(config), "config", "check", "--connect"),
             "cannot open", "refused")


def test_config_check_connect_on_a_good_database(tmp_path: Path) -> None:
    db = tmp_path / "var" / "n.db"
    config = write_config(tmp_path, f'[storage]\ndatabase_url = "sqlite:///{db}"\n')
    proc = newsletter(tmp_path, "--config", str(config), "config", "check", "--connect")
    assert proc.returncode == 0, proc.stderr
    assert "database reachable" in proc.stdout.splitlines()[0]
    assert db.exists()


def test_config_check_says_when_the_driver_is_not_installed(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[storage]\ndatabase_url = '
                                    '"postgresql+psycopg://app@db.internal/news"\n')
    # An interpreter on which psycopg cannot be imported, as without the 'postgres' extra.
    hide = ("import sys\nclass Hide:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'psycopg':\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from newsletter.cli.main import main\nsys.argv[0] = 'newsletter'\nmain()\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    proc = subprocess.run([sys.executable, "-c", hide, "--config", str(config), "config",
                           "check"], cwd=tmp_path, env=clean, capture_output=True, text=True,
                          timeout=120)
    one_line(proc, "needs the Python package 'psycopg'", "not installed")


# -- the admin token ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [["config", "check"], ["serve", "--port", "FREE"]],
                         ids=" ".join)
def test_short_admin_token_in_the_file_is_refused(tmp_path: Path, command: list[str]) -> None:
    config = write_config(tmp_path, '[secrets]\nadmin_token = "short-tok"\n')
    line = one_line(newsletter(tmp_path, "--config", str(config), *command),
                    "secrets.admin_token", "at least 16 characters", "got 9")
    assert "short-tok" not in line


def test_short_admin_token_in_the_environment_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = newsletter(tmp_path, "--config", str(config), "run", "--port", "FREE",
                      env={"NEWSLETTER_SECRETS_ADMIN_TOKEN": "abc"})
    line = one_line(proc, "at least 16 characters")
    assert line.startswith("error: environment NEWSLETTER_SECRETS_ADMIN_TOKEN: "), line


def serve_banner(tmp: Path, env: dict[str, str]) -> str:
    """What `newsletter serve` prints about the dashboard once it is listening."""
    config = write_config(tmp, f'[storage]\ndatabase_url = "sqlite:///{tmp / "n.db"}"\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "newsletter", "--config", str(config),
                             "serve", "--port", str(port)], cwd=tmp, env={**clean, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("admin dashboard:") or not line:
                return line
        raise AssertionError("serve printed no dashboard line")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_serve_says_the_dashboard_is_off_without_a_token(tmp_path: Path) -> None:
    line = serve_banner(tmp_path, {})
    assert line.startswith("admin dashboard: off"), line
    assert "16" in line


def test_serve_announces_the_dashboard_with_a_good_token(tmp_path: Path) -> None:
    line = serve_banner(tmp_path, {"NEWSLETTER_SECRETS_ADMIN_TOKEN": "a-good-admin-token-0123"})
    assert "/admin/" in line and "off" not in line, line


# -- environment variables ----------------------------------------------------------------


def test_unknown_environment_variable_names_the_closest_setting(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    proc = newsletter(tmp_path, "--config", str(config), "status",
                      env={"NEWSLETTER_FEEDS_MAX_ENTIRES": "10"})
    line = one_line(proc, "did you mean NEWSLETTER_FEEDS_MAX_ENTRIES?")
    assert line.startswith("error: environment NEWSLETTER_FEEDS_MAX_ENTIRES: unknown setting")


def test_variables_that_are_not_settings_are_allowed(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/n.db"\n')
    proc = newsletter(tmp_path, "config", "check",
                      env={"NEWSLETTER_CONFIG": str(config),
                           "NEWSLETTER_TEST_DATABASE_URL": "postgresql+psycopg://x@h/db",
                           "NEWSLETTER_FEEDS_MAX_ENTRIES": "10"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


# -- collect ------------------------------------------------------------------------------


def test_collect_reports_a_broken_article_once_as_a_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/n.db"\n')
    (tmp_path / "articles" / "good.md").write_text(
        "---\ntitle: Good\ndate: 2025-01-01\n---\nBody\n", encoding="utf-8")
    # The YAML mistake is on the file's line 4 (line 3 of the front matter).
    (tmp_path / "articles" / "bad.md").write_text(
        "---\ntitle: Bad\ndate: 2025-01-01\nx: : y\n---\nBody\n", encoding="utf-8")
    proc = newsletter(tmp_path, "--config", str(config), "collect")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    about_bad = [line for line in lines if "bad.md" in line]
    assert len(about_bad) == 1, proc.stderr
    assert " WARNING collect.error " in about_bad[0], about_bad[0]
    assert "(line 4)" in about_bad[0], about_bad[0]
    assert "1 new" in proc.stdout and "1 failed" in proc.stdout


def test_collect_errors_are_logged_at_warning(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from newsletter.config import load_settings
    from newsletter.pipeline import collect
    from newsletter.store.database import Store

    config = write_config(tmp_path, f'[storage]\ndatabase_url = "sqlite:///{tmp_path}/n.db"\n')
    (tmp_path / "articles" / "bad.md").write_text("no front matter\n", encoding="utf-8")
    settings = load_settings(config, environ={})
    store = Store(settings.storage.database_url)
    try:
        with caplog.at_level(logging.INFO, logger="newsletter"):
            report = collect(settings, store)
    finally:
        store.close()
    assert len(report.errors) == 1
    records = [r for r in caplog.records if "bad.md" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING]


def test_read_only_sqlite_file_is_one_line(tmp_path: Path) -> None:
    import sqlite3

    sqlite3.connect(tmp_path / "ro.db").close()  # exists, but is opened read-only below
    url = f"sqlite:///file:{tmp_path / 'ro.db'}?mode=ro&uri=true"
    config = write_config(tmp_path, f'[storage]\ndatabase_url = "{url}"\n')
    one_line(newsletter(tmp_path, "--config", str(config), "issue", "list"),
             f"error: database {url}: ", "readonly database")
