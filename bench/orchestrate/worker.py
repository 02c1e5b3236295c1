"""``ssl-bench worker``: take the next waiting cell of a suite's study, run it, report it; repeat.

A worker needs only the storage URL and the study name: the suite, its tracking target and every cell's
resolved config live in the study. Each cell trains in ``<runs_dir>/<cell id>/`` under a file lock, so a
retried cell resumes from its own checkpoint and a cell shared by two suites is trained once (the second
worker finds its ``metrics.json`` and reports it). Failures are recorded with their reason (diverged, out of
memory, missing data, config, preempted, exception); only preemptions and unexpected exceptions are retried,
since a diverged or misconfigured cell would fail the same way again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pydantic
import torch
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from bench.config.run import RunConfig, config_id, resolve_run_config
from bench.suite.suite import Suite, expand_suite, search_config, suite_from_yaml
from bench.errors import DataError, Diverged, UserError
from bench.orchestrate.queue import (
    AXES_ATTR,
    CELL_ATTR,
    CONFIG_ATTR,
    DEPENDS_ATTR,
    EPOCH_ATTR,
    METRICS_ATTR,
    OBJECTIVE_ATTR,
    RETRIED,
    RUN_ATTR,
    STATE_NAMES,
    SUITE_ATTR,
    TRACKING_ATTR,
    Failure,
    Heartbeat,
    claim_waiting,
    fail_stale,
    objective_record,
    open_storage,
    queue_lock,
    suite_storage,
)
from bench.orchestrate.preflight import suite_checks
from bench.orchestrate.search import (
    build_pruner,
    build_sampler,
    objective_metric,
    objective_value,
    report_epoch,
    search_exhausted,
    suggest,
)
from bench.runner import METRICS, run
from bench.tracking.mlflow_runs import SuiteTracker
from bench.transfer.stage import ARTIFACT as STAGE_REPORT
from bench.transfer.stage import StageReport, run_stage
from bench.train.distributed import rank_zero_of
from bench.core.device import pick_device
from bench.core.files import file_lock
from bench.core.signals import Preempted
from bench.core.states import CellStatus, FailureKind
from bench.train.engine import MODEL, train
from bench.train.records import EpochRecord, RunReport

POLL_S = 2.0


@dataclass
class WorkerSummary:
    """What one worker did: cell ids per outcome."""

    complete: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    state: TrialState
    metrics: dict[str, float] = field(default_factory=dict)
    failure: Failure | None = None
    report: RunReport | StageReport | None = None  #: a pre-training cell's report; a detection cell's report.json

    @property
    def reason(self) -> str | None:
        """The failure's text, as the trial, MLflow and the status show it."""
        return None if self.failure is None else str(self.failure)


class Context:
    """Everything a worker reads once from the study: suite, storage with heartbeats, tracker."""

    def __init__(self, storage_url: str, study_name: str, mlflow_uri: str | None = None):
        plain = open_storage(storage_url)
        attrs = optuna.load_study(study_name=study_name, storage=plain).user_attrs
        if SUITE_ATTR not in attrs:
            raise UserError(f"study '{study_name}' in {storage_url} was not created by ssl-bench run; run the suite first")
        self.url = storage_url
        # the data files may be missing on this machine: refused before any cell is claimed or anything is written
        self.suite: Suite = suite_from_yaml(attrs[SUITE_ATTR], source=f"the suite of study '{study_name}'", checks=suite_checks())
        self.storage = suite_storage(self.suite, storage_url)
        search = self.suite.search
        self.study = optuna.load_study(study_name=study_name, storage=self.storage,
                                       sampler=build_sampler(search) if search else None,
                                       pruner=build_pruner(search) if search else optuna.pruners.NopPruner())
        tracking = attrs[TRACKING_ATTR]
        self.tracker = SuiteTracker(mlflow_uri or tracking["uri"], tracking["experiment"])
        self.parent_run = tracking["parent_run_id"]
        self.runs_dir = Path(self.suite.storage.runs_dir)
        self.base = expand_suite(self.suite)[0].config if search else None


