"""Markdown articles with YAML front matter, plus the Markdown helpers other sources share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from email.utils import parsedate_to_datetime
from typing import Any

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from newsletter.collect.sanitize import slug_for, slugify
from newsletter.collect.sources.yaml_depth import nesting_depth
from newsletter.errors import SourceError
from newsletter.models import ArticleDraft

# The C loader is much faster; both are "safe" (plain data only, no Python objects).
_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Years outside this window are typos (9999, 0202) and break date arithmetic near the
# limits of `datetime`, so they are refused rather than published.
MIN_YEAR = 1000
MAX_YEAR = 2999

# Front matter is a handful of fields; anything this large is a mistake or an attack.
MAX_FRONT_MATTER = 64 * 1024
MAX_YAML_DEPTH = 16
_TOO_DEEP = f"front matter is nested more than {MAX_YAML_DEPTH} levels deep"

_FENCE_CLOSE = ("---", "...")

# commonmark allows raw HTML; sanitising is done later, by the store, for every source.
_md = MarkdownIt("commonmark").enable("table")


def normalise_newlines(text: str) -> str:
    """Drop a leading BOM and turn CRLF / CR into LF so line rules see one kind of break."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def has_front_matter(text: str) -> bool:
    """True when the text opens with a `---` line (a BOM before it is tolerated)."""
    first = normalise_newlines(text).split("\n", 1)[0]
    return first.rstrip() == "---"


def parse_markdown(text: str, origin: str) -> ArticleDraft:
    """Read a Markdown article whose metadata sits in YAML front matter."""
    meta, body = _split_front_matter(normalise_newlines(text), origin)
    fields = _Fields(meta, origin)
    title = fields.text("title")
    if not title:
        raise SourceError(origin, "missing required field 'title'")
    published = fields.when("date")
    if published is None:
        raise SourceError(origin, "missing required field 'date'")
    slug_given = fields.text("slug")
    return ArticleDraft(
        title=title,
        published=published,
        body_html=render_markdown(body),
        origin=origin,
        updated=fields.when("updated"),
        authors=fields.names("authors", "author", split_commas=False),
        section=fields.text("section"),
        summary=fields.text("summary"),
        image=fields.text("image"),
        image_credit=fields.text("image_credit"),
        # A hand-written slug is still normalised so it is always safe in a URL path.
        slug=slugify(slug_given) if slug_given else slug_for(title),
        url=fields.text("url"),
        guid=fields.text("id") or fields.text("guid"),
        tags=fields.names("tags", split_commas=True),
    )


def _split_front_matter(text: str, origin: str) -> tuple[dict[str, Any], str]:
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != "---":
        raise SourceError(origin, "does not start with a '---' front matter line")
    for end in range(1, len(lines)):
        if lines[end].rstrip() in _FENCE_CLOSE:
            break
    else:
        raise SourceError(origin, "front matter is not closed by a '---' line")
    source = "\n".join(lines[1:end])
    if len(source) > MAX_FRONT_MATTER:
        raise SourceError(origin, f"front matter is larger than {MAX_FRONT_MATTER // 1024} KiB")
    data = _load_yaml(source, origin)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise SourceError(
            origin, f"front matter must be a mapping of 'key: value' lines, not {kind}"
        )
    # Keys are matched case-insensitively; non-string keys cannot be ours and are ignored.
    meta = {k.strip().lower(): v for k, v in data.items() if isinstance(k, str)}
    return meta, "\n".join(lines[end + 1 :])


