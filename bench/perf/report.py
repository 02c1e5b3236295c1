"""Targets with pass/fail marks, the printed tables and the JSON file of a benchmark run."""

from __future__ import annotations

import re
import socket
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.table import Table

from bench import runner
from bench.perf.scenarios import SCENARIOS

NEEDS_CUDA = "unmeasured: needs CUDA"


class Target(BaseModel):
    """An acceptance bound on one figure of a scenario (or of the evaluation section when ``scenario`` is None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenario: str | None
    figure: str
    at_least: float | None = None
    at_most: float | None = None

    @property
    def label(self) -> str:
        bound = f">= {self.at_least:g}" if self.at_least is not None else f"<= {self.at_most:g}"
        return f"{self.scenario or 'evaluation (full sizes)'}: {self.figure} {bound}"

    def holds(self, value: float) -> bool:
        return (self.at_least is None or value >= self.at_least) and (self.at_most is None or value <= self.at_most)


def all_targets() -> list[Target]:
    """The scenarios' ratio targets, then the evaluation's (linear probe speed-up and accuracy gap, kNN time)."""
    targets = []
    for name, s in SCENARIOS.items():
        if s.min_vs_classic is not None:
            targets.append(Target(scenario=name, figure="ours_vs_classic", at_least=s.min_vs_classic))
        if s.min_vs_compute is not None:
            targets.append(Target(scenario=name, figure="ours_vs_compute_bound", at_least=s.min_vs_compute))
    return targets + [
        Target(scenario=None, figure="linear.speedup", at_least=20),
        Target(scenario=None, figure="linear.top1_gap", at_most=0.01),
        Target(scenario=None, figure="knn.seconds", at_most=1.0),
    ]


def check_targets(results: dict) -> list[dict]:
    """Each target with its measured value and ``pass``, ``fail`` or why it is unmeasured."""
    rows = []
    for target in all_targets():
        if target.scenario is None:
            figures = results.get("evaluation", {}) if results["evaluation_sizes"] == "full" else {}
        else:
            figures = results["scenarios"].get(target.scenario, {})
        value = figures.get(target.figure)
        if results["device_type"] != "cuda":
            status = NEEDS_CUDA
        elif value is None:
            status = "unmeasured: scenario not run" if target.scenario else "unmeasured: needs the full evaluation (no --quick, no --scenario)"
        else:
            status = "pass" if target.holds(value) else "fail"
        rows.append({"target": target.label, "value": value, "status": status})
    return rows


def note(results: dict) -> str:
    """One line: what ran where, and which GPU figures are unmeasured."""
    unmeasured = [row["target"] for row in results["targets"] if row["status"].startswith("unmeasured")]
    if results["device_type"] != "cuda":
        return (f"No CUDA device: CPU figures only ({results['threads']} torch thread(s), classic with {results['cpu_count']} "
                f"workers). Unmeasured (they need a GPU): every target ({'; '.join(unmeasured)}), peak GPU memory, --max-batch.")
    if unmeasured:
        return f"Measured on {results['device']}. Unmeasured targets: {'; '.join(unmeasured)}."
    return f"Measured on {results['device']}; every target measured."


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def print_report(results: dict, console: Console) -> None:
    """The scenario table, the evaluation figures, the targets and the note."""
    scenarios = Table("scenario", "ours img/s", "classic img/s", "compute-bound img/s", "ours/classic", "ours/compute",
                      "peak GiB", "max batch", title=f"training throughput on {results['device']}")
    for name, f in results["scenarios"].items():
        scenarios.add_row(name, *(_fmt(f.get(k)) for k in ("ours_images_per_s", "classic_images_per_s", "compute_bound_images_per_s",
                                                           "ours_vs_classic", "ours_vs_compute_bound", "peak_memory_gib", "max_batch")))
    console.print(scenarios)
    for section in ("evaluation", "mvmr", "folder"):
        if section in results:
            sized = f" ({results['evaluation_sizes']} sizes)" if section in ("evaluation", "folder") else ""
            table = Table("measure", "value", title=f"{section}{sized}")
            for key, value in results[section].items():
                table.add_row(key, _fmt(value))
            console.print(table)
    targets = Table("target", "value", "status", title="targets")
    for row in results["targets"]:
        mark = {"pass": "[green]✓ pass[/]", "fail": "[red]✗ fail[/]"}.get(row["status"], row["status"])
        targets.add_row(row["target"], _fmt(row["value"]), mark)
    console.print(targets)
    console.print(results["note"])


def write_json(results: dict, out_dir: Path) -> Path:
    """Write ``results`` to ``out_dir/<UTC timestamp>-<host>.json`` and return the path."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"
    path = out_dir / f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{host}.json"
    runner.write_json(results, path)
    return path

