"""Signed tokens: round trip, every mutation refused, expiry, purpose, binding; the key file."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.audience.tokens import TokenError, load_or_create_secret, sign, verify
from newsletter.config import Settings, Storage
from newsletter.errors import ConfigError

SECRET = b"s" * 32
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def reason(fn: Callable[[], object]) -> str:
    with pytest.raises(TokenError) as info:
        fn()
    return info.value.reason


def test_round_trip_and_url_safe() -> None:
    token = sign(SECRET, "unsubscribe", "42", NOW, extra="alice@example.org")
    assert token.replace("-", "").replace("_", "").isalnum()  # no padding, no + or /
    assert verify(SECRET, token, "unsubscribe", DAY, NOW + DAY,
                  extra="alice@example.org") == "42"


@settings(max_examples=200, deadline=None)
@given(purpose=st.sampled_from(["confirm", "unsubscribe", "preferences"]),
       subject=st.text(min_size=1, max_size=30).filter(lambda s: "\n" not in s),
       extra=st.text(max_size=40), seconds=st.integers(0, 10**9))
def test_sign_verify_round_trip(purpose: str, subject: str, extra: str, seconds: int) -> None:
    now = datetime.fromtimestamp(seconds, UTC)
    token = sign(SECRET, purpose, subject, now, extra=extra)
    assert verify(SECRET, token, purpose, DAY, now, extra=extra) == subject


TOKEN = sign(SECRET, "confirm", "1234", NOW, extra="bob@example.org")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ \n%"


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_any_mutation_fails(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate", "append"]))
    chars = list(TOKEN)
    at = data.draw(st.integers(0, len(chars) - 1))
    if kind == "replace":
        chars[at] = data.draw(st.sampled_from(ALPHABET).filter(lambda c: c != TOKEN[at]))
    elif kind == "insert":
        chars.insert(at, data.draw(st.sampled_from(ALPHABET)))
    elif kind == "delete":
        del chars[at]
    elif kind == "truncate":
        chars = chars[:at]
    else:
        chars += data.draw(st.text(alphabet=ALPHABET, min_size=1, max_size=5))
    mutated = "".join(chars)
    assert mutated != TOKEN
    with pytest.raises(TokenError):
        verify(SECRET, mutated, "confirm", DAY, NOW, extra="bob@example.org")


def test_every_last_character_change_fails() -> None:
    # Unused low bits of the last base64 character are the classic way a "different" token
    # decodes to the same bytes.
    for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
        if c != TOKEN[-1]:
            assert reason(lambda c=c: verify(SECRET, TOKEN[:-1] + c, "confirm", DAY, NOW,
                                             extra="bob@example.org")) in (
                "malformed", "bad signature")


def test_reasons() -> None:
    ok = dict(extra="bob@example.org")
    assert reason(lambda: verify(SECRET, "", "confirm", DAY, NOW, **ok)) == "malformed"
    assert reason(lambda: verify(SECRET, "!!!", "confirm", DAY, NOW, **ok)) == "malformed"
    assert reason(lambda: verify(SECRET, "é" * 50, "confirm", DAY, NOW, **ok)) == "malformed"
    assert reason(lambda: verify(SECRET, "x" * 5000, "confirm", DAY, NOW, **ok)) == "malformed"
    assert reason(lambda: verify(b"t" * 32, TOKEN, "confirm", DAY, NOW, **ok)) == "bad signature"
    assert reason(lambda: verify(SECRET, TOKEN, "unsubscribe", DAY, NOW, **ok)) \
        == "wrong purpose"
    assert reason(lambda: verify(SECRET, TOKEN, "confirm", DAY, NOW + DAY + timedelta(seconds=1),
                                 **ok)) == "expired"
    assert verify(SECRET, TOKEN, "confirm", DAY, NOW + DAY, **ok) == "1234"
    # Issued far in the future (another server's key, a wild clock) is not valid yet.
    assert reason(lambda: verify(SECRET, TOKEN, "confirm", DAY, NOW - timedelta(hours=1),
                                 **ok)) == "expired"


def test_extra_binds_the_token() -> None:
    assert reason(lambda: verify(SECRET, TOKEN, "confirm", DAY, NOW,
                                 extra="new@example.org")) == "bad signature"
    assert verify(SECRET, TOKEN, "confirm", DAY, NOW,
                  extra=lambda purpose, subject: {"1234": "bob@example.org"}.get(subject)) == "1234"
    assert reason(lambda: verify(SECRET, TOKEN, "confirm", DAY, NOW,
                                 extra=lambda purpose, subject: None)) == "bad signature"


def test_sign_refuses_separator() -> None:
    with pytest.raises(ValueError):
        sign(SECRET, "confirm", "1\n2", NOW)
    with pytest.raises(ValueError):
        sign(SECRET, "", "1", NOW)


def test_secret_from_settings(make_settings: Callable[..., Settings]) -> None:
    settings_ = make_settings('[secrets]\nsecret_key = "0123456789abcdef-long-enough"\n')
    assert load_or_create_secret(settings_) == b"0123456789abcdef-long-enough"
    short = make_settings('[secrets]\nsecret_key = "short"\n')
    with pytest.raises(ConfigError, match="at least 16"):
        load_or_create_secret(short)


def test_secret_file_created_once_with_mode_0600(make_settings: Callable[..., Settings],
                                                  tmp_path: Path) -> None:
    settings_ = make_settings()
    first = load_or_create_secret(settings_)
    path = tmp_path / "secret_key"
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(settings_) == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".secret_key")] == []


def test_secret_file_garbage_refused(make_settings: Callable[..., Settings],
                                     tmp_path: Path) -> None:
    settings_ = make_settings()
    (tmp_path / "secret_key").write_text("not hex\n")
    os.chmod(tmp_path / "secret_key", 0o600)
    with pytest.raises(ConfigError, match="64 hex digits"):
        load_or_create_secret(settings_)


def test_secret_required_without_sqlite_file(make_settings: Callable[..., Settings]) -> None:
    base = make_settings()
    for url in ("postgresql+psycopg://u@db/newsletter", "sqlite:///:memory:"):
        other = dataclasses.replace(base, storage=Storage(database_url=url))
        with pytest.raises(ConfigError, match="NEWSLETTER_SECRETS_SECRET_KEY"):
            load_or_create_secret(other)
