"""The transport registry: `[mail] transport` names the pool the delivery engine sends on."""

from __future__ import annotations

from collections.abc import Callable

from newsletter.config import TRANSPORT_KINDS, Settings
from newsletter.deliver.engine import Pool
from newsletter.deliver.outbox import OutboxPool
from newsletter.deliver.smtp import SmtpPool

__all__ = ["TRANSPORTS", "pool_from_settings"]

# A new transport is a module with a Pool (connect() → a Connection: send, close,
# pipelining) and one line here; config.TRANSPORT_KINDS lists the same names for
# validation, and tests/test_registries.py keeps the two equal.
TRANSPORTS: dict[str, Callable[[Settings], Pool]] = {
    "outbox": OutboxPool.from_settings,
    "smtp": SmtpPool.from_settings,
}


def pool_from_settings(settings: Settings) -> Pool:
    """The configured transport's pool; settings validation has already named the kinds."""
    kind = settings.mail.transport
    if kind not in TRANSPORTS:  # only a Settings built past load_settings gets here
        raise ValueError(f"mail.transport: expected one of {', '.join(TRANSPORT_KINDS)}, "
                         f"got {kind!r}")
    return TRANSPORTS[kind](settings)
