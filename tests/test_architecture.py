"""The package's shape, read from the imports of every module (those inside functions too)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "newsletter"
MAX_LINES = 400

# Which modules may import a library that ties the code to one kind of IO or one framework.
LIBRARY_HOMES: dict[str, tuple[str, ...]] = {
    "sqlalchemy": ("store/",),
    "alembic": ("store/",),
    "psycopg": ("store/",),
    "starlette": ("web/", "pipeline/"),
    "uvicorn": ("web/", "pipeline/"),
    "apscheduler": ("scheduler.py", "pipeline/", "config.py"),
    "httpx": ("collect/sources/upstream.py", "collect/netguard.py", "pipeline/sns_fetch.py"),
    "httpcore": ("collect/netguard.py",),
    "aiosmtplib": ("deliver/smtp.py", "deliver/smtp_replies.py"),
    "click": ("cli/",),
    "rich": ("cli/",),
}
# The stages of the data flow and the models they share: none of them reaches the store,
# the composition root or an entry point (the consumer declares what it needs instead).
CORE = ("collect", "publish", "compose", "audience", "deliver", "models", "errors", "log")
OUTER = ("store", "pipeline", "web", "cli", "scheduler")
ENTRY_POINTS = ("web", "cli", "scheduler")


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. newsletter.deliver.engine
    path: Path
    imports: frozenset[str]  # dotted names, modules and the names imported from them

    @property
    def rel(self) -> str:
        return self.path.relative_to(PACKAGE).as_posix()

    @property
    def area(self) -> str:
        """The first part under newsletter/: a stage package or a top-level module."""
        return self.name.split(".")[1] if "." in self.name else ""


def _read(path: Path) -> Module:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    name = ".".join(parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return Module(name, path, frozenset(found))


MODULES = {m.name: m for m in map(_read, sorted(PACKAGE.rglob("*.py")))}


def _internal(module: Module) -> set[str]:
    """The project's modules this one imports (a name imported from a module counts as it)."""
    return {name for name in module.imports if name in MODULES and name != module.name}


def test_the_layout_is_read():
    # Guards the rules below against passing because nothing was found.
    assert {"newsletter.deliver.engine", "newsletter.store.ledger",
            "newsletter.compose.render", "newsletter.collect.sources.markdown"} <= set(MODULES)
    assert "sqlalchemy" in MODULES["newsletter.store.schema"].imports


@pytest.mark.parametrize("library", sorted(LIBRARY_HOMES))
def test_each_library_stays_in_its_home(library: str):
    homes = LIBRARY_HOMES[library]
    strays = sorted(
        m.rel for m in MODULES.values()
        if any(i == library or i.startswith(library + ".") for i in m.imports)
        and not any(m.rel == h or (h.endswith("/") and m.rel.startswith(h)) for h in homes))
    assert strays == [], f"{library} imported outside {homes}"


def test_the_core_reaches_no_store_root_or_entry_point():
    offences = sorted(
        f"{m.name} -> {dep}" for m in MODULES.values() if m.area in CORE
        for dep in _internal(m) if MODULES[dep].area in OUTER)
    assert offences == []


def test_the_store_knows_only_the_models():
    offences = sorted(
        f"{m.name} -> {dep}" for m in MODULES.values() if m.area == "store"
        for dep in _internal(m) if MODULES[dep].area not in ("store", "models", "errors", "log"))
    assert offences == []


def test_entry_points_call_the_pipeline_never_each_other():
    offences = sorted(
        f"{m.name} -> {dep}" for m in MODULES.values() if m.area in ENTRY_POINTS
        for dep in _internal(m)
        if MODULES[dep].area in ENTRY_POINTS and MODULES[dep].area != m.area)
    assert offences == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    graph = {name: _internal(m) for name, m in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return found


def test_no_circle_of_imports():
    assert _cycles() == []


def test_no_module_is_too_long():
    long = sorted(f"{m.rel}: {n}" for m in MODULES.values()
                  if (n := len(m.path.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert long == []


def test_every_module_says_what_it_is_in_one_line():
    missing = []
    for m in MODULES.values():
        doc = ast.get_docstring(ast.parse(m.path.read_text(encoding="utf-8")), clean=False)
        if not doc or "\n" in doc.strip():
            missing.append(m.rel)
    assert missing == []
