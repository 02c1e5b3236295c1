"""``ssl-bench run``: put a suite's cells into its study and start workers (local, Slurm, or printed).

Order of work: the suite is validated and expanded before anything is written; then the MLflow
experiment and the suite's parent run are created (once, before any worker, so store migrations never race),
the study records the suite and its tracking target, and each cell not yet complete becomes a WAITING trial.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import optuna
import torch
from rich.console import Console
from rich.live import Live

from bench.core.states import PENDING, CellStatus
from bench.config.run import resolve_run_config
from bench.suite.infra import Launcher
from bench.suite.suite import Cell, Suite
from bench.errors import ConfigError
from bench.orchestrate.queue import (
    ACTIVE,
    AXES_ATTR,
    CELL_ATTR,
    CONFIG_ATTR,
    TRACKING_ATTR,
    CellState,
    cell_states,
    create_study,
    default_storage_url,
    enqueue_cells,
    open_storage,
    suite_storage,
)
from bench.orchestrate.search import search_exhausted
from bench.orchestrate.view import states_table
from bench.tracking.mlflow_runs import SuiteTracker, tracking_uri

REFRESH_S = 1.0


@dataclass
class Prepared:
    """A suite ready for workers: where its queue lives and what was added to it."""

    storage_url: str
    study: optuna.Study
    added: list[Cell]


def storage_url(suite: Suite, override: str | None) -> str:
    """``--storage``, else the suite's ``storage.url``, else the SQLite file under ``results/``."""
    return override or suite.storage.url or default_storage_url()


def prepare(suite: Suite, cells: list[Cell], url: str, *, retry_failed: bool = False, sets: Sequence[str] = ()) -> Prepared:
    """Create the tracking parent run and the study, record this variant of the suite (its ``--set`` overrides
    ``sets``) on both, and enqueue the cells that still need work."""
    uri = tracking_uri(suite.tracking.mlflow_uri)
    experiment = suite.tracking.experiment or suite.name
    now = datetime.now(timezone.utc)
    tracker = SuiteTracker(uri, experiment)
    parent = tracker.parent_run(suite.name, suite.to_yaml())
    tracker.record_run(parent, suite.to_yaml(), sets, now)
    tracking = {"uri": uri, "experiment": experiment, "parent_run_id": parent}
    study = create_study(suite, suite_storage(suite, url), tracking, sets, now)
    added = [] if suite.search else enqueue_cells(study, cells, retry_failed=retry_failed)
    return Prepared(url, study, added)


def worker_command(url: str, study: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "worker", "--storage", url, "--study", study]


def print_launch(prepared: Prepared, console: Console) -> None:
    """The ``print`` launcher: the command any cluster (Kubernetes, plain ssh) runs on each worker."""
    command = shlex.join(["ssl-bench", "worker", "--storage", prepared.storage_url, "--study", prepared.study.study_name])
    console.print(f"{len(prepared.added)} cells queued in study '{prepared.study.study_name}'. Start workers with:")
    print(command)


def local_workers(requested: int | None, gpus_per_cell: int = 1) -> tuple[int, list[str | None]]:
    """How many local workers and the CUDA devices each gets (``gpus_per_cell`` visible GPUs each, else CPU processes)."""
    gpus = torch.cuda.device_count()
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        groups = [",".join(ids[i : i + gpus_per_cell]) for i in range(0, len(ids) - gpus_per_cell + 1, gpus_per_cell)]
        if not groups:
            raise ConfigError(f"launcher.gpus_per_cell={gpus_per_cell} but only {len(ids)} GPU(s) are visible; lower gpus_per_cell")
        n = min(requested or len(groups), len(groups))
        return n, groups[:n]
    n = requested or 1
    return n, [None] * n


