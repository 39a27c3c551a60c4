"""Hardening, operator text: templates reach only their named fields; one-line settings hold
no line break. Each refusal is one line from `config check`, never a traceback at build time."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from newsletter import named_fields
from newsletter.cli.main import cli
from newsletter.collect.articles import LinkRules
from newsletter.collect.sanitize import one_line
from newsletter.compose.issue import IssueRules, make_subject
from newsletter.config import Settings, load_settings
from newsletter.config_table import section_types
from newsletter.errors import NewsletterError
from newsletter.pipeline.issues import masthead

BASE = '[publication]\nname = "Test"\nbase_url = "https://example.org/"\n'
WHEN = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)


def check(path: Path, text: str, env: dict[str, str] | None = None) -> Result:
    path.write_text(text, encoding="utf-8")
    return CliRunner(env=env).invoke(cli, ["--config", str(path), "config", "check"])


def one_line_error(result: Result, path: Path | str, *phrases: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: {path}"), line
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    return line


# -- item 2: the subject (and every other operator template) knows only its fields ----------

REFUSED_SUBJECTS = [
    ("{publication.__class__.__mro__}", "not its attributes or items"),
    ("{date.__class__.__init__.__globals__}", "not its attributes or items"),
    ("{publication[0]}", "not its attributes or items"),
    ("{date.year}", "not its attributes or items"),
    ("{0}", "a field needs a name"),
    ("{} weekly", "a field needs a name"),
    ("{title}", "unknown field (expected {publication}, {number} or {date})"),
    ("{publication!r}", "conversions such as !r or !s are not supported"),
    ("{date!s}", "conversions such as !r or !s are not supported"),
    ("{number:{width}}", "a format spec cannot hold another field"),
    ("{publication:>999999999}", "widths and precisions over 999"),
    ("{number:.5000}", "widths and precisions over 999"),
    ("{publication:d}", "Unknown format code 'd'"),
    ("{number:%d %B}", "Invalid format specifier"),
    ("Weekly {", "write {{ or }} for a brace itself"),
    ("Weekly }", "write {{ or }} for a brace itself"),
]


@pytest.mark.parametrize(("subject", "phrase"), REFUSED_SUBJECTS)
def test_subject_reaching_past_its_fields_is_refused_by_config_check(
        tmp_path: Path, subject: str, phrase: str) -> None:
    path = tmp_path / "n.toml"
    toml = subject.replace("\\", "\\\\").replace('"', '\\"')
    line = one_line_error(check(path, BASE + f'[newsletter]\nsubject = "{toml}"\n'), path,
                          "newsletter.subject: ", phrase)
    assert "<class" not in line and "__builtins__" not in line


VALID_SUBJECTS = [
    "{publication} No. {number} — {date:%d %B %Y}",  # the default
    "{publication} #{number} — {date:%d %B %Y}",
    "Issue {number:03d} of {publication}",
    "{number:>5}|{publication:.4}|{publication:^12}",
    "{{braces}} {publication} {date}",
    "{date:%Y-%m-%d %H:%M %Z} and no field at all",
    "Plain subject",
]


@pytest.mark.parametrize("subject", VALID_SUBJECTS)
def test_valid_subjects_read_exactly_as_before(tmp_path: Path, subject: str) -> None:
    path = tmp_path / "n.toml"
    toml = subject.replace('"', '\\"')
    result = check(path, BASE + f'[newsletter]\nsubject = "{toml}"\n')
    assert result.exit_code == 0, result.output
    rules = IssueRules(publication="The Ledger", subject=subject)
    # str.format is the reference for what these valid templates always gave (one line: a
    # subject is a header).
    reference = subject.format(publication="The Ledger", number=7, date=WHEN)
    assert make_subject(rules, 7, WHEN) == one_line(reference)


def test_a_template_given_without_config_check_fails_the_build_with_one_line() -> None:
    rules = IssueRules(publication="The Ledger", subject="{date.__class__.__init__.__globals__}")
    with pytest.raises(NewsletterError) as info:
        make_subject(rules, 1, WHEN)
    message = str(info.value)
    assert message.startswith("newsletter.subject: '{date.__class__") and "\n" not in message
    assert "__builtins__" not in message
    with pytest.raises(named_fields.TemplateError):
        LinkRules("https://example.org/", "posts/{slug.__class__.__mro__}/").link_for("a")


@pytest.mark.parametrize(("key", "value", "phrase"), [
    ("newsletter.reason", "{publication.__class__}", "not its attributes or items"),
    ("newsletter.reason", "Sent to {email}", "unknown field (expected {publication})"),
    ("newsletter.reason", "You asked for it {", "write {{ or }}"),
    ("publication.article_path", "a/{slug.__class__.__mro__}/", "not its attributes or items"),
    ("publication.article_path", "a/{date}/", "unknown field (expected {slug})"),
])
def test_reason_and_article_path_are_templates_of_their_own_fields(
        tmp_path: Path, key: str, value: str, phrase: str) -> None:
    section, name = key.split(".")
    text = BASE if section == "publication" else BASE + f"[{section}]\n"
    path = tmp_path / "n.toml"
    one_line_error(check(path, text + f'{name} = "{value}"\n'), path, f"{key}: ", phrase)


def test_every_templated_setting_fills_each_of_its_fields(
        make_settings: Callable[..., Settings]) -> None:
    """The table's `fields` and what each consumer passes agree, so no field config check
    allows can fail at build time."""
    templated = {(section, f.name): f.metadata["fields"]
                 for section, cls in section_types().items() for f in dataclasses.fields(cls)
                 if f.metadata["fields"]}
    assert set(templated) == {("newsletter", "subject"), ("newsletter", "reason"),
                              ("publication", "article_path")}
    values = {"publication": "The Ledger", "number": 7, "date": WHEN}
    for name in templated["newsletter", "subject"]:
        rules = IssueRules(publication="The Ledger", subject=f"<{{{name}}}>")
        assert make_subject(rules, 7, WHEN) == f"<{values[name]}>"
    for name in templated["newsletter", "reason"]:
        settings = make_settings(f'[newsletter]\nreason = "{{{{{name}}}}} is {{{name}}}"\n')
        assert masthead(settings).reason == "{publication} is Test Ledger"
    for name in templated["publication", "article_path"]:
        assert LinkRules("https://example.org/", f"p/{{{name}}}/").link_for("a-b") \
            == "https://example.org/p/a-b/"


# -- item 9: a line break in a one-line setting ---------------------------------------------

BREAKS = {"LF": "\n", "CR": "\r", "CRLF": "\r\n", "VT": "\x0b", "FF": "\x0c", "FS": "\x1c",
          "RS": "\x1e", "NEL": "\x85", "LS": "\u2028", "PS": "\u2029"}


@pytest.mark.parametrize("brk", BREAKS.values(), ids=BREAKS.keys())
def test_any_line_break_in_the_publication_name_is_refused(tmp_path: Path, brk: str) -> None:
    escaped = "".join(f"\\u{ord(c):04X}" for c in brk)
    path = tmp_path / "n.toml"
    one_line_error(check(path, BASE.replace('"Test"', f'"Te{escaped}st"')), path,
                   "publication.name: expected one line of text (no line breaks)")


@pytest.mark.parametrize(("section", "key", "value"), [
    ("mail", "from_name", '"The Ledger\\nBcc: victim@example.org"'),
    ("mail", "reply_to", '"editor@example.org\\nBcc: victim@example.org"'),
    ("mail", "list_id", '"ledger.example.org\\u2028x"'),
    ("mail", "from_address", '"news@example.org\\n"'),
    ("newsletter", "subject", '"{publication}\\nBcc: victim@example.org"'),
    ("newsletter", "preheader", '"one\\ntwo"'),
    ("smtp", "fallback_hosts", '["relay.example.org:25\\nx"]'),
    ("newsletter", "section_order", '["World\\u2029"]'),
])
def test_header_bound_settings_hold_one_line(tmp_path: Path, section: str, key: str,
                                             value: str) -> None:
    path = tmp_path / "n.toml"
    one_line_error(check(path, BASE + f"[{section}]\n{key} = {value}\n"), path,
                   f"{section}.{key}: expected one line of text (no line breaks)")


def test_a_line_break_from_the_environment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    # Named as the variable that carried it, not the file, which does not hold it.
    one_line_error(check(path, BASE, {"NEWSLETTER_MAIL_FROM_NAME": "Ledger\nBcc: x@y.org"}),
                   "environment NEWSLETTER_MAIL_FROM_NAME",
                   ": expected one line of text (no line breaks)")


def test_multiline_settings_keep_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "n.toml"
    path.write_text(BASE + 'postal_address = "1 Harbour Street\\nPort Town"\n', "utf-8")
    key = "k" * 40 + "\n"  # a key's bytes are the key: a trailing newline stays part of it
    settings = load_settings(path, environ={"NEWSLETTER_SECRETS_SECRET_KEY": key})
    assert settings.publication.postal_address == "1 Harbour Street\nPort Town"
    assert settings.secrets.secret_key == key


def test_text_settings_are_one_line_unless_marked_multiline() -> None:
    """The default is one line, so a new setting is safe in a header until shown otherwise."""
    multiline = {(section, f.name) for section, cls in section_types().items()
                 for f in dataclasses.fields(cls) if f.metadata["multiline"]}
    assert multiline == {("publication", "postal_address"), ("secrets", "secret_key"),
                         ("bounces", "sendgrid_public_key")}
