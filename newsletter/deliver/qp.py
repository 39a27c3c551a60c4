"""Quoted-printable for bodies and per-recipient values; no encoded line starts with "."."""

from __future__ import annotations

import re

_QP_BYTE = [chr(b) if 33 <= b <= 126 and b != 61 else f"={b:02X}" for b in range(256)]
# Values are escaped more than QP needs: spaces and dots too, so no encoded line of a value
# can start with "." (SMTP dot-stuffing) or "From " or end in whitespace.
_VALUE_UNSAFE_RE = re.compile(rb"[^!-\-/-<>-~]+")
_VALUE_ESC = [b"=%02X" % b for b in range(256)]
_PRINTABLE_RE = re.compile(rb"[!-~]*")  # no space: in it, only "." and "=" need escaping


def _qp_tokens(data: bytes) -> list[str]:
    toks = [_QP_BYTE[b] for b in data]
    # A literal space only where a printable character follows: no trailing or repeated
    # whitespace, so the body is already in DKIM relaxed canonical form.
    for i, b in enumerate(data):
        if b == 32 and i + 1 < len(data) and data[i + 1] not in (32, 9):
            toks[i] = " "
    return toks


def _qp_lines(text: str) -> list[str]:
    """One logical line as encoded lines of ≤ 75 columns (the soft-break "=" makes 76)."""
    toks = _qp_tokens(text.encode("utf-8"))
    lines: list[str] = []
    cur: list[str] = []
    col = 0
    for i, tok in enumerate(toks):
        if col + len(tok) > 75:
            carry = cur.pop() if cur and cur[-1] == " " else None  # no space before "="
            lines.append("".join(cur))
            cur, col = ([" "], 1) if carry else ([], 0)
        if col == 0 and (tok == "." or (tok == "F" and toks[i + 1:i + 5] == ["r", "o", "m", " "])):
            tok = f"={ord(tok):02X}"  # dot-stuffing and mbox "From " mangling cannot bite
        cur.append(tok)
        col += len(tok)
    lines.append("".join(cur))
    return lines


def qp_piece(text: str, soft_end: bool) -> bytes:
    """Static text to QP with CRLF line ends; ends with a soft break when a value follows
    mid-line, so the value starts at column 0 whatever its length."""
    segs = text.split("\n")
    out = "\r\n".join("=\r\n".join(_qp_lines(seg)) for seg in segs)
    if soft_end and segs[-1]:
        out += "=\r\n"
    return out.encode("ascii")


def qp_value(value: str) -> bytes:
    """A per-recipient value as whole encoded lines, each ending in a soft break."""
    if not value:
        return b""
    data = value.encode("utf-8")
    if _PRINTABLE_RE.fullmatch(data):
        # A URL or a plain name: "=" and "." are the only bytes to escape, and two C-level
        # replaces do it in a fifth of the time of the general substitution.
        data = data.replace(b"=", b"=3D").replace(b".", b"=2E")
    else:
        data = _VALUE_UNSAFE_RE.sub(lambda m: b"".join(_VALUE_ESC[b] for b in m[0]), data)
    if len(data) <= 75:
        return data + b"=\r\n"
    out = []
    i = 0
    while i < len(data):
        j = min(i + 75, len(data))
        eq = data.rfind(b"=", j - 2, j)
        if eq != -1 and j < len(data):
            j = eq  # never split an "=XX" escape across lines
        out.append(data[i:j] + b"=\r\n")
        i = j
    return b"".join(out)
