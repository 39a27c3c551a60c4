"""The SMTP password taken out of any text that is kept or logged, in every form AUTH sends it."""

from __future__ import annotations

import base64
import binascii
import math
import re

MASK = "********"


def keep(text: str) -> str:
    """The scrubber of a transport with no credentials: nothing to take out."""
    return text


class Scrubber:
    """`scrub(text)`: the text with the password masked wherever a server may have echoed it.

    Taken out: the password as written (in any case, so also inside "user:password"), and every
    run of base64 (standard or URL-safe alphabet, at any alignment) that decodes to bytes holding
    the password — AUTH LOGIN's base64 of it, AUTH PLAIN's "\\0user\\0password" blob, or any
    longer echo — or holding AUTH CRAM-MD5's answer "user <32 hex digits>", an HMAC of the
    password that is enough to test guesses against offline.
    """

    def __init__(self, username: str, password: str) -> None:
        self._secret = password.encode("utf-8")
        self._raw = re.compile(re.escape(password), re.IGNORECASE) if password else None
        self._cram = re.compile(re.escape(username.encode("utf-8")) + rb" [0-9a-f]{32}")
        # A base64 run shorter than this cannot hold the password or a CRAM-MD5 answer, so
        # ordinary replies ("250 2.0.0 OK") cost one scan and no decoding.
        shortest = min(len(self._secret), len(username.encode("utf-8")) + 33)
        self._runs = re.compile(f"[A-Za-z0-9+/_-]{{{max(math.ceil(shortest * 4 / 3), 2)},}}=*")

    def __call__(self, text: str) -> str:
        if self._raw is None:
            return text
        # Encoded runs first: masking the raw password first could cut a run in two.
        return self._raw.sub(MASK, self._runs.sub(self._masked, text))

    def __repr__(self) -> str:  # never the password
        return "Scrubber(...)"

    def _masked(self, match: re.Match[str]) -> str:
        return MASK if self._reveals(match[0]) else match[0]

    def _reveals(self, run: str) -> bool:
        chars = run.rstrip("=").replace("-", "+").replace("_", "/")
        # The run may start mid-encoding (text glued in front of it): one of four starting
        # points is aligned with the encoding's 24-bit groups.
        for skip in range(4):
            part = chars[skip:]
            if len(part) % 4 == 1:  # a lone last character holds no whole byte
                part = part[:-1]
            if not part:
                return False
            part += "=" * (-len(part) % 4)  # the last group's bytes count too
            try:
                data = base64.b64decode(part, validate=True)
            except (binascii.Error, ValueError):  # pragma: no cover - the regex admits none
                continue
            if self._secret in data or self._cram.search(data):
                return True
        return False
