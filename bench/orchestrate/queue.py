"""The suite's Optuna study is its work queue: one enqueued (WAITING) trial per cell.

A trial carries its cell in user attributes (``cell_id``, the resolved ``config``, the suite ``axes``), so a
worker needs nothing but the storage URL and the study name. Workers claim a WAITING trial atomically
(Optuna's own WAITING -> RUNNING transition, serialised by a file lock on SQLite, which has no row locks),
send heartbeats while they run it, and a trial whose heartbeat stops (a dead worker) is failed by the next
claim and re-enqueued by Optuna's ``RetryHeartbeatStaleTrialCallback`` with the same attributes, so the cell resumes
from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from bench.core.files import file_lock
from bench.core.states import CellStatus, FailureKind
from bench.suite.as_run import RECORD_PREFIX, RunHistory, SuiteRun, by_first_run, next_record, suite_key
from bench.config.search import DEFAULT_SEARCH_METRIC, metric_split
from bench.suite.suite import Cell, Suite
from bench.stores import sqlite_file

optuna.logging.set_verbosity(optuna.logging.WARNING)
# heartbeats and stale-trial retries are marked experimental in Optuna; they are what this queue is built on
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

#: study user attributes (OBJECTIVE_ATTR also on each pre-training trial: ``{"metric": "val.knn20.top1", "split": "val"}``)
SUITE_ATTR = "ssl_bench.suite"
TRACKING_ATTR = "ssl_bench.tracking"
OBJECTIVE_ATTR = "objective"
#: trial user attributes
CELL_ATTR, CONFIG_ATTR, AXES_ATTR = "cell_id", "config", "axes"
RUN_ATTR, REASON_ATTR, EPOCH_ATTR, METRICS_ATTR = "mlflow_run_id", "fail_reason", "epoch", "metrics"
KIND_ATTR = "fail_kind"  #: a FailureKind value, beside the reason's text
DEPENDS_ATTR = "depends_on"  #: a detection cell: the pre-training cell it starts from

ACTIVE = (TrialState.WAITING, TrialState.RUNNING)
#: how ``status`` names each trial state
STATE_NAMES = {TrialState.WAITING: CellStatus.WAITING, TrialState.RUNNING: CellStatus.RUNNING,
               TrialState.COMPLETE: CellStatus.COMPLETE, TrialState.FAIL: CellStatus.FAILED, TrialState.PRUNED: CellStatus.PRUNED}


@dataclass(frozen=True)
class Failure:
    """A failed cell's kind and what to know about it; its text (``fail_reason``) is ``"<kind>: <detail>"``."""

    kind: FailureKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"

    def record(self) -> dict[str, str]:
        """The trial user attributes of this failure."""
        return {REASON_ATTR: str(self), KIND_ATTR: self.kind.value}


def default_storage_url(results: Path = Path("results")) -> str:
    """The embedded default: an SQLite file under ``results/`` (RDB storage, so heartbeats work)."""
    results.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(results / 'optuna.db').resolve()}"


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 retries: int = 0) -> RDBStorage:
    """An RDB storage with heartbeats and the retry-on-stale callback (``retries`` re-enqueues per cell)."""
    url = with_installed_driver(url)
    engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=retries) if heartbeat_interval else None)


def with_installed_driver(url: str) -> str:
    """A bare ``postgresql://`` URL with the psycopg2 driver when psycopg 3 (SQLAlchemy 2.1's default) is missing."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def suite_storage(suite: Suite, url: str) -> RDBStorage:
    cfg = suite.storage
    return open_storage(url, heartbeat_interval=cfg.heartbeat_interval, grace_period=cfg.grace_period, retries=cfg.retries)


@contextlib.contextmanager
def queue_lock(url: str) -> Iterator[None]:
    """Serialise claims on an SQLite file (PostgreSQL locks the trial row itself)."""
    store = sqlite_file(url)
    if store is None:
        yield
        return
    with file_lock(store.with_name(store.name + ".lock")):
        yield


def create_study(suite: Suite, storage: RDBStorage, tracking: dict[str, str], sets: Sequence[str],
                 now: datetime) -> optuna.Study:
    """Create (or load) the suite's study, record the suite and its tracking target on it, and record this variant
    of the suite (queued at ``now`` with ``sets``) among the suite's runs (``study_history``)."""
    direction = suite.search.direction if suite.search else "maximize"
    study = optuna.create_study(study_name=suite.name, storage=storage, direction=direction, load_if_exists=True)
    text = suite.to_yaml()
    study.set_user_attr(SUITE_ATTR, text)
    study.set_user_attr(TRACKING_ATTR, tracking)
    attr = RECORD_PREFIX + suite_key(text)  # the record and the suite's YAML (``suite``)
    previous = study.user_attrs.get(attr)
    record = next_record(None if previous is None else _suite_run(previous), text, sets, now)
    study.set_user_attr(attr, {**record.model_dump(mode="json"), "suite": text})
    study.set_user_attr(OBJECTIVE_ATTR, objective_record(suite.search.metric if suite.search else DEFAULT_SEARCH_METRIC))
    return study


def objective_record(metric: str) -> dict[str, str]:
    """What the study's objective reads: the metric and its split (``val`` for ``val.*``, the only kind allowed)."""
    return {"metric": metric, "split": metric_split(metric)}


