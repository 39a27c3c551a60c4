"""Header values for mail: one safe line, RFC 2047 encoded words, folded; addresses checked."""

from __future__ import annotations

import base64
import hashlib
import re

MAX_LINE = 78  # RFC 5322 §2.1.1 SHOULD; 998 is the hard limit


class HeaderError(ValueError):
    """A value that cannot be put in a header safely: an invalid address, URL or id."""


# -- header values ----------------------------------------------------------------------------

# C0, DEL, C1 (NEL included) and the Unicode line/paragraph separators: some parser somewhere
# treats each of them as a line end, so none may reach a header. Lone surrogates cannot be
# encoded at all.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SPACES_RE = re.compile(" {2,}")
_PLAIN_RE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_ATOM_PHRASE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+")
LIST_ID_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+")
DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
# Local parts: dot-atom, or non-ASCII (RFC 6531, sent only with SMTPUTF8); never quoted.
_LOCAL_RE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f<>()\[\],;:\\\"@.]+(?:\.[^\s\x00-\x1f\x7f-\x9f"
                       r"<>()\[\],;:\\\"@.]+)*")
_URL_RE = re.compile(r"https?://[!#-;=?-~]+")  # printable ASCII without space, quote, < and >
MSGID_RE = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")


def safe_header_value(value: str) -> str:
    """One line of text: control characters become spaces, runs of spaces one, ends trimmed.

    The result is still *text*: it only reaches a message through encode_header, which turns
    anything that could be read as an encoded word ("=?…?=") into encoded words of its own.
    """
    value = _SURROGATE_RE.sub("\ufffd", _CONTROL_RE.sub(" ", value))
    return _SPACES_RE.sub(" ", value).strip()


def _b_words(text: str, used: int) -> list[str]:
    """RFC 2047 'B' encoded words of whole characters, each ≤ 75 columns, the first fitting
    after `used` columns. Words are split after a space where possible: decoders that (against
    RFC 2047 §6.2) keep the whitespace between encoded words, as Python's address parser does,
    then show a doubled space rather than a space inside a word."""
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    width = max(16, min(75, MAX_LINE - used - 1))
    for ch in text:
        n = len(ch.encode("utf-8"))
        while chunk and size + n > (width - 12) // 4 * 3:  # 12 = len("=?utf-8?b??=")
            cut = len(chunk) - chunk[::-1].index(" ") if " " in chunk[1:] else len(chunk)
            words.append(_b_word("".join(chunk[:cut])))
            chunk, width = chunk[cut:], 75
            size = len("".join(chunk).encode("utf-8"))
        chunk.append(ch)
        size += n
    if chunk:
        words.append(_b_word("".join(chunk)))
    return words


def _b_word(text: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def fold(tokens: list[str], used: int) -> str:
    """Tokens joined by single spaces, a CRLF put before the space wherever a line would pass
    78 columns; unfolding (removing the CRLFs) gives back the single-spaced text."""
    out: list[str] = []
    col = used
    for tok in tokens:
        if out and col + 1 + len(tok) > MAX_LINE:
            out.append("\r\n")
            col = 0
        out.append(" " + tok)
        col += 1 + len(tok)
    return "".join(out)


def text_tokens(value: str, used: int) -> list[str]:
    words = value.split(" ")
    if (_PLAIN_RE.fullmatch(value) and "=?" not in value
            and max(len(w) for w in words) < MAX_LINE - 8):
        return words
    # Non-ASCII, an encoded-word look-alike, or an unfoldable word: encode it all ourselves,
    # so no "=?…?=" from the input survives verbatim to be decoded by a reader.
    return _b_words(value, used)


def encode_header(name: str, value: str) -> str:
    """`Name: value` (no CRLF at the end), folded at 78 columns with CRLF + space."""
    value = safe_header_value(value)
    return name + ":" + (fold(text_tokens(value, len(name) + 1), len(name) + 1) or " ")


def check_address(addr: str) -> str:
    """The address itself (IDN domains in A-labels) or HeaderError: no display name, no
    comments, no quoted local part, nothing that could end a header or an SMTP command."""
    local, at, domain = addr.rpartition("@")
    if not at or len(addr) > 254 or len(local) > 64 or not _LOCAL_RE.fullmatch(local):
        raise HeaderError(f"invalid email address {addr!r}")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise HeaderError(f"invalid email address {addr!r}") from None
    if not DOMAIN_RE.fullmatch(domain):
        raise HeaderError(f"invalid email address {addr!r}")
    return f"{local}@{domain}"


def _phrase_tokens(name: str, used: int) -> list[str]:
    name = safe_header_value(name)
    if not name:
        return []
    if "=?" not in name and max(len(w) for w in name.split(" ")) < MAX_LINE - 20:
        if _ATOM_PHRASE_RE.fullmatch(name):
            return name.split(" ")
        if _PLAIN_RE.fullmatch(name) and len(name) < MAX_LINE - 20:
            return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return _b_words(name, used)


def named(name: str, angle: str, used: int) -> str:
    return fold([*_phrase_tokens(name, used + 1), f"<{angle}>"], used)


def format_address(name: str, addr: str) -> str:
    """`Name <addr>` (or `<addr>`) for an address header; the name quoted or encoded, folded
    for a header name of up to 10 columns (Reply-To:)."""
    return named(name, check_address(addr), 10).lstrip(" ")


def message_id(issue_number: int, subscriber_id: int | str, domain: str) -> str:
    """Deterministic: a resend of the same issue to the same subscriber keeps its id."""
    sub = str(subscriber_id)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", sub) or not DOMAIN_RE.fullmatch(domain):
        raise HeaderError(f"cannot build a Message-ID from {subscriber_id!r} and {domain!r}")
    digest = hashlib.sha256(f"{issue_number}:{sub}:{domain}".encode()).hexdigest()[:12]
    return f"<issue-{int(issue_number)}.sub-{sub}.{digest}@{domain}>"


def check_url(url: str) -> str:
    if len(url) > 900 or not _URL_RE.fullmatch(url):
        raise HeaderError(f"not an absolute http(s) URL fit for a header: {url!r}")
    return url


# -- quoted-printable --------------------------------------------------------------------------
