"""Configuration: validation errors name file, key and expectation; env overrides; docs in sync."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from newsletter.config import effective_settings, load_settings, settings_table
from newsletter.config_docs import example_toml
from newsletter.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BASE = """
[publication]
name = "Test"
base_url = "https://example.org/"
"""
GOOD = BASE + """
[smtp]
port = 2525
password = "hunter2-file"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "n.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_embedded_default_and_example_are_valid() -> None:
    assert load_settings(ROOT / "config/newsletter.toml", environ={}).sources
    assert load_settings(ROOT / "config/newsletter.example.toml", environ={})


def test_example_documents_every_setting() -> None:
    text = (ROOT / "config/newsletter.example.toml").read_text(encoding="utf-8")
    assert text == example_toml(), "run: newsletter config example > config/newsletter.example.toml"
    for section, key, _default, help_text, _secret in settings_table():
        assert help_text.strip(), f"{section}.{key} has no help"
        assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key} undocumented"


@pytest.mark.parametrize(("snippet", "expected"), [
    ('[smtp]\nport = "25"', "smtp.port: expected an integer, got '25'"),
    ("[smtp]\nport = 70000", "smtp.port: expected at most 65535, got 70000"),
    ("[smtp]\nrate = -1", "smtp.rate: expected at least 0, got -1.0"),
    ("[smtp]\nsecurity = \"maybe\"", "smtp.security: expected one of starttls, tls, none"),
    ("[feeds]\nmax_entry = 3", "feeds.max_entry: unknown key"),
    ("[bogus]\nx = 1", "[bogus]: unknown section"),
    ('[[sources]]\ntype = "feed"', "sources[0].url: missing required key"),
    ('[[sources]]\npath = "x"', "sources[0].type: missing required key"),
    ('[schedule]\ntimezone = "Mars/Olympus"', "schedule.timezone: expected an IANA time zone"),
    ('[schedule]\nissue_cron = "0 25 * * fri"', "schedule.issue_cron: expected a crontab line"),
    ('[schedule]\nissue_cron = "every friday"', "schedule.issue_cron: expected a crontab line"),
])
def test_bad_values_give_one_clear_line(tmp_path: Path, snippet: str, expected: str) -> None:
    path = write(tmp_path, BASE + "\n" + snippet + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert expected in message


def test_missing_required_key_and_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"publication\.base_url: missing required key"):
        load_settings(write(tmp_path, '[publication]\nname = "x"\n'), environ={})
    with pytest.raises(ConfigError, match=r"\[publication\]: missing required section"):
        load_settings(write(tmp_path, "[feeds]\nmax_entries = 3\n"), environ={})


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(write(tmp_path, "[publication\nname="), environ={})
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_environment_overrides_and_secret_masking(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"NEWSLETTER_SMTP_PASSWORD": "from-env", "NEWSLETTER_SMTP_PORT": "465"}
    settings = load_settings(path, environ=env)
    assert settings.smtp.password == "from-env"
    assert settings.smtp.port == 465
    shown = effective_settings(settings)
    assert shown["smtp"]["password"] == "********"
    assert "from-env" not in repr(shown)
    with pytest.raises(ConfigError, match="NEWSLETTER_SMTP_PORT: expected an integer"):
        load_settings(path, environ={"NEWSLETTER_SMTP_PORT": "many"})


