"""The package's rooms keep their floors (docs/ARCHITECTURE.md): no module imports a room above
its own, and analysis/ reads tables and draws — it imports no room that trains or plans."""

from __future__ import annotations

import ast
from pathlib import Path

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


def test_models_and_data_and_train_and_planning_do_not_import_each_other_sideways():
    # Same-floor rooms stay independent: models ↔ data and train ↔ planning never import each other.
    for room, other in (("models", "data"), ("data", "models"), ("train", "planning"), ("planning", "train")):
        for path in sorted((PACKAGE / room).rglob("*.py")):
            assert other not in _imported_rooms(path), f"{path.relative_to(PACKAGE.parent)} imports {other}"
