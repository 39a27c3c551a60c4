"""The one Jinja loader: the operator's [newsletter] templates_dir first, the shipped ones after."""

from __future__ import annotations

from pathlib import Path

from jinja2 import BaseLoader, Environment, FileSystemLoader, StrictUndefined, Undefined

from newsletter.errors import NewsletterError
from newsletter.resources import DEFAULT_TEMPLATES

__all__ = ["DEFAULT_TEMPLATES", "environment", "loader"]


def loader(templates_dir: Path | str | None = None) -> BaseLoader:
    """Finds `email/issue.html`, `web/…`, `admin/…`, `archive/…`: an operator's file of the
    same name wins over the shipped one, file by file."""
    folders = []
    if templates_dir:
        if not Path(templates_dir).is_dir():
            raise NewsletterError(f"newsletter.templates_dir: {templates_dir} is not a folder")
        folders.append(str(templates_dir))
    folders.append(str(DEFAULT_TEMPLATES))
    return FileSystemLoader(folders)  # searched in order: the first folder holding it wins


def environment(templates_dir: Path | str | None = None, *, autoescape: bool,
                strict: bool = False, trim: bool = False,
                keep_trailing_newline: bool = False) -> Environment:
    """An environment over loader(); `strict`: an undefined name fails instead of being empty.

    Each caller keeps its own (the dashboard adds a filter), built once where it can be.
    """
    return Environment(loader=loader(templates_dir), autoescape=autoescape,  # noqa: S701
                       undefined=StrictUndefined if strict else Undefined,
                       trim_blocks=trim, lstrip_blocks=trim,
                       keep_trailing_newline=keep_trailing_newline)
