"""The rooms of ``bench/`` form layers: a module imports only modules of its own room, of a room on its layer, or of
a layer below; and no two rooms import each other, directly or round a cycle. Read from the source (every import,
also those inside functions), so an upward import fails here with its module, line and target."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"

#: the layers, bottom first (README "Layout"); a room is a package under bench/ or a module directly in it
LAYERS = (
    ("bench", "errors", "schema", "core", "lars", "stores"),  # leaves: exceptions, config base, collectives, io, signals
    ("data", "models"),
    ("representations", "eval", "methods"),
    ("config",),  # a run's config: validates method.* with the method's own Params, eval.* with the probes' schemas
    ("train",),
    ("transfer",),
    ("suite",),  # a suite's cells, which may carry a detection stage
    ("tracking", "runner"),
    ("orchestrate", "report", "perf"),
    ("cli",),
)
LEVEL = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bench"


def _imports() -> list[tuple[str, int, str, str]]:
    """(file, line, its room, the imported module's room) of every import of a bench module."""
    found = []
    for path in sorted(BENCH.rglob("*.py")):
        relative = path.relative_to(BENCH.parent)
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        room = _room(module) if path.parent != BENCH or path.name == "__init__.py" else path.stem
        for node in ast.walk(ast.parse(path.read_text())):
            targets = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else
                       [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            found += [(str(relative), node.lineno, room, _room(t)) for t in targets if t.split(".")[0] == "bench"]
    return found


def test_every_room_has_a_layer():
    rooms = {p.name for p in BENCH.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    rooms |= {p.stem for p in BENCH.glob("*.py") if p.name != "__init__.py"}
    assert rooms - set(LEVEL) == set(), "add the new room to LAYERS (and to the README's Layout)"


def test_no_module_imports_a_room_above_its_own():
    upward = [f"{file}:{line}: {room} (layer {LEVEL[room]}) imports {target} (layer {LEVEL[target]})"
              for file, line, room, target in _imports() if LEVEL[target] > LEVEL[room]]
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_no_two_rooms_import_each_other():
    graph: dict[str, set[str]] = {}
    for _, _, room, target in _imports():
        if target != room:
            graph.setdefault(room, set()).add(target)
    cycles = []

    def visit(room: str, path: list[str]) -> None:
        for target in sorted(graph.get(room, ())):
            if target in path:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif LEVEL[target] == LEVEL[room]:  # only rooms of one layer can close a cycle
                visit(target, [*path, target])

    for room in graph:
        visit(room, [room])
    assert cycles == [], "rooms that import each other:\n" + "\n".join(sorted(set(cycles)))
