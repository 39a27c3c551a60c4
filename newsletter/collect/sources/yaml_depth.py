"""How deeply YAML text nests its collections, read from the characters before any parser."""

from __future__ import annotations

from dataclasses import dataclass, field

_BLANK = " \t"


@dataclass(slots=True)
class _State:
    # Open block collections as (column, "seq" or "map", depth), innermost last.
    blocks: list[tuple[int, str, int]] = field(default_factory=list)
    flow: int = 0  # open [ and { brackets
    flow_base: int = 0  # block collections open where the bracket or quote opened
    quote: str = ""  # the quote character of a scalar that continues on the next line
    in_scalar: bool = False  # a block scalar (| or >) is open ...
    scalar_parent: int = -1  # ... for a node at this column
    scalar_indent: int = -1  # its content's indentation, once its first line is seen

    def open(self, col: int, kind: str) -> int:
        """The depth of a block collection starting at `col` (a new one or a continued one)."""
        b = self.blocks
        while b and b[-1][0] > col:
            b.pop()
        # "key:" then "- item" at the key's column nests a sequence at the same column;
        # a later "other:" there closes that sequence and continues the mapping.
        while len(b) > 1 and b[-1][0] == col == b[-2][0] and b[-1][1] != kind:
            b.pop()
        if b and b[-1][0] == col and b[-1][1] == kind:
            return b[-1][2]
        b.append((col, kind, (b[-1][2] if b else 0) + 1))
        return b[-1][2]


def nesting_depth(source: str, limit: int) -> int:
    """The depth of nested collections, counting stopped once it exceeds `limit`.

    PyYAML's own guards differ between versions (6.0.4 stops deep flow nesting itself with
    its own message, older ones recurse until they crash), so ours runs on the text first.
    Brackets, "- " entries and "key:" mappings are counted as YAML reads them, by column,
    and never inside quoted or block scalars or comments; the event scan afterwards
    confirms the count for what is let through.
    """
    state = _State()
    deepest = 0
    for line in source.split("\n"):
        deepest = max(deepest, _line_depth(line, state))
        if deepest > limit:
            break
    return deepest


def _line_depth(line: str, st: _State) -> int:
    stripped = line.lstrip(" ")
    indent = len(line) - len(stripped)
    if st.in_scalar:
        if not stripped.strip():
            return 0  # blank lines belong to the block scalar
        if st.scalar_indent < 0 and indent > st.scalar_parent:
            st.scalar_indent = indent
        if st.scalar_indent >= 0 and indent >= st.scalar_indent:
            return 0
        st.in_scalar, st.scalar_indent = False, -1
    if st.flow or st.quote:  # a bracket or quoted scalar opened on an earlier line
        return _scan(line, 0, st.flow_base, st)
    if not stripped.strip(_BLANK) or stripped.startswith("#"):
        return 0
    while st.blocks and st.blocks[-1][0] > indent:
        st.blocks.pop()
    return _scan(line, indent, st.blocks[-1][2] if st.blocks else 0, st)


def _scan(line: str, i: int, depth: int, st: _State) -> int:
    """Scan one line from column i with `depth` collections open around it."""
    deepest = depth + st.flow
    start = not st.quote  # the next non-blank character begins a node
    node_col = i
    n = len(line)
    while i < n:
        if st.quote:
            i = _close_quote(line, i, st.quote)
            if i < 0:
                return deepest  # the scalar goes on past this line
            st.quote, start = "", False
            depth = st.flow_base if not st.flow else depth
            continue
        c = line[i]
        nxt = line[i + 1] if i + 1 < n else " "
        if c in _BLANK:
            i += 1
            continue
        if c == "#" and (i == 0 or line[i - 1] in _BLANK):
            break  # a comment
        if st.flow:
            if c in "[{":
                st.flow += 1
            elif c in "]}":
                st.flow -= 1
                start = False
            elif c in "," or (c == ":" and nxt in _BLANK + ",[]{}"):
                start = True
            elif start and c in "'\"":
                st.quote = c
            else:
                start = c == "?" and nxt in _BLANK
            i += 1
            deepest = max(deepest, depth + st.flow)
            continue
        if start and c in "-?:" and nxt in _BLANK:  # a block entry, complex key or value
            depth = st.open(i, "seq" if c == "-" else "map")
            node_col = i + 2
            i += 2
        elif start and c in "!&":  # a tag or anchor before the node itself
            while i < n and line[i] not in _BLANK:
                i += 1
        elif start and c in "[{":
            st.flow, st.flow_base = 1, depth
            i += 1
        elif start and c in "'\"":
            st.quote, st.flow_base, node_col = c, depth, i
            i += 1
        elif start and c in "|>":
            # Its text is every following line indented deeper than the collection it is in.
            st.in_scalar = True
            st.scalar_parent = st.blocks[-1][0] if st.blocks else -1
            return deepest
        elif c == ":" and nxt in _BLANK:
            depth = st.open(node_col, "map")
            start = True
            i += 2
        else:
            if start:
                node_col = i
            start = False
            i += 1
        deepest = max(deepest, depth + st.flow)
    return deepest


def _close_quote(line: str, i: int, quote: str) -> int:
    """The index after the closing quote, or -1 when the scalar continues on later lines."""
    n = len(line)
    while i < n:
        c = line[i]
        if quote == '"' and c == "\\":
            i += 2
            continue
        if c == quote:
            if quote == "'" and i + 1 < n and line[i + 1] == "'":
                i += 2  # '' is an escaped quote in a single-quoted scalar
                continue
            return i + 1
        i += 1
    return -1
