"""Fuzzing with tests/fixtures/naughty-strings.txt, plus property-based tests (hypothesis).

Every hostile string goes in as an article title (and summary, author, tag) through collect,
the three feeds (feedparser must read them with bozo 0) and the email; as a subscriber name
through subscribe, the confirmation mail and the issue mail; and as an issue subject through
the subject template. Each email must parse with exactly the headers we wrote, one Subject.

Property tests already elsewhere: test_sources_digest.py (structured digests),
test_mail.py (encode_header, format_address), test_tokens.py (round trip, mutations).
"""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import feedparser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter import pipeline
from newsletter.audience import subscriptions, tokens
from newsletter.collect.articles import LinkRules, build_article
from newsletter.collect.sources.digest import looks_like_digest, parse_digest
from newsletter.collect.sources.files import read_article_file
from newsletter.compose.issue import make_subject
from newsletter.config import Settings
from newsletter.deliver.headers import safe_header_value
from newsletter.deliver.mail import (
    MailIdentity,
    MessageTemplate,
    identity_from_settings,
    notice_message,
)
from newsletter.errors import SourceError
from newsletter.models import Issue, IssueSection
from newsletter.pipeline import notices

FIXTURE = Path(__file__).parent / "fixtures" / "naughty-strings.txt"
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrt0\\])")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "0": "\0", "\\": "\\"}
ISSUE_HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
                 "List-Unsubscribe-Post", "MIME-Version", "Content-Type"]
NOTICE_HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version",
                  "Content-Type", "Content-Transfer-Encoding"]
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def naughty() -> list[str]:
    """The fixture's strings, escapes decoded (see the file's header for the format)."""
    out = []
    for line in FIXTURE.read_text("utf-8").splitlines():
        if line and not line.startswith("#"):
            out.append(_ESCAPE.sub(lambda m: _SIMPLE.get(m[1]) or chr(int(m[1][1:], 16)),
                                   line))
    return out


STRINGS = naughty()


def yaml_quoted(text: str) -> str:
    """A YAML double-quoted scalar for any text: what YAML cannot hold raw is escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable() and ch != "\ufeff":
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def one_spaced(text: str) -> str:
    return " ".join(text.split())


class _Markup(HTMLParser):
    """Collects what would run or leave the page: script-like elements, handlers, URLs."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        refresh = any(k == "http-equiv" and (v or "").lower() == "refresh" for k, v in attrs)
        if tag in ("script", "iframe", "object", "embed", "form", "base") or refresh:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"{tag} {name}=")
            if name in ("href", "src", "action", "background", "srcset") and value and \
                    not re.match(r"(https?|mailto):", value.strip(), re.I):
                self.problems.append(f"{tag} {name}={value[:40]}")


def markup_problems(html: str) -> list[str]:
    parser = _Markup()
    parser.feed(html)
    return parser.problems


def same_phrase(got: str, want: str) -> bool:
    """Display names as Python's address parser returns them: it keeps the whitespace between
    adjacent encoded words (against RFC 2047 §6.2), so a long name may gain spaces."""
    return "".join(got.split()) == "".join(want.split())


def parse(raw: bytes) -> email.message.EmailMessage:
    head = raw.partition(b"\r\n\r\n")[0]
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")  # CRLF only
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert head.count(b"\r\nSubject:") + head.startswith(b"Subject:") == 1
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_the_list_is_long_and_hostile() -> None:
    assert len(STRINGS) >= 150 and len(set(STRINGS)) == len(STRINGS)
    assert any("\r\n" in s for s in STRINGS) and any("\0" in s for s in STRINGS)
    assert any("\u202e" in s for s in STRINGS) and any("\ud800" in s for s in STRINGS)
    assert any("=?UTF-8?Q?=0A?=" in s for s in STRINGS) and any("\u2028" in s for s in STRINGS)
    assert max(len(s) for s in STRINGS) >= 1000
    # The markup check used below does see markup (and only markup).
    assert markup_problems('<a href="javascript:x" onclick="y">&lt;script&gt;</a><script>') \
        == ["a href=javascript:x", "a onclick=", "<script>"]


