"""The layering rules of docs/architecture.md, checked on the source (ast, no imports executed).

* the platform never imports a system: it reaches systems through ``mlsd.platform.system``;
* no import cycles between mlsd's modules (function-level imports count: a lazy import is still a
  dependency);
* production code of a system never imports its simulated world (``world.py``);
* the list of systems exists once (the ``mlsd.systems`` entry points).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from mlsd.platform.system import system_names, systems

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mlsd"
PRODUCTION_ROLES = ("engine", "service", "training", "schedule", "monitoring")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every mlsd module ``path`` imports, anywhere in the file (``from a import b`` counts a.b when
    a.b is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mlsd"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mlsd"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_platform_imports_no_system() -> None:
    offenders = []
    for path in (PACKAGE / "platform").rglob("*.py"):
        text = path.read_text()
        bad = [m for m in _imports(path) if m.split(".")[1] in system_names()]
        if bad or "import_module" in text:
            offenders.append(f"{path.relative_to(SRC)}: {sorted(bad) or 'import_module'}")
    assert offenders == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative enough for ~200 nodes)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    graph = _graph()
    # a package's __init__ re-exporting its own submodule is not a cycle of design
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m.startswith(name + ".") or name.startswith(m + "."))}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", system_names())
def test_production_code_never_imports_the_simulated_world(name: str) -> None:
    world = f"mlsd.{name}.world"
    for role in PRODUCTION_ROLES:
        path = PACKAGE / name / f"{role}.py"
        if path.exists():
            assert world not in _imports(path), f"{path.relative_to(SRC)} imports {world}"


def test_the_system_list_exists_once() -> None:
    pyproject = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["mlsd.systems"]
    assert sorted(declared) == system_names() == sorted(systems())
    # no second list of the names in the platform or the CLI
    for path in [*(PACKAGE / "platform").rglob("*.py"), PACKAGE / "cli.py", PACKAGE / "demo.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) >= 2:
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                assert not values >= {"fraud", "recsys"} and not values >= {"recsys", "search"}, path