def test_config_check_command(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    ok = subprocess.run([sys.executable, "-m", "newsletter", "--config", str(path),
                         "config", "check"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "hunter2-file" not in ok.stdout and '"password": "********"' in ok.stdout
    bad = write(tmp_path, GOOD + "\n[feeds]\nmax_entries = \"x\"\n")
    res = subprocess.run([sys.executable, "-m", "newsletter", "--config", str(bad),
                          "config", "check"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "feeds.max_entries: expected an integer" in res.stderr


def test_unknown_environment_setting_suggests_the_real_one(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"^environment NEWSLETTER_FEEDS_MAX_ENTIRES: unknown "
                                          r"setting \(did you mean NEWSLETTER_FEEDS_MAX_ENTRIES"):
        load_settings(path, environ={"NEWSLETTER_FEEDS_MAX_ENTIRES": "10"})
    with pytest.raises(ConfigError, match="NEWSLETTER_<SECTION>_<KEY>"):
        load_settings(path, environ={"NEWSLETTER_ZZZ": "1"})
    allowed = {"NEWSLETTER_CONFIG": str(path), "NEWSLETTER_TEST_DATABASE_URL": "x",
               "NEWSLETTERX": "not ours", "NEWSLETTER_SMTP_PORT": "2526"}
    assert load_settings(None, environ=allowed).smtp.port == 2526


@pytest.mark.parametrize(("name", "value", "toml", "expected"), [
    ("NEWSLETTER_NEWSLETTER_SEED_LIST", "[]", '[newsletter]\nseed_list = ["[]"]',
     "NEWSLETTER_NEWSLETTER_SEED_LIST: expected email addresses such as editor@example.org "
     "(no name, no <>), got '[]'"),
    ("NEWSLETTER_NEWSLETTER_MAX_ARTICLES", "0", "[newsletter]\nmax_articles = 0",
     "NEWSLETTER_NEWSLETTER_MAX_ARTICLES: expected at least 1, got 0"),
    ("NEWSLETTER_SCHEDULE_TIMEZONE", "Mars/Olympus", '[schedule]\ntimezone = "Mars/Olympus"',
     "NEWSLETTER_SCHEDULE_TIMEZONE: expected an IANA time zone such as Europe/Oslo, got "
     "'Mars/Olympus'"),
])
def test_a_bad_environment_value_is_named_as_its_variable_not_the_file(
        tmp_path: Path, name: str, value: str, toml: str, expected: str) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={name: value})
    assert str(raised.value).startswith(f"environment {expected}")
    assert str(path) not in str(raised.value)
    # The same mistake written in the file is the file's, as before.
    section, key = name.removeprefix("NEWSLETTER_").lower().split("_", 1)
    in_file = write(tmp_path, f"{BASE}{toml}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(in_file))}: {section}\.{key}: "):
        load_settings(in_file, environ={})


def test_a_list_written_as_toml_in_the_environment_says_how_lists_are_written(
        tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"\(in the environment a list is comma-separated: "
                                          r"a,b; empty for none\)$"):
        load_settings(path, environ={"NEWSLETTER_NEWSLETTER_SEED_LIST": '["a@example.org"]'})
    empty = load_settings(path, environ={"NEWSLETTER_NEWSLETTER_SEED_LIST": ""})
    assert empty.newsletter.seed_list == []


def test_short_admin_token_is_refused_and_empty_means_off(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + '[secrets]\nadmin_token = "fifteen-chars-x"\n')
    with pytest.raises(ConfigError, match="secrets.admin_token: expected at least 16 "
                                          "characters, got 15"):
        load_settings(path, environ={})
    ok = load_settings(path, environ={"NEWSLETTER_SECRETS_ADMIN_TOKEN": "sixteen-chars-xx"})
    assert ok.secrets.admin_token == "sixteen-chars-xx"
    assert load_settings(write(tmp_path, BASE), environ={}).secrets.admin_token == ""


@pytest.mark.parametrize(("url", "phrase"), [
    ("sqlite:///var/n.db", None), ("sqlite://", None),
    ("postgresql+psycopg://u:p@h:5432/d?sslmode=require", None),
    ("postgres://u:p@h/d", "write postgresql+psycopg://"),
    ("postgresql+asyncpg://u@h/d", "the driver 'asyncpg' is not supported"),
    ("mssql+pyodbc://u@h/d", "the database 'mssql' is not supported"),
    ("var/n.db", "expected a database URL"),
    ("sqlite:///var/n.db?bad=%zz&&", None),
])
def test_database_url_form(tmp_path: Path, url: str, phrase: str | None) -> None:
    path = write(tmp_path, BASE + f'[storage]\ndatabase_url = "{url}"\n')
    if phrase is None:
        assert load_settings(path, environ={}).storage.database_url == url
    else:
        with pytest.raises(ConfigError, match=f"storage.database_url: .*{re.escape(phrase)}"):
            load_settings(path, environ={})


def test_connect_error_masks_the_password_everywhere() -> None:
    from newsletter.store.urls import connect_error

    url = "postgresql+psycopg://app:pa55word@db.internal/news"
    err = connect_error(url, OSError("could not log in app:pa55word\n\tsecond line"))
    assert str(err) == ("database postgresql+psycopg://app:***@db.internal/news: cannot open: "
                        "could not log in app:*** second line")
