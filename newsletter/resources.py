"""Where the shipped templates are: inside the package from a wheel, else the checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# The wheel carries the checkout's top-level templates/ as newsletter/_templates (pyproject's
# force-include); a checkout or an editable install reads templates/ itself, so there is one source.
_IN_WHEEL = _PACKAGE / "_templates"
DEFAULT_TEMPLATES = _IN_WHEEL if _IN_WHEEL.is_dir() else _PACKAGE.parent / "templates"
