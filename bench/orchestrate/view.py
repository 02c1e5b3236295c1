"""Rich tables of a suite's cells: the ``validate`` preview, the ``status`` report and the live view of ``run``."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rich.table import Table

from bench.core.states import CellStatus
from bench.suite.suite import Cell
from bench.methods.baselines import Baseline
from bench.orchestrate.queue import CellState

STYLE = {CellStatus.COMPLETE: "green", CellStatus.FAILED: "red", CellStatus.RUNNING: "yellow", CellStatus.PRUNED: "magenta",
         CellStatus.RETRYING: "yellow"}
SHOWN_METRICS = ("knn20.top1", "logreg.top1", "linear.top1")


def _fmt(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _method(value: Any) -> str:
    """A method as its row names it: ``simclr``, or a baseline's label (``random init``)."""
    return Baseline(value).label if value in set(Baseline) else _fmt(value)


def _split(axes: dict[str, Any]) -> tuple[dict[str, str], str]:
    """Shared axes (method, dataset, seed, ...) as columns; a method's own ablations folded into one text."""
    method = axes.get("method")
    shared, own = {}, []
    for key, value in axes.items():
        owner, _, rest = key.partition(".")
        if method is not None and owner == method and rest:
            own.append(f"{rest}={_fmt(value)}")
        else:
            shared[key] = _method(value) if key == "method" else _fmt(value)
    return shared, " ".join(own)


def _columns(all_axes: list[dict[str, Any]]) -> tuple[list[str], list[tuple[list[str], str]]]:
    rows = [_split(a) for a in all_axes]
    keys: list[str] = []
    for shared, _ in rows:
        keys.extend(k for k in shared if k not in keys)
    return keys, [([shared.get(k, "") for k in keys], own) for shared, own in rows]


def cells_table(cells: list[Cell], title: str) -> Table:
    """One row per cell: its id, the shared axis values and its method's ablation settings."""
    keys, rows = _columns([c.axes for c in cells])
    table = Table("cell", *keys, "ablation", title=title)
    for cell, (values, own) in zip(cells, rows):
        table.add_row(cell.id, *values, own)
    return table


def states_table(states: list[CellState], title: str) -> Table:
    """One row per cell: axes, state (with the epoch while running), key metrics, trial and MLflow run."""
    keys, rows = _columns([s.axes for s in states])
    table = Table("cell", *keys, "ablation", "state", *SHOWN_METRICS, "trial", "run", title=title)
    for s, (values, own) in zip(states, rows):
        state = s.state
        if s.state == "running" and s.epoch:
            state += f" (epoch {s.epoch})"
        table.add_row(s.cell_id, *values, own, f"[{STYLE.get(s.state, 'white')}]{state}[/]",
                      *(f"{s.metrics[m]:.4f}" if m in s.metrics else "" for m in SHOWN_METRICS),
                      "" if s.trial is None else str(s.trial), (s.run_id or "")[:8])
    counts = Counter(s.state for s in states)
    table.caption = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return table


def failure_lines(states: list[CellState]) -> list[str]:
    """One line per failed cell with its reason (too long for a table cell)."""
    return [f"cell {s.cell_id} failed: {s.reason}" for s in states if s.state == CellStatus.FAILED]
