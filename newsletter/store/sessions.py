"""Dashboard sessions kept server-side: opened at login, checked per request, revoked, pruned."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from newsletter.store import schema as s

_S = s.admin_sessions.c
# Rows past their expiry deleted per login: a few index reads and deletes, however many
# piled up; each login adds one row, so the backlog only shrinks.
PRUNE_BATCH = 100
_IP_CHARS, _AGENT_CHARS = 64, 300


class SessionQueries:
    """One row per login, keyed by a hash of the session's secret (the cookie is never kept).

    A session is live while its row exists, is not revoked and has not expired: every web
    process reads the same rows, so a logout in one holds in all of them and after a restart.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create_session(self, session_id: str, *, now: datetime, expires_at: datetime,
                       ip: str = "", user_agent: str = "") -> None:
        """Record a new session, and prune up to PRUNE_BATCH expired ones on the way."""
        with self.engine.begin() as conn:
            conn.execute(s.admin_sessions.insert().values(
                id=session_id, created_at=now, expires_at=expires_at, revoked_at=None,
                ip=ip[:_IP_CHARS], user_agent=user_agent[:_AGENT_CHARS]))
            _prune(conn, now, PRUNE_BATCH)

    def session_alive(self, session_id: str, now: datetime) -> bool:
        """Whether that session exists, has not been revoked and has not expired."""
        q = sa.select(_S.id).where(_S.id == session_id, _S.revoked_at.is_(None),
                                   _S.expires_at > now)
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def revoke_session(self, session_id: str, now: datetime) -> bool:
        """End one session; False when it was not live (already revoked, or unknown)."""
        with self.engine.begin() as conn:
            done = conn.execute(s.admin_sessions.update().where(
                _S.id == session_id, _S.revoked_at.is_(None)).values(revoked_at=now))
        return done.rowcount > 0

    def revoke_all_sessions(self, now: datetime) -> int:
        """End every session not yet revoked ("log out everywhere"); how many were."""
        with self.engine.begin() as conn:
            done = conn.execute(s.admin_sessions.update().where(
                _S.revoked_at.is_(None), _S.expires_at > now).values(revoked_at=now))
        return done.rowcount

    def count_sessions(self, now: datetime) -> int:
        """Sessions live now."""
        q = sa.select(sa.func.count()).select_from(s.admin_sessions).where(
            _S.revoked_at.is_(None), _S.expires_at > now)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def prune_sessions(self, now: datetime, limit: int = PRUNE_BATCH) -> int:
        """Delete up to `limit` sessions past their expiry (revoked ones are kept until
        then, to show who logged out when); how many were deleted."""
        with self.engine.begin() as conn:
            return _prune(conn, now, limit)


def _prune(conn: sa.Connection, now: datetime, limit: int) -> int:
    # The oldest first, by the expiry index; a subquery with LIMIT works on both databases.
    oldest = sa.select(_S.id).where(_S.expires_at <= now).order_by(_S.expires_at).limit(limit)
    done = conn.execute(s.admin_sessions.delete().where(_S.id.in_(oldest.scalar_subquery())))
    return done.rowcount
