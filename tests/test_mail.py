"""MessageTemplate: headers right and safe, bodies exact after QP, lines within limits."""

from __future__ import annotations

import email
import email.policy
import html
import re
from datetime import UTC, datetime

import pytest
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.deliver.headers import (
    HeaderError,
    encode_header,
    format_address,
    message_id,
    safe_header_value,
)
from newsletter.deliver.mail import (
    MailIdentity,
    MessageTemplate,
    WireMessage,
    identity_from_settings,
)
from tests.helpers.mail import IDENTITY

HTML = ('<!doctype html><html><body><p style="margin: 0;">Hello %%NAME%%,</p>\n'
        + "<p>" + "Tariffs, ports &amp; the harbour économie — a long paragraph. " * 400
        + "</p>\n.a line starting with a dot\nFrom the editor\n  two  spaces\t\ttabs \n"
        + '<p><a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a> · '
        + '<a href="%%PREFERENCES_URL%%">Preferences</a></p></body></html>\n')
TEXT = ("Hello %%NAME%%,\n\n" + "Tariffs, ports & the harbour économie. " * 50 + "\n"
        ".dot\nFrom here\ntrailing space \n\nUnsubscribe: %%UNSUBSCRIBE_URL%%\n"
        "Preferences: %%PREFERENCES_URL%%")
UNSUB = "https://ledger.example.org/u/" + "tok3n_" * 40 + "?a=1&b=2"
PREFS = "https://ledger.example.org/p/abc?x=%20y&z=="
DATE = datetime(2024, 6, 3, 9, 30, tzinfo=UTC)
HEADERS = {"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type",
           "Reply-To", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"}
HOSTILE = ["Weekly\r\nBcc: x@y", "=?UTF-8?Q?=0A?=Bcc: x@y", "=?utf-8?b?CkJjYzogeEB5?=",
           "nul\x00Bcc: x@y", "nel\x85Bcc: x@y", "sep\u2028Bcc: x@y", "tab\tand\x0bvt",
           "x" * 500, "Ünïcödé ☃ " * 30, '"quoted" <x@y>, z@w', "\ud800 lone surrogate",
           "   ", "emoji 👩‍👩‍👧 family"]


def same_phrase(got: str, want: str) -> bool:
    """Display names as Python's address parser returns them. Against RFC 2047 §6.2 it keeps
    the whitespace between adjacent encoded words, and it folds Unicode spaces (NBSP) to
    spaces, so a name too long for one encoded word only compares without whitespace."""
    if len(want.encode()) <= 30 and "\xa0" not in want:  # fits one encoded word
        return got == want
    return "".join(got.split()) == "".join(want.split())


def render(template: MessageTemplate, **kw: object) -> bytes:
    args: dict[str, object] = {
        "to_address": "reader@example.com", "to_name": "Ana <b>&",
        "message_id": message_id(12, 345, "example.org"), "unsubscribe_url": UNSUB,
        "preferences_url": PREFS, "date": DATE}
    args.update(kw)
    return template.render(**args)  # type: ignore[arg-type]


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


_TEMPLATE = MessageTemplate.build(identity=IDENTITY, subject="The Ledger — 3 June 2024",
                                  html=HTML, text=TEXT)


@pytest.fixture(scope="module")
def template() -> MessageTemplate:
    return _TEMPLATE


def test_headers(template: MessageTemplate) -> None:
    msg = parse(render(template))
    assert set(msg.keys()) == HEADERS and len(msg.keys()) == len(HEADERS)
    assert msg["From"] == "The Ledger <news@example.org>"
    assert msg["To"].addresses[0].display_name == "Ana <b>&"
    assert msg["To"].addresses[0].addr_spec == "reader@example.com"
    assert msg["Subject"] == "The Ledger — 3 June 2024"
    assert msg["Date"].datetime == DATE
    assert msg["Message-ID"] == message_id(12, 345, "example.org")
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Reply-To"] == "editor@example.org"
    assert msg["List-Id"] == "The Ledger <ledger.example.org>"
    assert msg["List-Unsubscribe"] == (
        f"<{UNSUB}>, <mailto:unsubscribe@example.org?subject=unsubscribe>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert not msg.defects and all(not msg[h].defects for h in HEADERS)


def test_bodies_are_the_documents_with_values_filled(template: MessageTemplate) -> None:
    msg = parse(render(template))
    plain, rich = msg.iter_parts()
    assert [plain.get_content_type(), rich.get_content_type()] == ["text/plain", "text/html"]
    values = {"%%NAME%%": "Ana <b>&", "%%UNSUBSCRIBE_URL%%": UNSUB, "%%PREFERENCES_URL%%": PREFS}
    want_text, want_html = TEXT, HTML
    for key, value in values.items():
        want_text = want_text.replace(key, value)
        want_html = want_html.replace(key, html.escape(value, quote=True))
    assert plain.get_content().replace("\r\n", "\n") == want_text
    assert rich.get_content().replace("\r\n", "\n") == want_html


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.from_regex(r"[!-~]{1,200}", fullmatch=True),
                 st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
                         min_size=1, max_size=200)))
