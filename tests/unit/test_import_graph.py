"""The import graph of `workbench/`: no cycles, and no arrow from the lower layers up.

Every import counts, function-level (lazy) ones included, since a lazy import still couples
the modules; only imports under `if TYPE_CHECKING:` are left out (they never run)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "workbench"

# Lower layers (methods, measurements, models, data, teaching) must not reach the ones that
# drive them (worker, session, executors, UI, CLI, recommendation).
LOWER = ("workbench.methods", "workbench.measure", "workbench.models", "workbench.data", "workbench.teach")
UPPER = ("workbench.worker", "workbench.session", "workbench.exec", "workbench.ui", "workbench.cli",
         "workbench.recommend")

# Arrows known to break the rules, still to be moved to the layer where the code belongs
# (issue 21). The test fails on any arrow not listed here, and on a listed one that is gone,
# so that this list only shrinks.
KNOWN: set[tuple[str, str]] = set()


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported workbench module, line) for every import in `path` that runs."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def resolve(target: str) -> str | None:
        # `from x import y` may import the submodule x.y; otherwise the longest known module.
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("workbench"):
                    target = resolve(alias.name)
                    if target:
                        found.append((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if stem.startswith("workbench"):
                for alias in node.names:
                    target = resolve(f"{stem}.{alias.name}")
                    if target:
                        found.append((target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


def _graph() -> dict[str, dict[str, int]]:
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in paths.items():
        edges = graph.setdefault(name, {})
        for target, line in _imports(path, set(paths)):
            # A package's own __init__ is imported on the way to its submodules: not an arrow.
            if target != name and not name.startswith(target + "."):
                edges.setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strong(w)
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
                out.append(sorted(component))

    import sys
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _violations() -> tuple[list[str], set[tuple[str, str]]]:
    graph = _graph()
    messages: list[str] = []
    arrows: set[tuple[str, str]] = set()
    for component in _cycles(graph):
        members = set(component)
        for a in component:
            for b, line in graph[a].items():
                if b in members:
                    arrows.add((a, b))
                    if (a, b) not in KNOWN:
                        messages.append(f"cycle {' <-> '.join(component)}: {a} line {line} imports {b}")
    for a, edges in graph.items():
        if not _in(a, LOWER):
            continue
        for b, line in edges.items():
            if _in(b, UPPER):
                arrows.add((a, b))
                if (a, b) not in KNOWN:
                    messages.append(f"arrow up: {a} line {line} imports {b}")
    return messages, arrows


def test_no_import_cycles_and_no_arrow_up() -> None:
    messages, arrows = _violations()
    assert not messages, "\n".join(sorted(set(messages)))
    assert not KNOWN - arrows, f"fixed, remove from KNOWN: {sorted(KNOWN - arrows)}"
