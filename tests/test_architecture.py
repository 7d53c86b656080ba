"""The package's rooms keep their floors (docs/ARCHITECTURE.md): no module imports a room above
its own, no two modules import each other (a function-level import counts), analysis/ reads
tables and draws — it imports no room that trains or plans — and only analysis/ draws."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit  # every test here is in the fast tier

PACKAGE = Path(__file__).resolve().parents[1] / "mismatch_jax"

FLOORS = {
    # shared utilities: no room above them
    "errors": 0, "files": 0, "config_io": 0, "compilation": 0, "population": 0,
    "envs": 1,
    "models": 2, "data": 2,
    "train": 3, "planning": 3,
    "agents": 4,
    "sweep": 5,
    "analysis": 5,  # reads tables and draws; may not import train/planning/agents/sweep (below)
    "experiments": 6,
    "cli": 7, "__init__": 7,
}
ANALYSIS_MAY_IMPORT = {"errors", "files", "config_io", "analysis"}


def _room(module_path: Path) -> str:
    parts = module_path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported_rooms(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    rooms = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mismatch_jax"):
            parts = node.module.split(".")
            if len(parts) > 1:
                rooms.add(parts[1])
            else:  # from mismatch_jax import models, envs
                rooms.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "mismatch_jax" and len(parts) > 1:
                    rooms.add(parts[1])
    return rooms


def test_every_room_has_a_floor():
    rooms = {_room(p) for p in PACKAGE.rglob("*.py")}
    assert rooms <= set(FLOORS), f"rooms without a floor in this test and docs/ARCHITECTURE.md: {rooms - set(FLOORS)}"


def test_no_import_points_up_a_floor():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        room = _room(path)
        for target in _imported_rooms(path) - {room}:
            if FLOORS[target] > FLOORS[room] or (FLOORS[target] == FLOORS[room] > 0 and room != "analysis"
                                                 and {room, target} != {"models", "data"}
                                                 and {room, target} != {"train", "planning"}):
                violations.append(f"{path.relative_to(PACKAGE.parent)} ({room}, floor {FLOORS[room]}) imports "
                                  f"{target} (floor {FLOORS[target]})")
    assert not violations, "\n".join(violations)


def test_analysis_reads_tables_and_draws():
    for path in sorted((PACKAGE / "analysis").rglob("*.py")):
        outside = _imported_rooms(path) - ANALYSIS_MAY_IMPORT
        assert not outside, f"{path.name} imports {sorted(outside)}: analysis/ must not train or plan"


# Drawing lives in analysis/. Left for now: mbpo_compare.py draws its own curves (being reworked).
MAY_DRAW_OUTSIDE_ANALYSIS = {"experiments/mbpo_compare.py"}


def _imports_matplotlib(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                 else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        if any(name.split(".")[0] == "matplotlib" for name in names):
            return True
    return False


def test_only_analysis_draws():
    drawing = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
               if _room(path) != "analysis" and _imports_matplotlib(path)}
    assert drawing <= MAY_DRAW_OUTSIDE_ANALYSIS, \
        f"{sorted(drawing - MAY_DRAW_OUTSIDE_ANALYSIS)} import matplotlib: figures are drawn in analysis/"


def test_models_and_data_and_train_and_planning_do_not_import_each_other_sideways():
    # Same-floor rooms stay independent: models ↔ data and train ↔ planning never import each other.
    for room, other in (("models", "data"), ("data", "models"), ("train", "planning"), ("planning", "train")):
        for path in sorted((PACKAGE / room).rglob("*.py")):
            assert other not in _imported_rooms(path), f"{path.relative_to(PACKAGE.parent)} imports {other}"


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in it: at the top, inside a function or under
    ``if TYPE_CHECKING`` (an import moved into a function still ties the two modules)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mismatch_jax"):
            for alias in node.names:  # `from pkg import submodule` names a module, else the module itself
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mismatch_jax"))
    return found & modules


def import_circles(package: Path = PACKAGE) -> list[list[str]]:
    """Every circle of modules that import each other (strongly connected components of more than
    one module, or a module importing itself), each sorted."""
    paths = {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph = {name: _imported_modules(path, set(paths)) for name, path in paths.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1 or node in graph[node]:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle_even_through_function_level_imports():
    circles = import_circles()
    assert not circles, "modules that import each other (break the circle, do not hide it in a function): " + \
        "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_sees_a_function_level_import(tmp_path):
    package = tmp_path / "mismatch_jax"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from mismatch_jax.b import B\n")
    (package / "b.py").write_text("def f():\n    from mismatch_jax import a\n")
    assert import_circles(package) == [["mismatch_jax.a", "mismatch_jax.b"]]