def work(storage_url: str, study_name: str, *, console: Console | None = None, max_cells: int | None = None,
         mlflow_uri: str | None = None) -> WorkerSummary:
    """Run cells until none is waiting and none is still running elsewhere (or ``max_cells`` ran).

    ``mlflow_uri`` replaces the tracking URI that ``run`` recorded, for a machine that reaches the same
    MLflow server at another address."""
    console = console or Console(stderr=True)
    ctx = Context(storage_url, study_name, mlflow_uri)
    summary = WorkerSummary()
    name = f"{socket.gethostname()}:{os.getpid()}"
    while max_cells is None or len(summary.complete) + len(summary.failed) + len(summary.pruned) < max_cells:
        trial = _next_trial(ctx)
        if trial is None:
            if not ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
                break
            time.sleep(POLL_S)  # cells still running elsewhere may die and come back to the queue
            continue
        started = time.perf_counter()
        console.print(f"{time.strftime('%H:%M:%S')} {name}: trial {trial.number} started", markup=False, highlight=False)
        cell, outcome = run_trial(ctx, trial)
        bucket = {TrialState.COMPLETE: summary.complete, TrialState.PRUNED: summary.pruned}.get(outcome.state, summary.failed)
        bucket.append(cell)
        console.print(f"{time.strftime('%H:%M:%S')} {name}: trial {trial.number} (cell {cell}) {STATE_NAMES[outcome.state]} "
                      f"after {time.perf_counter() - started:.1f} s" + (f": {outcome.reason}" if outcome.reason else ""),
                      markup=False, highlight=False)
        if outcome.failure is not None and outcome.failure.kind == FailureKind.PREEMPTED:
            break
    return summary


def _next_trial(ctx: Context) -> FrozenTrial | None:
    """A waiting cell (a retry first), or for a search a newly sampled trial while the budget lasts."""
    with queue_lock(ctx.url):
        fail_stale(ctx.study)
        trial = claim_waiting(ctx.study, ctx.storage, ctx.suite.storage.retries)
        if trial is None and ctx.suite.search and not search_exhausted(ctx.study, ctx.suite.search):
            asked = ctx.study.ask()
            trial = ctx.storage.get_trial(asked._trial_id)
    return trial


def run_trial(ctx: Context, trial: FrozenTrial) -> tuple[str, Outcome]:
    """Run one claimed trial with heartbeats and report it to Optuna and MLflow; returns its cell id and outcome."""
    live = optuna.trial.Trial(ctx.study, trial._trial_id)
    with Heartbeat(ctx.storage, trial._trial_id):
        handler = _run_detection if DEPENDS_ATTR in trial.user_attrs else _run_pretraining
        cell_id, outcome = handler(ctx, live, trial)
        for key, value in (outcome.failure.record() if outcome.failure else {}).items():
            live.set_user_attr(key, value)
        if outcome.metrics:
            live.set_user_attr(METRICS_ATTR, outcome.metrics)
    if outcome.state == TrialState.COMPLETE:
        ctx.study.tell(live, objective_value(outcome.metrics, ctx.suite.search))
    else:
        ctx.study.tell(live, state=outcome.state)
        if outcome.failure is not None and outcome.failure.kind in RETRIED:
            callback = ctx.storage.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(ctx.study, ctx.storage.get_trial(trial._trial_id))
    return cell_id, outcome


def _run_pretraining(ctx: Context, live: optuna.Trial, trial: FrozenTrial) -> tuple[str, Outcome]:
    """A pre-training cell (or a search trial, sampled here): train, evaluate, track in its own MLflow run."""
    if ctx.suite.search and CONFIG_ATTR not in trial.user_attrs:
        params = suggest(live, ctx.suite.search)
        config = search_config(ctx.base, params)
        for key, value in ((CELL_ATTR, config_id(config)), (CONFIG_ATTR, config.model_dump(mode="json")), (AXES_ATTR, params)):
            live.set_user_attr(key, value)
    else:
        config = resolve_run_config(trial.user_attrs[CONFIG_ATTR])
    attrs = ctx.storage.get_trial(trial._trial_id).user_attrs
    cell_id = attrs[CELL_ATTR]
    run_id = ctx.tracker.start_cell(ctx.parent_run, cell_id, config, suite=ctx.suite.name, axes=attrs[AXES_ATTR],
                                    trial={"study": ctx.study.study_name, "number": trial.number, "id": trial._trial_id},
                                    run_id=attrs.get(RUN_ATTR), objective=objective_metric(ctx.suite.search))
    live.set_user_attr(RUN_ATTR, run_id)
    live.set_user_attr(OBJECTIVE_ATTR, objective_record(objective_metric(ctx.suite.search)))
    pruning = ctx.suite.search is not None and ctx.suite.search.pruner != "none"
    run_dir = ctx.runs_dir / cell_id

    def on_epoch(record: EpochRecord) -> None:
        ctx.tracker.log_epoch(run_id, record)
        live.set_user_attr(EPOCH_ATTR, record.epoch)
        if pruning:
            report_epoch(live, record, ctx.suite.search)

    def work() -> tuple[dict[str, float], RunReport]:
        report = finished_report(run_dir, config) or run_cell(config, run_dir, on_epoch, ctx.suite.launcher.gpus_per_cell)
        return report.metrics, report

    outcome = _guarded(work, run_dir, config)
    status = STATE_NAMES.get(outcome.state, CellStatus.FAILED)
    ctx.tracker.log_provenance(run_id, run_dir)
    ctx.tracker.finish_cell(run_id, status=status, metrics=outcome.metrics, report=outcome.report, reason=outcome.reason)
    return cell_id, outcome