def launch_local(prepared: Prepared, suite: Suite, cells: list[Cell], workers: int | None, console: Console,
                 logs: Path) -> None:
    """Start the local workers, show the live view of the cells until every worker has exited."""
    exhausted = suite.search is None or search_exhausted(prepared.study, suite.search)
    if exhausted and not prepared.study.get_trials(deepcopy=False, states=ACTIVE):
        console.print(f"suite {suite.name}: no cell is waiting or running; nothing to do")
        return
    n, devices = local_workers(workers, suite.launcher.gpus_per_cell)
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = []
    for i, device in enumerate(devices):
        env = dict(os.environ)
        if device is None:
            env.setdefault("OMP_NUM_THREADS", str(threads))
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            env["CUDA_VISIBLE_DEVICES"] = device
        log = open(logs / f"worker-{i}.log", "a")
        procs.append((subprocess.Popen(worker_command(prepared.storage_url, prepared.study.study_name), env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    where = ", ".join(f"GPU {d}" for d in devices if d is not None) or f"CPU, {threads} threads each"
    console.print(f"{len(prepared.added)} cells queued; {n} local workers ({where}); logs in {logs}")
    title = f"suite {suite.name}"
    with Live(console=console, refresh_per_second=2, transient=not console.is_terminal) as live:
        while any(p.poll() is None for p, _ in procs):
            live.update(states_table(current_states(prepared.study, cells, suite), title))
            time.sleep(REFRESH_S)
    for _, log in procs:
        log.close()


def current_states(study: optuna.Study, cells: list[Cell], suite: Suite) -> list[CellState]:
    """Cell states; a search suite's cells are its trials."""
    return cell_states(study, cells if not suite.search else search_cells(study))


def search_cells(study: optuna.Study) -> list[Cell]:
    """The cells a search has sampled so far (each trial's latest attempt).

    A worker writes a sampled trial's attributes one at a time (cell, config, then axes), so a trial is a
    cell here once its axes, the last of them, are written."""
    seen: dict[str, Cell] = {}
    for t in study.get_trials(deepcopy=False):
        if AXES_ATTR in t.user_attrs:
            seen[t.user_attrs[CELL_ATTR]] = Cell(t.user_attrs[CELL_ATTR], resolve_run_config(t.user_attrs[CONFIG_ATTR]),
                                                 t.user_attrs[AXES_ATTR])
    return list(seen.values())


def load_study(suite: Suite, url: str) -> optuna.Study | None:
    """The suite's study, or None when the suite was never run against this storage."""
    storage = open_storage(url)
    if suite.name not in optuna.study.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=suite.name, storage=storage)


def run_suite(suite: Suite, cells: list[Cell], url: str, *, launcher: Launcher, workers: int | None, console: Console,
              retry_failed: bool = False, sets: Sequence[str] = ()) -> list[CellState] | None:
    """Queue the suite (made with the ``--set`` overrides ``sets``) and start its workers with ``launcher``; for
    ``local``, wait and return the final cell states."""
    prepared = prepare(suite, cells, url, retry_failed=retry_failed, sets=sets)
    return LAUNCH[launcher](prepared, suite, cells, workers, console)


def _launch_print(prepared: Prepared, suite: Suite, cells: list[Cell], workers: int | None, console: Console) -> None:
    print_launch(prepared, console)


def _launch_slurm(prepared: Prepared, suite: Suite, cells: list[Cell], workers: int | None, console: Console) -> None:
    from bench.orchestrate.slurm import launch_slurm

    jobs = launch_slurm(prepared.storage_url, suite.name, suite.launcher.slurm, workers or suite.launcher.workers or 1)
    console.print(f"{len(prepared.added)} cells queued; submitted Slurm jobs {', '.join(j.job_id for j in jobs)}; "
                  f"follow them with `ssl-bench status`")


def _launch_local(prepared: Prepared, suite: Suite, cells: list[Cell], workers: int | None, console: Console) -> list[CellState]:
    launch_local(prepared, suite, cells, workers or suite.launcher.workers, console, Path("results/logs") / suite.name)
    states = current_states(prepared.study, cells, suite)
    if all(s.state not in PENDING for s in states):
        attrs = prepared.study.user_attrs[TRACKING_ATTR]
        failed = any(s.state == CellStatus.FAILED for s in states)
        SuiteTracker(attrs["uri"], attrs["experiment"]).finish_parent(attrs["parent_run_id"], CellStatus.FAILED if failed else CellStatus.COMPLETE)
    return states


#: the one place a launcher is started: ``launcher.name`` -> (prepared queue, suite, cells, workers, console) -> the final
#: cell states when it waits for its workers (local), else None
LAUNCH: dict[Launcher, Callable[[Prepared, Suite, list[Cell], int | None, Console], list[CellState] | None]] = {
    Launcher.LOCAL: _launch_local, Launcher.SLURM: _launch_slurm, Launcher.PRINT: _launch_print}
