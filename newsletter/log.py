"""One line per event with its fields (logfmt), secrets never included."""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("newsletter")
_SECRET_WORDS = ("password", "secret", "token", "authorization")


def _fmt(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n\r\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")\
            .replace("\r", "\\r") + '"'
    return text


def event(name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log `name key=value ...`; fields whose names look secret are masked, not dropped."""
    parts = [name]
    for key, value in fields.items():
        if any(w in key.lower() for w in _SECRET_WORDS):
            value = "********"
        parts.append(f"{key}={_fmt(value)}")
    logger.log(level, " ".join(parts))


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                           "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger("newsletter")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
