"""A suite's cells and axes: what a cell is, the axis settings that make it, and the checks of the axes themselves
(key syntax, zip shapes, repeats, exclude rules, unique cells) that ``bench.suite.suite`` reports by key path."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from bench.config.run import RunConfig
from bench.errors import ConfigError
from bench.methods import method_class

if TYPE_CHECKING:
    from bench.suite.suite import Suite


def run_key(key: str) -> str:
    """The run-config key an axis key sets: a bare method hyper-parameter name ``x`` means ``method.x``."""
    return key if key.split(".")[0] in RunConfig.model_fields else f"method.{key}"


#: names joined by dots, e.g. ``optimizer.lr``
DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class Cell:
    """One run of a suite: its identity, resolved config, and the suite's axis values that made it.

    A detection cell (``depends_on`` set) fine-tunes a detector from the pre-training cell ``depends_on``;
    its ``config`` is that source's.
    """

    id: str
    config: RunConfig
    axes: dict[str, Any]
    depends_on: str | None = None


class Setting(NamedTuple):
    """One axis value of a cell: where the suite writes it, its axis key, and the run-config key it sets."""

    path: str
    key: str
    run_key: str
    value: Any


class Problems(Exception):
    """Problems found while validating a suite, one line each, each starting with its key path."""

    def __init__(self, lines: Sequence[str]):
        super().__init__()
        self.lines = list(dict.fromkeys(lines))


def raise_if(lines: Sequence[str]) -> None:
    if lines:
        raise Problems(lines)


def drop_axes(data: dict[str, Any], key: str, value: Any) -> None:
    """Remove the axes that a run-config override of ``key`` fixes (see ``_apply_sets``)."""
    method = value if key in ("method", "method.name") and isinstance(value, str) else None

    def fixed(axis_key: str) -> bool:
        sets = run_key(axis_key)
        return sets == key or sets.startswith(key + ".")

    def fixed_ablation(ablation_key: str) -> bool:
        owner, _, param = ablation_key.partition(".")
        return fixed(param) or (method is not None and owner != method)

    zipped = [k for entry in data.get("zip", []) for k in entry]
    removed = {k for k in [*data.get("matrix", {}), *zipped] if fixed(k)}
    removed |= {k for k in data.get("ablations", {}) if fixed_ablation(k)}
    if key == "seed":
        data.pop("seeds", None)
        removed.add("seed")
    data["matrix"] = {k: v for k, v in data.get("matrix", {}).items() if k not in removed}
    data["zip"] = [kept for entry in data.get("zip", []) if (kept := {k: v for k, v in entry.items() if k not in removed})]
    data["ablations"] = {k: v for k, v in data.get("ablations", {}).items() if k not in removed}
    data["exclude"] = [rule for rule in data.get("exclude", []) if removed.isdisjoint(rule)]


def axis_paths(suite: Suite) -> dict[str, str]:
    """Each axis key (as a cell's ``axes`` names it) -> its YAML key path."""
    paths = {key: f"matrix.{key}" for key in suite.matrix}
    paths |= {key: f"zip.{i}.{key}" for i, entry in enumerate(suite.zip) for key in entry}
    paths |= {key: f"ablations.{key}" for key in suite.ablations}
    return paths | {"seed": "seeds"}


def axis_problems(suite: Suite) -> list[str]:
    """Problems of the axes themselves: key syntax, owners of ablations, zip shapes, repeats, exclude keys."""
    lines = []
    keys = [(f"matrix.{key}", key) for key in suite.matrix]
    for i, entry in enumerate(suite.zip):
        if len({len(values) for values in entry.values()}) > 1:
            sizes = ", ".join(f"{key}: {len(values)}" for key, values in entry.items())
            lines.append(f"zip.{i}: its axes differ in length ({sizes}); a zip entry pairs values row by row")
        for key in entry:
            keys.append((f"zip.{i}.{key}", key))
            earlier = ["matrix"] * (key in suite.matrix) + [f"zip.{j}" for j in range(i) if key in suite.zip[j]]
            if earlier:
                lines.append(f"zip.{i}.{key}: also an axis in {earlier[0]}; give each axis in one place")
        rows = list(zip(*entry.values(), strict=False))
        lines += [f"zip.{i}: the row {list(row)} appears twice; each cell must differ" for row in _repeated(rows)]
    for key in suite.ablations:
        method, _, param = key.partition(".")
        if not param:
            lines.append(f"ablations.{key}: expected <method>.<key>, e.g. vicreg.epochs or simclr.temperature")
            continue
        try:
            method_class(method)
        except ConfigError as err:
            lines.append(f"ablations.{key}: {err}")
        keys.append((f"ablations.{key}", param))
    lines += [f"{path}: not a dotted key; write names joined by dots, e.g. optimizer.lr" for path, key in keys
              if not DOTTED_KEY.fullmatch(key)]
    for path, values in [*((f"matrix.{k}", v) for k, v in suite.matrix.items()),
                         *((f"ablations.{k}", v) for k, v in suite.ablations.items()), ("seeds", suite.seeds or [])]:
        lines += [f"{path}: the value {value!r} appears twice; each cell must differ" for value in _repeated(values)]
    paths = axis_paths(suite)
    for i, rule in enumerate(suite.exclude):
        lines += [f"exclude.{i}.{key}: not an axis of the suite (its axes: {', '.join(paths)})" for key in rule if key not in paths]
    return lines


def _repeated(values: Sequence[Any]) -> list[Any]:
    return [value for i, value in enumerate(values) if value in values[:i]]


def _matches(rule: dict[str, Any], axes: dict[str, Any]) -> bool:
    return all(key in axes and axes[key] == value for key, value in rule.items())


def excluded(rules: list[dict[str, Any]], cells: list[Cell]) -> list[Cell]:
    """The cells that no exclude rule matches; a rule matching nothing, or leaving nothing, is a problem."""
    lines = [f"exclude.{i}: matches no cell (check its values)" for i, rule in enumerate(rules)
             if not any(_matches(rule, cell.axes) for cell in cells)]
    kept = [cell for cell in cells if not any(_matches(rule, cell.axes) for rule in rules)]
    if cells and not kept:
        lines.append("exclude: removes every cell of the suite; narrow its rules")
    raise_if(lines)
    return kept


def check_unique(cells: list[Cell], paths: dict[str, str]) -> None:
    """Two cells with one id are the same run: the axis values that tell them apart change nothing."""
    first: dict[str, Cell] = {}
    lines = []
    for cell in cells:
        other = first.setdefault(cell.id, cell)
        if other is not cell:
            differ = [paths[key] for key in paths if other.axes.get(key) != cell.axes.get(key)]
            lines.append(f"{', '.join(differ)}: the cells {other.axes} and {cell.axes} are the same run ({cell.id}); "
                         "drop the value that changes nothing")
    raise_if(lines)
