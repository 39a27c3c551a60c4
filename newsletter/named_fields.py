"""Operator text templates ("{publication} No. {number}"): named fields, no attributes or items."""

# str.format resolves "{publication.__class__.__mro__}" and "{date.__init__.__globals__}":
# a template could read Python internals into a subject, or crash the build. Here a field is
# one of the names given, formatted with format(value, spec) and nothing else, so no
# attribute, item or conversion is ever looked up; the same parse serves `config check`
# (check) and the build (fill), so a template that passes the one cannot fail the other.

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime

from newsletter.errors import NewsletterError

__all__ = ["TemplateError", "check", "fill"]

# Values for `check` to try each field's format spec on, by the field's type.
_SAMPLES: dict[type, object] = {str: "The Ledger", int: 12,
                                datetime: datetime(2024, 6, 3, 9, 30, tzinfo=UTC)}
# format("x", ">999999999") builds a gigabyte: widths and precisions stay small.
_MAX_WIDTH = 999
_NUMBER_RE = re.compile(r"\d+")


class TemplateError(NewsletterError):
    """What is wrong with a template, as words for the one line that names its setting."""


def _shown(name: str, conversion: str | None, spec: str) -> str:
    return "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") \
        + "}"


def _expected(names: Iterable[str]) -> str:
    fields = [f"{{{n}}}" for n in names]
    return ", ".join(fields[:-1]) + " or " + fields[-1] if len(fields) > 1 else "".join(fields)


def _parse(template: str, names: Iterable[str]) -> list[tuple[str, str | None, str]]:
    """(literal text, field name or None, format spec) pieces; TemplateError for anything
    but a known name with an optional plain spec."""
    known = list(names)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone "{" or "}"
        raise TemplateError(f"{template!r}: {exc} (write {{{{ or }}}} for a brace "
                            f"itself)") from None
    pieces: list[tuple[str, str | None, str]] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            pieces.append((literal, None, ""))
            continue
        shown = _shown(name, conversion, spec or "")
        if name == "" or name.isdigit():
            why = f"a field needs a name: {_expected(known)}"
        elif "." in name or "[" in name:
            why = f"only the field itself can be used, not its attributes or items " \
                  f"({_expected(known)})"
        elif name not in known:
            why = f"unknown field (expected {_expected(known)})"
        elif conversion:
            why = "conversions such as !r or !s are not supported"
        elif "{" in (spec or ""):
            why = "a format spec cannot hold another field"
        else:
            pieces.append((literal, name, spec or ""))
            continue
        raise TemplateError(f"{shown!r}: {why}")
    return pieces


def _format(name: str, value: object, spec: str) -> str:
    # strftime output is bounded by Python itself; widths elsewhere are bounded here.
    if not isinstance(value, date) \
            and any(int(n) > _MAX_WIDTH for n in _NUMBER_RE.findall(spec)):
        raise TemplateError(f"{_shown(name, None, spec)!r}: widths and precisions over "
                            f"{_MAX_WIDTH} are not supported")
    try:
        return format(value, spec)
    except (ValueError, TypeError, OverflowError) as exc:
        raise TemplateError(f"{_shown(name, None, spec)!r}: {exc}") from None


def fill(template: str, values: Mapping[str, object]) -> str:
    """The template with each {name} or {name:spec} replaced by its value, formatted."""
    out = []
    for literal, name, spec in _parse(template, values):
        out.append(literal)
        if name is not None:
            out.append(_format(name, values[name], spec))
    return "".join(out)


def check(template: str, fields: Mapping[str, type]) -> None:
    """TemplateError unless `template` fills with values of these types (its specs too)."""
    fill(template, {name: _SAMPLES[kind] for name, kind in fields.items()})