def run_cell(config: RunConfig, run_dir: Path, on_epoch: Callable[[EpochRecord], None], gpus: int) -> RunReport:
    """Train and evaluate a cell; with ``gpus`` > 1 this process is rank 0 of that many training processes (none for a
    cell that trains for 0 epochs: a baseline)."""
    group = contextlib.nullcontext()
    if gpus > 1 and config.epochs:
        group = rank_zero_of(gpus, pick_device(config.train.device).type, functools.partial(train, config, run_dir))
    with group:
        return run(config, run_dir, console=Console(quiet=True), on_epoch=on_epoch)


def _run_detection(ctx: Context, live: optuna.Trial, trial: FrozenTrial) -> tuple[str, Outcome]:
    """A detection cell: fine-tune from its complete source; the metrics join the source's MLflow run."""
    cell_id, source = trial.user_attrs[CELL_ATTR], trial.user_attrs[DEPENDS_ATTR]
    config = resolve_run_config(trial.user_attrs[CONFIG_ATTR])
    done = [t for t in ctx.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get(CELL_ATTR) == source]
    run_id = done[-1].user_attrs[RUN_ATTR]
    live.set_user_attr(RUN_ATTR, run_id)
    run_dir = ctx.runs_dir / cell_id

    def work() -> tuple[dict[str, float], StageReport]:
        report = run_stage(ctx.suite.evaluations.detection, ctx.runs_dir / source / MODEL, run_dir, config.train.cache_dir)
        return report.metrics, report

    outcome = _guarded(work, run_dir, config)
    if outcome.state == TrialState.COMPLETE:
        ctx.tracker.finish_cell(run_id, status=CellStatus.COMPLETE, metrics=outcome.metrics, report=outcome.report, artifact=STAGE_REPORT)
    return cell_id, outcome


def _guarded(work: Callable[[], tuple[dict[str, float], RunReport | dict]], run_dir: Path, config: RunConfig) -> Outcome:
    """Run ``work`` under the cell's lock, mapping every failure to a reason the status and MLflow show."""
    try:
        with cell_lock(run_dir):
            metrics, report = work()
    except optuna.TrialPruned:
        return Outcome(TrialState.PRUNED)
    except Diverged as err:
        return _failed(FailureKind.DIVERGED, f"{err} ({err.fix})")
    except torch.OutOfMemoryError:
        return _failed(FailureKind.OUT_OF_MEMORY, f"batch_size={config.batch_size} (lower batch_size)")
    except DataError as err:
        return _failed(FailureKind.MISSING_DATA, str(err))
    except UserError as err:
        return _failed(FailureKind.CONFIG, str(err))
    except Preempted as err:
        return _failed(FailureKind.PREEMPTED, str(err))
    except Exception as err:  # noqa: BLE001 - any other failure is recorded on the cell, the worker goes on
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        return _failed(FailureKind.EXCEPTION, f"{type(err).__name__}: {err} (traceback in {run_dir / 'error.txt'})")
    return Outcome(TrialState.COMPLETE, metrics=metrics, report=report)


def _failed(kind: FailureKind, detail: str) -> Outcome:
    return Outcome(TrialState.FAIL, failure=Failure(kind, detail))


@contextlib.contextmanager
def cell_lock(run_dir: Path) -> Iterator[None]:
    """One process at a time trains a cell directory (two suites may hold the same cell)."""
    with file_lock(run_dir / ".lock"):
        yield


def finished_report(run_dir: Path, config: RunConfig) -> RunReport | None:
    """The cell's complete report when an earlier run (of any suite) already finished it. A report that is no
    ``RunReport`` (one of an older version) is not: the cell resumes from its last checkpoint and is evaluated again."""
    path = run_dir / METRICS
    if not path.exists():
        return None
    try:
        report = RunReport.model_validate_json(path.read_text())
    except pydantic.ValidationError:
        return None
    return report if report.status == CellStatus.COMPLETE and report.config_id == config_id(config) else None