def test_any_value_comes_back_exactly_from_both_parts(value: str) -> None:
    # Printable ASCII (URLs) takes a fast escaping path and anything else the general one;
    # a reader must get the value back either way, whatever the dots and "=" in it.
    url = "https://ledger.example.org/u?token=" + "".join(
        c if c.isascii() and c.isalnum() else "." for c in value)
    raw = _TEMPLATE.render(to_address="reader@example.com", to_name="R", date=DATE,
                           message_id=message_id(1, 2, "example.org"),
                           unsubscribe_url=url, preferences_url=PREFS)
    plain = next(parse(raw).iter_parts()).get_content().replace("\r\n", "\n")
    assert f"Unsubscribe: {url}\n" in plain
    name = safe_header_value(value)
    raw = _TEMPLATE.render(to_address="reader@example.com", to_name=value, date=DATE,
                           message_id=message_id(1, 2, "example.org"),
                           unsubscribe_url=UNSUB, preferences_url=PREFS)
    plain, rich = parse(raw).iter_parts()
    assert plain.get_content().startswith(f"Hello {name or 'there'},\r\n")
    assert f"Hello {html.escape(name or 'there', quote=True)},</p>" in rich.get_content()


def test_empty_name_uses_the_default(template: MessageTemplate) -> None:
    msg = parse(render(template, to_name=""))
    assert msg["To"] == "reader@example.com"
    assert "Hello there," in next(msg.iter_parts()).get_content()


def test_lines_crlf_and_limits(template: MessageTemplate) -> None:
    raw = render(template, unsubscribe_url="https://example.org/u/" + "%C3%A9=&" * 100,
                 to_name="Zoë " * 40)
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")  # no bare CR or LF
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = raw.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    for line in head.split(b"\r\n"):
        assert len(line) <= 78 or line.startswith(b"List-Unsubscribe: <")
    for line in body.split(b"\r\n"):  # QP parts and MIME headers alike
        assert len(line) <= 76 and not line.startswith(b".") and not line.startswith(b"From ")
        assert not line.endswith((b" ", b"\t"))
    assert raw.isascii()
    # What DkimSigner is told (body_is_canonical=True) must hold: dkimpy agrees.
    assert Relaxed.canonicalize_body(body) == body
    assert isinstance(raw, WireMessage)


def test_template_is_deterministic_and_boundary_from_content(template: MessageTemplate) -> None:
    again = MessageTemplate.build(identity=IDENTITY, subject="The Ledger — 3 June 2024",
                                  html=HTML, text=TEXT)
    assert render(again) == render(template)
    other = MessageTemplate.build(identity=IDENTITY, subject="x", html="<p>x</p>", text="x")
    assert parse(render(other)).get_boundary() != parse(render(template)).get_boundary()


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_never_add_a_header(value: str) -> None:
    identity = MailIdentity("news@example.org", value, "", f"{value} <ledger.example.org>",
                            "unsubscribe@example.org", "example.org")
    template = MessageTemplate.build(identity=identity, subject=value, html="<p>%%NAME%%</p>",
                                     text="%%NAME%%")
    raw = render(template, to_name=value)
    msg = parse(raw)
    assert set(msg.keys()) == HEADERS - {"Reply-To"}
    assert b"\nBcc" not in raw and "Bcc" not in msg
    clean = safe_header_value(value)
    assert msg["Subject"] == clean
    assert same_phrase(msg["From"].addresses[0].display_name, clean)
    assert same_phrase(msg["To"].addresses[0].display_name, clean)
    assert msg["List-Id"].endswith("<ledger.example.org>")
    for header in ("Subject", "From", "To", "List-Id"):
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", msg[header])
    head, _, body = raw.partition(b"\r\n\r\n")
    assert Relaxed.canonicalize_body(body) == body
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")
    assert b"\n." not in raw
    assert all(len(line) <= 78 for line in head.split(b"\r\n")
               if not line.startswith(b"List-Unsubscribe: <"))


