"""Errors that name what went wrong and where, for one clear line to the operator."""

from __future__ import annotations


class NewsletterError(Exception):
    """Base for errors the operator should see as one line, without a traceback."""


class SourceError(NewsletterError):
    """An article file or upstream feed that could not be read; `where` is its path or URL."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class ConfigError(NewsletterError):
    """The configuration file (or an environment override) is not valid."""


class DatabaseError(NewsletterError):
    """The database URL is malformed or unsupported, or the database cannot be opened."""


class BadValue(NewsletterError):
    """A value the operator gave is refused as such (a 400 in the admin API, not a 409)."""