def _load_yaml(source: str, origin: str) -> Any:
    try:
        # A streaming pass over the events first, because building the data is where the
        # dangers are. Aliases are refused outright: front matter never needs them, and
        # they are how "billion laughs" documents expand a few bytes into gigabytes.
        # Deep nesting is refused because the loaders build data recursively: the
        # pure-Python one raises RecursionError, and libyaml's overflows the C stack.
        # Counted on the text first, so PyYAML (whose own limits and messages change
        # between releases) never sees a deep document; the event count below is exact.
        if nesting_depth(source, MAX_YAML_DEPTH) > MAX_YAML_DEPTH:
            raise SourceError(origin, _TOO_DEEP)
        depth = 0
        for event in yaml.parse(source, Loader=_YamlLoader):
            if isinstance(event, yaml.AliasEvent):
                reason = f"front matter uses a YAML alias (*{event.anchor}), which is not allowed"
                raise SourceError(origin, reason)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise SourceError(origin, _TOO_DEEP)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.load(source, Loader=_YamlLoader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            # +2: one for 1-based counting, one for the opening '---' line.
            where = f" (line {exc.problem_mark.line + 2})"
        raise SourceError(origin, f"front matter is not valid YAML: {exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        raise SourceError(origin, f"front matter is not valid YAML: {exc}") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        # PyYAML builds timestamps itself, so "2025-13-01" fails here, not in YAMLError.
        raise SourceError(origin, f"front matter has an impossible value: {exc}") from None


class _Fields:
    """Typed access to front matter values, raising SourceError that names the field."""

    def __init__(self, meta: dict[str, Any], origin: str) -> None:
        self.meta = meta
        self.origin = origin

    def _fail(self, key: str, reason: str) -> SourceError:
        return SourceError(self.origin, f"field '{key}' {reason}")

    def text(self, key: str) -> str:
        value = self.meta.get(key)
        if value is None:
            return ""
        # YAML turns `title: 1984` into an int; a number is still clearly meant as text.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self._fail(key, f"must be text, got {_kind(value)} (put it in quotes)")
        return " ".join(value.split())

    def names(self, *keys: str, split_commas: bool) -> tuple[str, ...]:
        key = next((k for k in keys if self.meta.get(k) is not None), keys[0])
        value = self.meta.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            items: Sequence[Any] = value.split(",") if split_commas else [value]
        elif isinstance(value, list):
            items = value
        else:
            raise self._fail(key, f"must be a list or text, got {_kind(value)}")
        out: dict[str, str] = {}  # casefolded -> first spelling seen, so "AI" == "ai"
        for item in items:
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise self._fail(key, f"must contain only text, got {_kind(item)}")
            name = " ".join(str(item).split())
            if name:
                out.setdefault(name.casefold(), name)
        return tuple(out.values())

    def when(self, key: str) -> datetime | None:
        value = self.meta.get(key)
        if value is None:
            return None
        try:
            return to_utc_datetime(value)
        except ValueError as exc:
            raise self._fail(key, str(exc)) from None


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", bool: "true/false"}
    return names.get(type(value), type(value).__name__)


def to_utc_datetime(value: Any) -> datetime:
    """A YAML date/datetime or date string as an aware datetime; ValueError says why not."""
    if isinstance(value, datetime):
        result = value
    elif isinstance(value, date):
        result = datetime.combine(value, time(0, 0))
    elif isinstance(value, str):
        result = _parse_date_string(value.strip())
    else:
        raise ValueError(f"must be a date such as 2025-09-05, got {_kind(value)}")
    if result.tzinfo is None or result.utcoffset() is None:
        result = result.replace(tzinfo=UTC)  # naive times are taken as UTC, as documented
    check_year(result.year)
    return result


def _parse_date_string(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        pass
    try:
        # RFC 2822 ("Fri, 05 Sep 2025 10:00:00 +0000") is what people paste from feeds.
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    raise ValueError(f"is not a date: {value!r} (use e.g. 2025-09-05 or 2025-09-05T10:00:00Z)")


def check_year(year: int) -> None:
    """Refuse years that are surely typos; ValueError names the accepted range."""
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ValueError(f"has year {year}, outside {MIN_YEAR}-{MAX_YEAR}")


def render_markdown(body: str, *, drop_placeholder_links: bool = False) -> str:
    """Render Markdown to (unsanitised) HTML, optionally unwrapping `[text](#)` links."""
    html, _ = render_markdown_tokens(body, drop_placeholder_links=drop_placeholder_links)
    return html


def render_markdown_tokens(
    body: str, *, drop_placeholder_links: bool = False
) -> tuple[str, list[Token]]:
    """Like render_markdown, also returning the block tokens (for summaries)."""
    env: dict[str, Any] = {}
    tokens = _md.parse(body, env)
    if drop_placeholder_links:
        # Working on tokens, not text, means brackets and quotes inside link text and
        # reference-style links (`[x][r]` with `[r]: #`) are all handled by the parser.
        for token in tokens:
            if token.children:
                token.children = _unwrap_placeholder_links(token.children)
    return _md.renderer.render(tokens, _md.options, env), tokens


def _unwrap_placeholder_links(children: list[Token]) -> list[Token]:
    out: list[Token] = []
    skipping = False  # CommonMark links never nest, so the next link_close is ours
    for child in children:
        if child.type == "link_open" and child.attrGet("href") == "#":
            skipping = True
            continue
        if child.type == "link_close" and skipping:
            skipping = False
            continue
        out.append(child)
    return out


def inline_plain_text(children: Sequence[Token]) -> str:
    """Plain text of inline tokens: emphasis, links and HTML tags dropped, text kept."""
    parts: list[str] = []
    for child in children:
        if child.type in ("text", "text_special", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return " ".join("".join(parts).split())


def markdown_plain_text(inline_source: str) -> str:
    """Plain text of one line of inline Markdown, e.g. `**Why *This* Matters**`."""
    tokens = _md.parseInline(inline_source)
    return inline_plain_text(tokens[0].children or []) if tokens else ""


def first_paragraph_text(tokens: Sequence[Token]) -> str:
    """Plain text of the first top-level paragraph, or "" when there is none."""
    for index, token in enumerate(tokens[:-1]):
        if token.type == "paragraph_open" and token.level == 0:
            return inline_plain_text(tokens[index + 1].children or [])
    return ""