def test_naughty_titles_through_collect_feeds_and_email(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    base = make_settings()
    settings = replace(base, feeds=replace(base.feeds, max_entries=1000))
    folder = tmp_path / "articles"
    for i, s in enumerate(STRINGS):
        q = yaml_quoted(s)
        (folder / f"n{i:03d}.md").write_text(
            f"---\ntitle: {q}\nsummary: {q}\nauthors: [{q}]\ntags: [{q}]\nslug: fuzz-{i}\n"
            f"date: 2026-11-{1 + i % 18:02d}T08:00:00Z\n---\nBody {i}.\n", encoding="utf-8")
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    refused = {int(re.search(r"/n(\d{3})\.md: ", e)[1]) for e in report.errors}  # type: ignore[index]
    assert all("\n" not in e and "\r" not in e for e in report.errors)
    # Refused only: a title of nothing but whitespace, or a lone surrogate (no UTF-8 for it).
    assert refused == {i for i, s in enumerate(STRINGS)
                       if not one_spaced(s) or re.search("[\ud800-\udfff]", s)}
    stored = store.latest_articles(1000)
    assert len(stored) == len(STRINGS) - len(refused) == report.new

    pipeline.publish_feeds(settings, store)
    feeds = tmp_path / "feeds"
    for name in ("rss.xml", "atom.xml"):
        parsed = feedparser.parse((feeds / name).read_bytes())
        assert parsed.bozo == 0, (name, parsed.get("bozo_exception"))
        assert len(parsed.entries) == len(stored)
        assert b"<script" not in (feeds / name).read_bytes().lower()
    items = json.loads((feeds / "feed.json").read_text("utf-8"))["items"]
    assert {i["id"]: i["title"] for i in items} == {a.guid: a.title for a in stored}

    identity = identity_from_settings(settings)
    for n in range(0, len(stored), 25):
        chunk = tuple(stored[n:n + 25])
        issue = Issue(number=n + 1, subject=f"Issue {n}", preheader="", created=NOW,
                      window_start=NOW - timedelta(days=30), window_end=NOW,
                      sections=(IssueSection("Fuzz", chunk),))
        rendered = pipeline.renderer(settings).render_issue(
            issue, pipeline.masthead(settings), pipeline.archive_url(settings, issue.number))
        template = MessageTemplate.build(identity=identity, subject=issue.subject,
                                         html=rendered.html, text=rendered.text)
        name = STRINGS[n % len(STRINGS)]
        unsub = f"https://ledger.example.org/unsubscribe?token=U{n}x"
        msg = parse(template.render(
            to_address="reader@example.org", to_name=name, message_id=f"<i{n}@example.org>",
            unsubscribe_url=unsub, preferences_url=f"https://ledger.example.org/p?t=P{n}x",
            date=NOW))
        assert msg.keys() == ISSUE_HEADERS and msg["Subject"] == f"Issue {n}"
        html = msg.get_body(("html",)).get_content()
        text = msg.get_body(("plain",)).get_content()
        for part in (html, text):
            # The reader's own links once each, in the footer: no title filled any in.
            assert part.count(unsub) == 1 and part.count(f"P{n}x") == 1
            assert "%%UNSUBSCRIBE_URL%%" not in part and "%%NAME%%" not in part
        assert markup_problems(html) == []  # hostile titles stayed text
        # Every title is in the text part as text (a "%%" pair gets a word joiner), unless
        # the size limit sent it to the archive.
        flat = one_spaced(text)
        shown = [a for a in chunk if one_spaced(re.sub("%(?=%)", "%\u2060", a.title)) in flat]
        assert len(shown) == len(chunk) - rendered.omitted
    store.close()


def test_naughty_subscriber_names_are_stored_clean_and_mailed_safely(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(f'[mail]\noutbox_dir = "{tmp_path / "outbox"}"\n')
    store = pipeline.open_store(settings)
    identity = identity_from_settings(settings)
    template = MessageTemplate.build(identity=identity, subject="s", html="<p>Hi %%NAME%%</p>",
                                     text="Hi %%NAME%%\n")
    for i, s in enumerate(STRINGS):
        sub = subscriptions.subscribe(store, f"fuzz{i}@example.org", s, method="form",
                                      ip="192.0.2.1", user_agent=s, now=NOW).subscriber
        assert sub.name == subscriptions.clean_name(s)
        assert not re.search("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]",
                             sub.name + (sub.consent_user_agent or ""))
        assert sub.name == one_spaced(sub.name) and len(sub.name) <= 100
        for raw in (
            notice_message(identity=identity, to_address=sub.email, to_name=sub.name,
                           subject=f"Confirm {s}", text=f"Hello {sub.name},\n",
                           message_id=f"<c{i}@example.org>", date=NOW),
            template.render(to_address=sub.email, to_name=sub.name,
                            message_id=f"<m{i}@example.org>",
                            unsubscribe_url="https://ledger.example.org/u",
                            preferences_url="https://ledger.example.org/p", date=NOW),
        ):
            msg = parse(raw)
            assert msg.keys() in (NOTICE_HEADERS, ISSUE_HEADERS)
            assert msg.get_all("Bcc") is None and len(msg.get_all("To")) == 1
            (to,) = msg["To"].addresses
            assert to.addr_spec == sub.email
            assert same_phrase(to.display_name, safe_header_value(sub.name))
    # The real confirmation mail, through the configured transport (the outbox).
    send = notices.confirmation_sender(settings)
    for i, s in enumerate(STRINGS[:60]):
        send(f"fuzz{i}@example.org", subscriptions.clean_name(s), "https://ledger.example.org/c")
    for path in (tmp_path / "outbox").glob("*.eml"):
        msg = parse(path.read_bytes())
        # A confirmation request names the list it is about (List-Id), nothing more.
        assert msg.keys() == [*NOTICE_HEADERS[:5], "List-Id", *NOTICE_HEADERS[5:]]
        assert msg.get_content().count("\n") >= 8  # the name added no lines or parts
    store.close()


def test_naughty_subjects_make_exactly_one_subject_header(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    identity = identity_from_settings(settings)
    rules = pipeline.issue_rules(settings)
    for i, s in enumerate(STRINGS):
        literal = s.replace("{", "{{").replace("}", "}}")  # the template's own syntax
        subject = make_subject(replace(rules, subject="{publication} #{number}: " + literal),
                               i, NOW)
        raw = MessageTemplate.build(identity=identity, subject=subject, html="<p>h</p>",
                                    text="t").render(
            to_address="r@example.org", to_name="R", message_id=f"<s{i}@example.org>",
            unsubscribe_url="https://ledger.example.org/u",
            preferences_url="https://ledger.example.org/p", date=NOW)
        msg = parse(raw)
        assert msg.keys() == ISSUE_HEADERS
        assert msg["Subject"] == safe_header_value(f"Test Ledger #{i}: " + one_spaced(s))


# -- property-based: what the existing property tests leave out ---------------------------------


DIGEST_HEAD = "# ***THE LEDGER***\n\n## World\n\nSeptember 5, 2025\n\n**By Ada Writer**\n\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=st.sampled_from(["", DIGEST_HEAD, DIGEST_HEAD + "### "]), body=st.text())
def test_digest_export_parser_on_any_text_only_raises_source_error(head: str,
                                                                   body: str) -> None:
    text = head + body
    looks_like_digest(text)  # never raises
    try:
        draft = parse_digest(text, "prop.md")
    except SourceError as exc:
        assert exc.where == "prop.md" and exc.reason and "\n" not in exc.reason
        return
    try:
        article = build_article(draft, source="s", rules=LinkRules("https://x.example/"))
    except SourceError as exc:
        assert exc.where == "prop.md"
        return
    assert "<script" not in article.content_html.lower()
    assert article.title == one_spaced(article.title)
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]",
                         article.title + article.content_html + article.summary)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_any_bytes_in_an_article_file_only_raise_source_error(tmp_path: Path,
                                                              data: bytes) -> None:
    path = tmp_path / "x.md"
    path.write_bytes(data)
    try:
        read_article_file(path, tmp_path)
    except SourceError as exc:
        assert exc.where == str(path) and "\n" not in str(exc)


_IDENTITY = MailIdentity("news@example.org", "The Ledger", "", "ledger.example.org",
                         "news@example.org", "example.org")


@settings(max_examples=300, deadline=None)
@given(subject=st.text(), name=st.text(), publication=st.text(max_size=60))
def test_any_subject_name_and_sender_make_one_header_each(subject: str, name: str,
                                                          publication: str) -> None:
    identity = replace(_IDENTITY, from_name=publication)
    raw = MessageTemplate.build(identity=identity, subject=subject, html="<p>%%NAME%%</p>",
                                text="%%NAME%%").render(
        to_address="a@example.org", to_name=name, message_id="<x@example.org>",
        unsubscribe_url="https://example.org/u?t=1", preferences_url="https://example.org/p",
        date=NOW)
    msg = parse(raw)
    assert msg.keys() == ISSUE_HEADERS
    assert msg["Subject"] == safe_header_value(subject)
    assert same_phrase(msg["To"].addresses[0].display_name, safe_header_value(name))
    assert same_phrase(msg["From"].addresses[0].display_name, safe_header_value(publication))
    notice = parse(notice_message(identity=identity, to_address="a@example.org", to_name=name,
                                  subject=subject, text=name, message_id="<y@example.org>",
                                  date=NOW))
    assert notice.keys() == NOTICE_HEADERS


SECRET = b"p" * 32


@settings(max_examples=300, deadline=None)
@given(token=st.text(max_size=200))
def test_verify_any_text_raises_only_token_error(token: str) -> None:
    with pytest.raises(tokens.TokenError):
        tokens.verify(SECRET, token, "unsubscribe", timedelta(days=1), NOW, extra="a@b.org")


@settings(max_examples=200, deadline=None)
@given(purpose=st.sampled_from(tokens.PURPOSES), other=st.sampled_from(tokens.PURPOSES),
       subject=st.from_regex(r"[0-9]{1,18}", fullmatch=True),
       extra=st.text(max_size=40), other_extra=st.text(max_size=40),
       secret=st.binary(min_size=16, max_size=40))
def test_a_token_verifies_only_with_its_own_purpose_binding_and_key(
        purpose: str, other: str, subject: str, extra: str, other_extra: str,
        secret: bytes) -> None:
    token = tokens.sign(SECRET, purpose, subject, NOW, extra=extra)
    assert token.isascii() and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert tokens.verify(SECRET, token, purpose, timedelta(days=1), NOW, extra=extra) == subject
    if other != purpose:
        with pytest.raises(tokens.TokenError, match="wrong purpose"):
            tokens.verify(SECRET, token, other, timedelta(days=1), NOW, extra=extra)
    if other_extra != extra:
        with pytest.raises(tokens.TokenError, match="bad signature"):
            tokens.verify(SECRET, token, purpose, timedelta(days=1), NOW, extra=other_extra)
    if secret != SECRET:
        with pytest.raises(tokens.TokenError, match="bad signature"):
            tokens.verify(secret, token, purpose, timedelta(days=1), NOW, extra=extra)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(SECRET, token, purpose, timedelta(days=1), NOW + timedelta(days=1, seconds=1),
                      extra=extra)
