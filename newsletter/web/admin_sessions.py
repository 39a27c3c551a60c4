"""Dashboard sessions: signed cookies naming a session kept in the database, CSRF, flashes."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from newsletter.audience import tokens
from newsletter.models import now_utc
from newsletter.web.admin_http import AdminDeps

SESSION_COOKIE = "newsletter_admin"
FLASH_COOKIE = "newsletter_admin_flash"
SESSION_PURPOSE, CSRF_PURPOSE, FLASH_PURPOSE = "admin-session", "admin-csrf", "admin-flash"
_FLASH_MAX_AGE = timedelta(seconds=60)  # the cookie's own lifetime: read on the next page
_FLASH_BYTES = 650


def session_id(secret: str) -> str:
    """What the database keeps of a session: a hash of its secret, which opens nothing."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Sessions:
    """Session cookies, CSRF tokens and flash messages, each signed by audience.tokens.

    A session cookie is a signed random secret; the session itself is a row in the database
    (deps.sessions) keyed by the secret's hash, so logging out, "log out everywhere" and expiry
    hold in every web process and after a restart. CSRF tokens are bound to the secret and
    accepted only with a live session, so they die with it. The signing key comes from the
    admin token, so changing the token ends every session; each kind of value has its own
    purpose, so none is ever accepted as another.
    """

    def __init__(self, deps: AdminDeps) -> None:
        self.deps = deps
        self.store = deps.sessions
        self.key = hashlib.sha256(b"newsletter-admin-session-v2\0"
                                  + deps.token.encode("utf-8")).digest()
        self.max_age = timedelta(hours=deps.session_hours)

    def create(self, ip: str = "", user_agent: str = "", replacing: str | None = None) -> str:
        """A new session (blocking: run it in a thread) and the cookie that names it.

        Each login gets a fresh secret, so no cookie a browser held before is ever elevated;
        the session it replaces (`replacing`, a secret) is ended rather than left open.
        """
        now = now_utc()
        if replacing:
            self.store.revoke_session(session_id(replacing), now)
        secret = secrets.token_urlsafe(32)
        self.store.create_session(session_id(secret), now=now, expires_at=now + self.max_age,
                                  ip=ip, user_agent=user_agent)
        return tokens.sign(self.key, SESSION_PURPOSE, secret, now)

    def secret_of(self, cookie: str) -> str | None:
        """The secret of a cookie this key signed and that has not expired; not yet known to
        be live. A forged or stale cookie is refused here without a database query."""
        if not cookie:
            return None
        try:
            return tokens.verify(self.key, cookie, SESSION_PURPOSE, self.max_age, now_utc())
        except tokens.TokenError:
            return None

    def nonce_of(self, cookie: str) -> str | None:
        """The secret of a valid, live session cookie (blocking: it asks the database)."""
        secret = self.secret_of(cookie)
        if secret is None or not self.store.session_alive(session_id(secret), now_utc()):
            return None
        return secret

    async def nonce(self, request: Request) -> str | None:
        """The session's secret when the request has a valid, live session cookie."""
        if not self.deps.enabled:
            return None
        secret = self.secret_of(request.cookies.get(SESSION_COOKIE, ""))
        if secret is None:
            return None
        alive = await run_in_threadpool(self.store.session_alive, session_id(secret), now_utc())
        return secret if alive else None

    def revoke(self, nonce: str) -> bool:
        return self.store.revoke_session(session_id(nonce), now_utc())

    def revoke_all(self) -> int:
        return self.store.revoke_all_sessions(now_utc())

    def count(self) -> int:
        return self.store.count_sessions(now_utc())

    def csrf(self, nonce: str, purpose: str) -> str:
        """A token for one form (`purpose`, e.g. "cancel:2") of one session."""
        return tokens.sign(self.key, CSRF_PURPOSE, nonce, now_utc(), extra=purpose)

    def csrf_ok(self, nonce: str, purpose: str, candidate: str) -> bool:
        """Whether `candidate` is this session's token for `purpose`; the caller has already
        found the session live (nonce), which is what ends a token with its session."""
        try:
            return tokens.verify(self.key, candidate, CSRF_PURPOSE, self.max_age, now_utc(),
                                 extra=purpose) == nonce
        except tokens.TokenError:
            return False

    def flash(self, ok: bool, text: str) -> str:
        text = text[:500]
        while True:  # the signed token must stay within what tokens.verify reads
            payload = json.dumps({"ok": ok, "text": text}, ensure_ascii=False)
            if len(payload.encode("utf-8")) <= _FLASH_BYTES or not text:
                return tokens.sign(self.key, FLASH_PURPOSE, payload, now_utc())
            text = text[: len(text) * 3 // 4]

    def read_flash(self, request: Request) -> dict[str, Any] | None:
        # Signed, so nobody can make the dashboard show a message of their choosing.
        try:
            payload = tokens.verify(self.key, request.cookies.get(FLASH_COOKIE, ""),
                                    FLASH_PURPOSE, _FLASH_MAX_AGE, now_utc())
            data = json.loads(payload)
        except ValueError:  # TokenError is one
            return None
        return data if isinstance(data, dict) else None