def test_safe_header_value() -> None:
    assert safe_header_value(" a\r\n\tb\x00 c  ") == "a b c"
    assert safe_header_value("=?UTF-8?Q?=0A?=Bcc: x@y") == "=?UTF-8?Q?=0A?=Bcc: x@y"
    # ...which encode_header never lets through verbatim:
    assert "=?UTF-8?Q?" not in encode_header("Subject", "=?UTF-8?Q?=0A?=Bcc: x@y")
    assert encode_header("Subject", "plain words") == "Subject: plain words"


@settings(max_examples=300, deadline=None, database=None)
@given(st.text())
def test_any_text_is_one_header_with_the_same_text(value: str) -> None:
    line = encode_header("Subject", value)
    raw = (line + "\r\nX-After: 1\r\n\r\nbody\r\n").encode("ascii")
    msg = parse(raw)
    assert msg.keys() == ["Subject", "X-After"]
    assert msg["Subject"] == safe_header_value(value)
    assert "\r" not in msg["Subject"] and "\n" not in msg["Subject"]
    assert all(len(physical) <= 78 for physical in line.split("\r\n"))


@settings(max_examples=200, deadline=None, database=None)
@given(st.text())
def test_any_display_name_round_trips(name: str) -> None:
    raw = f"To: {format_address(name, 'a.b@example.com')}\r\n\r\n".encode()
    msg = parse(raw)
    assert msg.keys() == ["To"]
    (address,) = msg["To"].addresses
    assert address.addr_spec == "a.b@example.com"
    assert same_phrase(address.display_name, safe_header_value(name))


@pytest.mark.parametrize("addr", ["", "a", "a@", "@b.org", "a b@c.org", "a@b.org>", "<a@b.org>",
                                  "a@b.org\r\nBcc: c@d.org", "a,b@c.org", '"a"@b.org',
                                  "a@-b.org", "a..b@c.org", "x" * 65 + "@b.org"])
def test_invalid_addresses_are_refused(addr: str) -> None:
    with pytest.raises(HeaderError):
        format_address("", addr)


def test_idn_and_utf8_addresses() -> None:
    assert format_address("", "a@bücher.example") == "<a@xn--bcher-kva.example>"
    assert format_address("Zoë", "zoë@example.com").endswith("<zoë@example.com>")


@pytest.mark.parametrize(("kw", "value"), [
    ("unsubscribe_url", "https://x.org/u\r\nBcc: a@b.org"), ("unsubscribe_url", "javascript:x"),
    ("preferences_url", "https://x.org/p x"), ("to_address", "a@b.org\nBcc: c@d.org"),
    ("message_id", "<a@b>\r\nBcc: c@d.org"), ("message_id", "no-brackets@example.org")])
def test_render_refuses_unsafe_values(template: MessageTemplate, kw: str, value: str) -> None:
    with pytest.raises(HeaderError):
        render(template, **{kw: value})


def test_message_id_is_deterministic() -> None:
    a = message_id(12, 345, "example.org")
    assert a == message_id(12, 345, "example.org") != message_id(12, 346, "example.org")
    assert re.fullmatch(r"<issue-12\.sub-345\.[0-9a-f]{12}@example\.org>", a)
    with pytest.raises(HeaderError):
        message_id(1, "x@y", "example.org")


def test_list_id_forms() -> None:
    bare = MailIdentity("news@example.org", "The Ledger", "", "ledger.example.org",
                        "news@example.org", "example.org")
    t = MessageTemplate.build(identity=bare, subject="s", html="h", text="t")
    assert parse(render(t))["List-Id"] == "The Ledger <ledger.example.org>"
    with pytest.raises(HeaderError):
        MessageTemplate.build(identity=MailIdentity("news@example.org", "n", "", "no spaces ok",
                                                    "news@example.org", "example.org"),
                              subject="s", html="h", text="t")


def test_identity_from_settings(make_settings) -> None:  # noqa: ANN001 - pytest fixture
    ident = identity_from_settings(make_settings())
    assert ident == MailIdentity("newsletter@example.org", "Test Ledger", "",
                                 "newsletter.example.org", "newsletter@example.org",
                                 "example.org")
