"""The package's import graph: no circle among module-level imports, function-level imports only where
listed below, and one INSERT builder. Static (``ast``): nothing is imported to check it."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("marketprism_dagster", "sensors", "resources")

# Function-level imports allowed, per module, each with the reason it is not at module level.
LAZY_ALLOWED: dict[str, str] = {
    "marketprism_dagster.cli": "CLI entry point: loads a command's modules only when that command runs",
    "marketprism_dagster.collector.cli": "CLI entry point: the collector's commands load their runtime on use",
    "marketprism_dagster.writer.cli": "CLI entry point: the writer's commands load their runtime on use",
    "marketprism_dagster.defs.cli": "CLI entry point: Dagster and the store load only for the command run",
    "marketprism_dagster.defs.runner": "entry point of a run in a subprocess: Dagster loads there only",
    "marketprism_dagster.storage.factory": "optional backends: chDB or clickhouse-connect, whichever is used",
    "marketprism_dagster.emulator.registry": "TYPE_CHECKING only: the venue modules are found at run time",
    "marketprism_dagster.storage.embedded": "backend: chDB's engine loads when an embedded store first opens",
    "marketprism_dagster.storage.server": "backend: clickhouse-connect loads when a server store is created",
}
# The one place an INSERT statement is written.
INSERT_BUILDER = "marketprism_dagster/storage/sql.py"


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str:
    """The absolute module name ``from <...> import`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module, modules) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> Iterator[str]:
    """The package modules an import statement loads (a submodule also loads its parent packages)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = _resolve(module, node, modules)
        names = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    own_ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            # a package this module lives in is already being imported when the module runs
            if target in modules and target not in own_ancestors:
                yield target


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: top level, and inside top-level if/try (not TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)


def import_graph(modules: dict[str, Path], lazy_ok: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    """Module -> the package modules it imports: at module level, and (except in ``lazy_ok``) inside
    functions too, so a function-level import cannot hide a circle."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes: Iterator[ast.AST] = _module_level(tree.body) if name in lazy_ok else ast.walk(tree)
        graph[name] = {t for node in nodes if isinstance(node, ast.Import | ast.ImportFrom)
                       for t in _targets(name, node, modules)} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its modules in import order, first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def lazy_imports(modules: dict[str, Path]) -> dict[str, list[str]]:
    """Module -> ``line: import`` of every import inside a function or class body, or under TYPE_CHECKING."""
    out: dict[str, list[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in _module_level(tree.body)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top:
                out.setdefault(name, []).append(f"{node.lineno}: {ast.unparse(node)}")
    return out


# ------------------------------------------------------------------ the graph tools themselves


def test_the_cycle_finder_finds_a_circle_through_a_package_init() -> None:
    modules = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py"), "q": Path("q.py")}
    # p/__init__ imports p.a, p.a imports q, q imports p.a: q -> p (its __init__) -> p.a -> q
    graph = {"p": {"p.a"}, "p.a": {"q"}, "q": {"p", "p.a"}}
    assert find_cycle(graph) == ["p", "p.a", "q", "p"]
    assert find_cycle({"p": {"p.a"}, "p.a": set(), "q": {"p", "p.a"}}) is None
    node = ast.parse("from p.a import x").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert sorted(_targets("q", node, modules)) == ["p", "p.a"]
    node = ast.parse("from . import a").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert sorted(_targets("p.b", node, modules)) == ["p.a"]


def test_imports_inside_functions_and_type_checking_blocks_are_lazy(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\nif TYPE_CHECKING:\n    import json\ntry:\n    import sys\nexcept ImportError:\n"
                   "    pass\ndef f():\n    import re\n")
    assert lazy_imports({"m": src}) == {"m": ["3: import json", "9: import re"]}


# ------------------------------------------------------------------ the rules


def test_no_import_circle() -> None:
    modules = _modules()
    cycle = find_cycle(import_graph(modules, lazy_ok=frozenset(LAZY_ALLOWED)))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_function_level_imports_only_where_allowed() -> None:
    found = lazy_imports(_modules())
    unexpected = {m: lines for m, lines in found.items() if m not in LAZY_ALLOWED}
    assert not unexpected, f"function-level imports outside the allow-list: {unexpected}"
    assert all(reason.strip() for reason in LAZY_ALLOWED.values())
    stale = sorted(set(LAZY_ALLOWED) - set(found))
    assert not stale, f"allowed a function-level import but have none (drop them from LAZY_ALLOWED): {stale}"


def test_insert_statements_are_built_in_one_place() -> None:
    pattern = re.compile(r"INSERT\s+INTO", re.IGNORECASE)
    hits = sorted(
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if pattern.search(path.read_text())
    )
    assert hits == [INSERT_BUILDER]
