"""Which variant of a suite a report shows: by default the suite as ``ssl-bench run`` last queued it.

``run`` records each variant of a suite name that it queues, a ``SuiteRun`` (the ``--set`` overrides, when it
first and last ran, and the hash of the resolved suite), with the Optuna study and with the MLflow parent run,
beside the resolved suite's YAML. ``status``, ``table``, ``compare`` and ``leaderboard`` read those records
(``RunHistory``) and ``shown_suite`` picks one: the variant run last, ``--as-run N`` (the N-th variant in the
order they first ran), or the suite file as it is now with ``--set ...`` / ``--as-file``. Running a variant again
updates its ``last`` time and keeps its number.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from bench.suite.suite import Suite, load_suite, suite_from_yaml
from bench.errors import ConfigError

#: the key under which a store holds one variant's record: ``<prefix><suite key>`` (a study user attribute, a
#: tag of the MLflow parent run)
RECORD_PREFIX = "ssl_bench.suite_run."


class SuiteRun(BaseModel):
    """One variant of a suite that ``run`` queued."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, description="hash of the resolved suite (``suite_key``)")
    sets: list[str] = Field(description="the --set overrides of the run, as typed")
    first: datetime = Field(description="when this variant was first queued (UTC)")
    last: datetime = Field(description="when it was last queued (UTC)")


@dataclass(frozen=True)
class RunHistory:
    """The recorded variants of one suite name in one store, in the order they first ran."""

    runs: list[SuiteRun]
    where: str  #: the store, as messages name it
    suite_text: Callable[[SuiteRun], str]  #: the resolved suite YAML of a recorded variant


@dataclass(frozen=True)
class Shown:
    """The suite a command shows and the line that says which variant it is."""

    suite: Suite
    line: str


def suite_key(suite_yaml: str) -> str:
    """A short hash of a resolved suite's content (``Suite.to_yaml``), independent of the order of its keys."""
    canonical = json.dumps(yaml.safe_load(suite_yaml), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def next_record(previous: SuiteRun | None, suite_yaml: str, sets: Sequence[str], now: datetime) -> SuiteRun:
    """The record of a variant queued at ``now``: a new one, or ``previous`` (same variant) with ``last`` moved."""
    if previous is not None:
        return previous.model_copy(update={"last": now})
    return SuiteRun(key=suite_key(suite_yaml), sets=list(sets), first=now, last=now)


def by_first_run(runs: Sequence[SuiteRun]) -> list[SuiteRun]:
    return sorted(runs, key=lambda run: run.first)


def shown_suite(path: Path, sets: Sequence[str], *, as_run: int | None, as_file: bool,
                history: Callable[[Suite], RunHistory]) -> Shown:
    """The suite to show: the variant of ``path``'s suite run last, the ``as_run``-th, or (``sets`` or
    ``as_file``) the file with ``sets`` applied; ``history`` reads the records of a suite's name and stores."""
    if as_run is not None and (sets or as_file):
        raise ConfigError("--as-run picks a recorded run, --set and --as-file the suite file as it is now: give one of them")
    if sets or as_file:
        suite = load_suite(path, sets)
        found = history(suite)
        key = suite_key(suite.to_yaml())
        number = next((i for i, run in enumerate(found.runs, 1) if run.key == key), None)
        with_sets = f" with --set {' '.join(sets)}" if sets else ""
        ran = (f"run {number} of {len(found.runs)}, last on {_when(found.runs[number - 1])}" if number else
               f"never run as such; {_count(found.runs)} recorded in {found.where}")
        return Shown(suite, f"showing the suite file {path}{with_sets} ({ran})")
    base = load_suite(path)
    found = history(base)
    if not found.runs:
        if as_run is not None:
            raise ConfigError(f"--as-run {as_run}: no run of suite {base.name} is recorded in {found.where}; "
                              f"run it first (ssl-bench run {path}) or leave --as-run out")
        return Shown(base, f"showing the suite file {path}: no run of it is recorded in {found.where}")
    if as_run is not None and not 1 <= as_run <= len(found.runs):
        raise ConfigError(f"--as-run {as_run}: suite {base.name} has {_count(found.runs)} in {found.where}; "
                          f"give a number from 1 to {len(found.runs)}")
    chosen = found.runs[as_run - 1] if as_run else max(found.runs, key=lambda run: run.last)
    number = found.runs.index(chosen) + 1
    suite = suite_from_yaml(found.suite_text(chosen), source=f"{path} as run {number}")
    with_sets = f" with --set {' '.join(chosen.sets)}" if chosen.sets else " without --set"
    others = [str(i) for i in range(1, len(found.runs) + 1) if i != number]
    hints = [f"--as-run {' or '.join(others) if len(others) < 3 else f'1..{len(found.runs)}'} for the "
             f"other{'s' * (len(others) > 1)}"] if others else []
    if suite_key(base.to_yaml()) != chosen.key:
        hints.append("--as-file for the suite file as it is now")
    return Shown(suite, f"showing the suite as run on {_when(chosen)}{with_sets} (run {number} of {len(found.runs)})"
                 + (f"; {', '.join(hints)}" if hints else ""))


def _when(run: SuiteRun) -> str:
    return run.last.strftime("%Y-%m-%d %H:%M UTC")


def _count(runs: Sequence[SuiteRun]) -> str:
    return f"{len(runs)} run{'s' * (len(runs) != 1)}"