def study_history(study: optuna.Study | None, where: str) -> RunHistory:
    """The variants of the suite recorded on its study (none for a study that ``run`` never made, or None)."""
    attrs = study.user_attrs if study is not None else {}
    found = {key.removeprefix(RECORD_PREFIX): value for key, value in attrs.items() if key.startswith(RECORD_PREFIX)}
    return RunHistory(by_first_run([_suite_run(value) for value in found.values()]), f"the Optuna storage {where}",
                      lambda run: found[run.key]["suite"])


def _suite_run(attr: dict[str, Any]) -> SuiteRun:
    return SuiteRun.model_validate({k: v for k, v in attr.items() if k != "suite"})


def enqueue_cells(study: optuna.Study, cells: list[Cell], *, retry_failed: bool = False) -> list[Cell]:
    """Add a WAITING trial for each cell not already complete, waiting, running, pruned (or failed, unless asked)."""
    settled = (TrialState.COMPLETE, TrialState.PRUNED, *ACTIVE) + (() if retry_failed else (TrialState.FAIL,))
    known = {t.user_attrs.get(CELL_ATTR) for t in study.get_trials(deepcopy=False, states=settled)}
    added = []
    for cell in cells:
        if cell.id in known:
            continue
        attrs = {CELL_ATTR: cell.id, CONFIG_ATTR: cell.config.model_dump(mode="json"), AXES_ATTR: cell.axes}
        if cell.depends_on is not None:
            attrs[DEPENDS_ATTR] = cell.depends_on
        study.add_trial(optuna.create_trial(state=TrialState.WAITING, user_attrs=attrs))
        added.append(cell)
    return added


#: failures that are worth another try (the others would fail the same way again)
RETRIED = frozenset({FailureKind.PREEMPTED, FailureKind.EXCEPTION})


def fail_stale(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose worker stopped sending heartbeats (the callback re-enqueues them)."""
    optuna.storages.fail_stale_trials(study)


def claim_waiting(study: optuna.Study, storage: RDBStorage, retries: int = 0) -> FrozenTrial | None:
    """Atomically move one WAITING trial to RUNNING and return it (None when none is ready).

    A detection cell is ready once its source is complete; when its source failed or was pruned for good (not
    about to be re-enqueued by one of its ``retries``) it fails too, with that reason.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    waiting = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
    latest: dict[str, FrozenTrial] = {}
    if any(DEPENDS_ATTR in t.user_attrs for t in waiting):  # only then the other trials matter
        latest = {t.user_attrs.get(CELL_ATTR): t for t in storage.get_all_trials(study_id, deepcopy=False)}
    if storage.get_heartbeat_stale_trial_callback() is None:
        retries = 0
    for trial in waiting:
        source = latest.get(trial.user_attrs.get(DEPENDS_ATTR))
        if DEPENDS_ATTR in trial.user_attrs and (source is None or source.state != TrialState.COMPLETE):
            if source is not None and source.state in (TrialState.FAIL, TrialState.PRUNED) and not _will_retry(source, retries):
                _fail_dependent(storage, trial, source)
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return storage.get_trial(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _will_retry(trial: FrozenTrial, retries: int) -> bool:
    """Whether a finished trial is re-enqueued: a retried reason (or a dead worker's, none) and retries left.

    Between a retried failure and its new WAITING trial the failed trial is the cell's latest; its dependents wait.
    """
    attrs = trial.user_attrs
    retried = trial.state == TrialState.FAIL and (REASON_ATTR not in attrs or attrs.get(KIND_ATTR) in RETRIED)
    return retried and len(RetryHeartbeatStaleTrialCallback.retry_history(trial)) < retries


def _fail_dependent(storage: RDBStorage, trial: FrozenTrial, source: FrozenTrial) -> None:
    try:
        if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
            failure = Failure(FailureKind.SOURCE, f"{source.user_attrs[CELL_ATTR]} {STATE_NAMES[source.state]}; nothing to transfer")
            for key, value in failure.record().items():
                storage.set_trial_user_attr(trial._trial_id, key, value)
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return


class Heartbeat:
    """Record the trial's heartbeat now and every interval until the block ends."""

    def __init__(self, storage: RDBStorage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while not self._stop.wait(interval):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> Heartbeat:
        if self.storage.get_heartbeat_interval():
            self.storage.record_heartbeat(self.trial_id)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass(frozen=True)
class CellState:
    """What ``ssl-bench status`` shows for one cell: its latest trial."""

    cell_id: str
    axes: dict[str, Any]
    state: CellStatus
    trial: int | None
    run_id: str | None
    reason: str | None
    epoch: int | None
    metrics: dict[str, float]


def cell_states(study: optuna.Study | None, cells: list[Cell]) -> list[CellState]:
    """The state of every cell of the suite from its latest trial ("not queued" when none exists)."""
    latest: dict[str, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False) if study is not None else []:
        cid = t.user_attrs.get(CELL_ATTR)
        if cid is not None:
            latest[cid] = t
    out = []
    for cell in cells:
        t = latest.get(cell.id)
        if t is None:
            out.append(CellState(cell.id, cell.axes, CellStatus.NOT_QUEUED, None, None, None, None, {}))
            continue
        state = CellStatus.RETRYING if t.state == TrialState.WAITING and "failed_trial" in t.system_attrs else STATE_NAMES[t.state]
        out.append(CellState(cell.id, cell.axes, state, t.number, t.user_attrs.get(RUN_ATTR),
                             t.user_attrs.get(REASON_ATTR) if t.state == TrialState.FAIL else None,
                             t.user_attrs.get(EPOCH_ATTR), t.user_attrs.get(METRICS_ATTR, {})))
    return out
