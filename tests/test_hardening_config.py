"""Hardening, configuration: every bad file stops `newsletter config check` with exit status 2
and one line on stderr naming the file, the key and what was expected; secrets never shown.

load_settings() itself is tested in test_config.py; here the command an operator runs is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from newsletter.cli.main import cli

BASE = '[publication]\nname = "Test"\nbase_url = "https://example.org/"\n'


def check(path: Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(cli, ["--config", str(path), "config", "check"])


def one_line_error(result: Result, path: Path | str, *phrases: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"error: {path}"), line
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    return line


BAD_FILES = [
    ("[publication\nname=", ["invalid TOML"]),
    ("\x00\x01binary", ["invalid TOML"]),
    ('[publication]\nname = "x"\n', ["publication.base_url: missing required key"]),
    (BASE + '[smtp]\nport = "25"', ["smtp.port: expected an integer, got '25'"]),
    (BASE + "[smtp]\nport = 70000", ["smtp.port: expected at most 65535, got 70000"]),
    (BASE + "[smtp]\nport = 25.0", ["smtp.port: expected an integer"]),
    (BASE + "[smtp]\nrate = -1", ["smtp.rate: expected at least 0"]),
    (BASE + "[smtp]\nrate = nan", ["smtp.rate: expected a number, got nan"]),
    (BASE + "[collect]\ndeadline = inf", ["collect.deadline: expected a number, got inf"]),
    (BASE + '[collect]\nallow_private_networks = "yes"', ["expected true or false"]),
    (BASE + "[smtp]\nfallback_hosts = \"a:25\"", ["expected a list of strings"]),
    (BASE + "[smtp]\nhost = [1]", ["smtp.host: expected a string"]),
    ("smtp = 1\n" + BASE, ["smtp: expected a table, got 1"]),
    (BASE + "[smtp]\nhots = \"x\"", ["smtp.hots: unknown key (expected one of host"]),
    (BASE + "[smpt]\nhost = \"x\"", ["[smpt]: unknown section"]),
    (BASE + '[schedule]\ntimezone = "Mars/Olympus"', ["schedule.timezone: expected an IANA"]),
    (BASE + '[schedule]\ntimezone = "../../etc/passwd"', ["schedule.timezone"]),
    (BASE + '[schedule]\nissue_cron = "0 25 * * fri"', ["schedule.issue_cron: expected a "
                                                       "crontab line"]),
    (BASE + '[schedule]\nissue_cron = "every friday"', ["schedule.issue_cron"]),
    (BASE + '[schedule]\nissue_cron = "0 9 31 2 *"', ["never matches a date"]),
    (BASE + '[[sources]]\ntype = "feed"\nurl = "file:///etc/passwd"',
     ["sources[0].url: expected an absolute http(s) URL"]),
    (BASE + '[[sources]]\ntype = "mailbox"\npath = "x"', ["sources[0].type: expected one of"]),
    (BASE + '[feeds]\npublic_url = "javascript:alert(1)"', ["feeds.public_url"]),
    (BASE + '[server]\nforwarded_allow_ips = ["nginx.internal"]',
     ["server.forwarded_allow_ips: expected IP addresses or networks", "'nginx.internal'"]),
    (BASE.replace('"Test"', '"Te\\u0001st"'), ["publication.name: expected text without "
                                               "control characters"]),
    (BASE.replace('"https://example.org/"', '"ftp://example.org/"'), ["publication.base_url"]),
]


@pytest.mark.parametrize(("text", "phrases"), BAD_FILES,
                         ids=[f"{i}-{p[0][:24]}" for i, (_, p) in enumerate(BAD_FILES)])
def test_bad_files_stop_config_check_with_one_line(tmp_path: Path, text: str,
                                                   phrases: list[str]) -> None:
    path = tmp_path / "n.toml"
    path.write_text(text, encoding="utf-8")
    one_line_error(check(path), path, *phrases)


def test_missing_unreadable_and_directory_configs(tmp_path: Path) -> None:
    one_line_error(check(tmp_path / "absent.toml"), tmp_path / "absent.toml", "not found")
    one_line_error(check(tmp_path), tmp_path, "cannot read")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(BASE.encode() + b'[mail]\nfrom_name = "Caf\xe9"\n')
    one_line_error(check(latin), latin, "cannot read")
    # A byte order mark (as Windows editors write one) is not an error.
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert check(bom).exit_code == 0


@pytest.mark.parametrize(("name", "value", "phrase"), [
    ("NEWSLETTER_SMTP_PORT", "twenty-five", "expected an integer, got 'twenty-five'"),
    ("NEWSLETTER_SMTP_PORT", "70000", "environment NEWSLETTER_SMTP_PORT: expected at most "
                                      "65535"),
    ("NEWSLETTER_MAIL_SMTPUTF8", "ture", "NEWSLETTER_MAIL_SMTPUTF8: expected true or false"),
    ("NEWSLETTER_COLLECT_ALLOW_PRIVATE_NETWORKS", "maybe", "expected true or false"),
    ("NEWSLETTER_COLLECT_TIMEOUT", "nan", "environment NEWSLETTER_COLLECT_TIMEOUT: expected a "
                                          "number"),
])
def test_bad_environment_overrides_are_refused(tmp_path: Path, name: str, value: str,
                                               phrase: str) -> None:
    path = tmp_path / "n.toml"
    path.write_text(BASE, encoding="utf-8")
    result = check(path, {name: value})
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert phrase in result.stderr, result.stderr


def test_secrets_are_masked_and_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text(BASE + """
[storage]
database_url = "postgresql+psycopg://newsletter:db-Pass-1234@db.internal/newsletter"
[smtp]
password = "smtp-Pass-5678"
[secrets]
admin_token = "admin-Token-abcdefghijklmnop"
""", encoding="utf-8")
    env = {"NEWSLETTER_SECRETS_SECRET_KEY": "env-Key-0123456789abcdef"}
    result = check(path, env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout.split("\n", 1)[1])
    for secret in ("db-Pass-1234", "smtp-Pass-5678", "admin-Token-abcdefghijklmnop",
                   "env-Key-0123456789abcdef"):
        assert secret not in result.output
    assert shown["storage"]["database_url"] == (
        "postgresql+psycopg://newsletter:********@db.internal/newsletter")
    assert shown["smtp"]["password"] == shown["secrets"]["secret_key"] == "********"
    assert shown["smtp"]["username"] == "" and shown["mail"]["dkim_key_path"] == ""
    # A secret of the wrong type, or with a control character, is refused without showing it.
    path.write_text(BASE + "[smtp]\npassword = 12345678\n", encoding="utf-8")
    line = one_line_error(check(path), path, "smtp.password: expected a string")
    assert "12345678" not in line
    path.write_text(BASE, encoding="utf-8")
    line = one_line_error(check(path, {"NEWSLETTER_SMTP_PASSWORD": "pw\x07bell-9876"}),
                          "environment NEWSLETTER_SMTP_PASSWORD",
                          ": expected text without control characters")
    assert "9876" not in line


def test_security_doc_cites_only_tests_that_exist() -> None:
    """docs/security.md lists, for each promise, the tests that prove it: they must exist."""
    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "security.md").read_text("utf-8")
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", doc)
    assert len(cited) > 100
    missing = [f"{f}::{name}" for f, name in cited
               if not re.search(rf"^(async )?def {name}\(", (root / f).read_text("utf-8"), re.M)]
    assert missing == []
