"""MLflow runs of a suite: one parent run per suite, one child run per cell, via an explicit ``MlflowClient``.

Nothing here touches MLflow's global "active run", so several cells may log from one process.

Names written to MLflow:

- tags: ``ssl_bench.role`` (``parent`` | ``cell`` | ``transfer``, a run of ``ssl-bench transfer``), ``ssl_bench.suite``, ``ssl_bench.status``
  (``running`` | ``complete`` | ``failed`` | ``pruned``), ``ssl_bench.fail_reason``; on cells also
  ``ssl_bench.cell_id``, ``ssl_bench.method``, ``ssl_bench.dataset``, ``ssl_bench.seed``, ``ssl_bench.host``,
  ``ssl_bench.device``, ``mlflow.source.git.commit``, ``mlflow.parentRunId`` and ``optuna.study``,
  ``optuna.trial_number``, ``optuna.trial_id``, ``ssl_bench.objective`` (the metric the study's objective reads,
  ``val.knn20.top1``) and ``ssl_bench.objective_split`` (``val``).
- params (cells, on creation only): the resolved config flattened to dotted keys (``optimizer.lr``) and the
  suite's axes as ``axis.<name>``; strings as they are, every other value as JSON (``0.3``, ``true``,
  ``null``, ``[20, 200]``).
- per-epoch metrics, ``step = epoch``: the online kNN monitor as ``val/knn20.top1`` (validation split) and its
  RankMe as ``val/rankme``, every other numeric history field as ``train/<field>`` (``train/loss``, ``train/lr``,
  ``train/images_per_s`` and the method's own terms). A slash marks a per-epoch metric.
- final metrics, step 0: the names the evaluation gives them, test numbers as ``knn20.top1``, ``linear.top1``,
  validation ones as ``val.knn20.top1``.
- selection (cells, at the end): the hyper-parameters chosen on the validation split as params ``selection.<name>``
  (``selection.linear.lr``, ``selection.logreg.C``, ``selection.knn.k``).
- fingerprint (cells, ``bench.tracking.fingerprint``): tags ``ssl_bench.fingerprint`` (its id) and
  ``fingerprint.<group>.<field>`` (``fingerprint.packages.torch``, ``fingerprint.data.sha256``).
- cost (cells, final metrics, ``bench.core.cost``): ``cost.wall.<stage>`` (``load``, ``fingerprint``, ``train``,
  ``monitor``, ``checkpoint``, ``extract``, ``knn``, ``logreg``, ``linear``, ...), ``cost.wall.other``,
  ``cost.wall.total``, ``cost.peak_mem_gb.<stage>``, ``cost.gpus``, ``cost.gpu_seconds``, ``cost.gpu_hours``,
  ``cost.image_epochs``.
- artifacts: ``suite.yaml`` (parent), ``config.yaml``, ``report.json``, ``fingerprint.json`` and ``diff.patch``
  (when the code was dirty) (cells).
- the variants of the suite that ``run`` queued (``bench.suite.as_run``): on the parent, one tag
  ``ssl_bench.suite_run.<key>`` per variant (its ``SuiteRun`` record as JSON) and the artifact
  ``suite_runs/<key>.yaml`` (the resolved suite).

Several workers may write to one SQLite store at once. MLflow gives every SQLite session a 20 s busy
timeout, but SQLite answers "database is locked" at once where waiting could deadlock; such calls are
retried here with jittered exponential backoff (a failed SQLite transaction is rolled back whole).
"""

from __future__ import annotations

import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote, urlparse

import pandas as pd
import sqlalchemy.exc
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from bench.core.states import CellStatus
from bench.suite.as_run import RECORD_PREFIX, RunHistory, SuiteRun, by_first_run, next_record, suite_key
from bench.config.overrides import flatten
from bench.config.run import RunConfig
from bench.config.search import metric_split
from bench.errors import ConfigError
from bench.stores import sqlite_file
from bench.tracking.fingerprint import DIFF_FILE, FINGERPRINT_FILE, fingerprint_tags, git_commit
from bench.core.device import pick_device
from bench.train.records import EpochRecord, RunReport
from bench.transfer.stage import StageReport

Status = Literal[CellStatus.COMPLETE, CellStatus.FAILED, CellStatus.PRUNED]

#: ssl-bench status -> MLflow terminal run status
RUN_STATUS: dict[CellStatus, str] = {CellStatus.COMPLETE: "FINISHED", CellStatus.FAILED: "FAILED", CellStatus.PRUNED: "KILLED"}

ROLE, SUITE, STATUS, FAIL_REASON = "ssl_bench.role", "ssl_bench.suite", "ssl_bench.status", "ssl_bench.fail_reason"
CELL_ID = "ssl_bench.cell_id"
#: the parent's artifact folder of the YAML of each variant of the suite that ``run`` queued
SUITE_RUNS_DIR = "suite_runs"
OBJECTIVE, OBJECTIVE_SPLIT = "ssl_bench.objective", "ssl_bench.objective_split"

#: the columns ``mlflow.search_runs`` puts before ``metrics.*``, ``params.*`` and ``tags.*``
RUN_COLUMNS = ["run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time"]

T = TypeVar("T")


def tracking_uri(configured: str | None, results: Path = Path("results")) -> str:
    """The tracking URI: ``configured``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<results>/mlflow.db``.

    ``results`` is made absolute and created for the default; a plain path becomes an absolute file URI.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        results = results.resolve()
        results.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{results / 'mlflow.db'}"
    if not urlparse(uri).scheme:
        return Path(uri).resolve().as_uri()
    return uri


def epoch_metric_name(field: str) -> str:
    """MLflow metric name of one history field: a field with a split prefix as it is (the online kNN monitor's
    ``val/knn20.top1``), any other ``train/<field>`` (``loss`` -> ``train/loss``)."""
    return field if "/" in field else f"train/{field}"


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``{dotted.key: value}``: strings as they are, other values as JSON, cut to MLflow's limit."""
    return {key: (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_VAL_LENGTH]
            for key, value in flatten(data, prefix).items()}


def retry_locked(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``, retrying with jittered exponential backoff (about 10 s in all) while SQLite is locked.

    Safe for MLflow and SQLAlchemy calls: a transaction that meets a lock is rolled back whole.
    """
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except (MlflowException, sqlalchemy.exc.OperationalError) as err:
            if "database is locked" not in str(err) or delay > 5:
                raise
        time.sleep(delay * (1 + random.random()))
        delay *= 2


class SuiteTracker:
    """The MLflow runs of one suite in one experiment (created if missing, artifacts beside a local store)."""

    def __init__(self, uri: str, experiment: str):
        if urlparse(uri).scheme == "file" and not MLFLOW_ALLOW_FILE_STORE.get():
            raise ConfigError(
                f"tracking uri {uri} is an MLflow file store, which MLflow 3 refuses; use a database such as "
                f"sqlite:///{unquote(urlparse(uri).path)}/mlflow.db (or leave the uri unset for results/mlflow.db), "
                "or set MLFLOW_ALLOW_FILE_STORE=true"
            )
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment(experiment)

    def parent_run(self, suite_name: str, suite_yaml: str) -> str:
        """Find (by its tags) or create the suite's parent run, mark it RUNNING, log ``suite.yaml``; its run id.

        Call it once before workers start, so a fresh SQLite store is migrated by one process.
        """
        found = next(self._search(f"tags.`{ROLE}` = 'parent' and tags.`{SUITE}` = '{suite_name}'"), None)
        if found is None:
            tags = {ROLE: "parent", SUITE: suite_name, STATUS: CellStatus.RUNNING}
            run = retry_locked(self.client.create_run, self.experiment_id, tags=tags, run_name=suite_name)
            run_id = run.info.run_id
        else:
            run_id = found.info.run_id
            retry_locked(self.client.update_run, run_id, status="RUNNING")
            retry_locked(self.client.set_tag, run_id, STATUS, CellStatus.RUNNING)
        retry_locked(self.client.log_text, run_id, suite_yaml, "suite.yaml")
        return run_id

    def record_run(self, parent_id: str, suite_yaml: str, sets: Sequence[str], now: datetime) -> SuiteRun:
        """Record on the parent run that this variant of the suite (``sets`` applied) was queued at ``now``."""
        key = suite_key(suite_yaml)
        previous = retry_locked(self.client.get_run, parent_id).data.tags.get(RECORD_PREFIX + key)
        record = next_record(None if previous is None else SuiteRun.model_validate_json(previous), suite_yaml, sets, now)
        retry_locked(self.client.set_tag, parent_id, RECORD_PREFIX + key, record.model_dump_json())
        retry_locked(self.client.log_text, parent_id, suite_yaml, f"{SUITE_RUNS_DIR}/{key}.yaml")
        return record

    def start_cell(self, parent_id: str, cell_id: str, config: RunConfig, *, suite: str, axes: dict[str, Any],
                   trial: dict[str, Any], run_id: str | None = None, objective: str | None = None) -> str:
        """Create the cell's child run (params and ``config.yaml`` once), or reopen ``run_id`` of a retried cell.

        ``trial`` holds the Optuna ``study`` name and the trial's ``number`` and ``id``; ``axes`` the suite axes
        that make this cell (logged as ``axis.<name>`` params); ``objective`` the metric the study's objective reads
        (tags ``ssl_bench.objective`` and ``ssl_bench.objective_split``, ``val`` for ``val.*``). Returns the run id.
        """
        tags = {
            "mlflow.parentRunId": parent_id,
            ROLE: "cell",
            SUITE: suite,
            STATUS: CellStatus.RUNNING,
            CELL_ID: cell_id,
            "ssl_bench.method": config.method.name,
            "ssl_bench.dataset": config.dataset.name,
            "ssl_bench.seed": str(config.seed),
            "ssl_bench.host": socket.gethostname(),
            "ssl_bench.device": _device_name(config),
            "mlflow.source.git.commit": git_commit(),
            "optuna.study": str(trial["study"]),
            "optuna.trial_number": str(trial["number"]),
            "optuna.trial_id": str(trial["id"]),
        }
        if objective is not None:
            tags |= {OBJECTIVE: objective, OBJECTIVE_SPLIT: metric_split(objective)}
        if run_id is not None:
            self._reopen(run_id, cell_id, tags)
            return run_id
        name = f"{config.method.name}-{config.dataset.name}-{cell_id}"
        run_id = retry_locked(self.client.create_run, self.experiment_id, tags=tags, run_name=name).info.run_id
        resolved = config.model_dump(mode="json")
        params = {**flatten_params(resolved), **flatten_params(axes, "axis.")}
        retry_locked(self.client.log_batch, run_id, params=[Param(k, v) for k, v in params.items()])
        retry_locked(self.client.log_dict, run_id, resolved, "config.yaml")
        return run_id

    def log_epoch(self, run_id: str, record: EpochRecord) -> None:
        """Log every number of one history record at ``step = record.epoch`` (see ``epoch_metric_name``)."""
        now = _now_ms()
        metrics = [Metric(epoch_metric_name(k), float(v), now, record.epoch) for k, v in record.metrics().items()]
        retry_locked(self.client.log_batch, run_id, metrics=metrics)

    def finish_cell(self, run_id: str, *, status: Status, metrics: dict[str, float] | None = None,
                    report: RunReport | StageReport | None = None, reason: str | None = None,
                    artifact: str = "report.json") -> None:
        """Log final metrics, a run report's selection (params ``selection.<name>``), the report (a ``RunReport`` or a
        detection stage's report, as ``artifact``) and the status tags, then end the run FINISHED / FAILED / KILLED."""
        tags = [RunTag(STATUS, status)]
        if reason:
            tags.append(RunTag(FAIL_REASON, reason[:MAX_TAG_VAL_LENGTH]))
        now = _now_ms()
        final = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        chosen = flatten_params(report.selection, "selection.") if isinstance(report, RunReport) else {}
        retry_locked(self.client.log_batch, run_id, metrics=final, params=[Param(k, v) for k, v in chosen.items()], tags=tags)
        if report is not None:
            retry_locked(self.client.log_dict, run_id, report.model_dump(mode="json"), artifact)
        retry_locked(self.client.set_terminated, run_id, RUN_STATUS[status])

    def log_provenance(self, run_id: str, run_dir: Path) -> None:
        """The cell's fingerprint from ``run_dir`` (written when the cell started): its tags, ``fingerprint.json`` and
        ``diff.patch`` (when the code was dirty). Nothing when the cell never got that far."""
        path = run_dir / FINGERPRINT_FILE
        if not path.is_file():
            return
        record = json.loads(path.read_text())
        tags = [RunTag(k, v[:MAX_TAG_VAL_LENGTH]) for k, v in fingerprint_tags(record).items()]
        retry_locked(self.client.log_batch, run_id, tags=tags)
        retry_locked(self.client.log_dict, run_id, record, FINGERPRINT_FILE)
        if (run_dir / DIFF_FILE).is_file():
            retry_locked(self.client.log_artifact, run_id, str(run_dir / DIFF_FILE))

    def finish_parent(self, parent_id: str, status: Literal[CellStatus.COMPLETE, CellStatus.FAILED]) -> None:
        """Tag the suite's status and end its parent run FINISHED / FAILED."""
        retry_locked(self.client.set_tag, parent_id, STATUS, status)
        retry_locked(self.client.set_terminated, parent_id, RUN_STATUS[status])

    def finished_run(self, name: str, *, role: str, params: dict[str, Any], metrics: dict[str, float]) -> str:
        """One run outside any suite (``ssl-bench transfer``): params flattened, final metrics at step 0, FINISHED."""
        tags = {ROLE: role, STATUS: CellStatus.COMPLETE, "ssl_bench.host": socket.gethostname(), "mlflow.source.git.commit": git_commit()}
        run_id = retry_locked(self.client.create_run, self.experiment_id, tags=tags, run_name=name).info.run_id
        now = _now_ms()
        retry_locked(self.client.log_batch, run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in flatten_params(params).items()])
        retry_locked(self.client.set_terminated, run_id, RUN_STATUS[CellStatus.COMPLETE])
        return run_id

    def cell_runs(self) -> pd.DataFrame:
        """The experiment's cell runs, one row each, in ``mlflow.search_runs``' columns (``metrics.*`` etc.)."""
        rows = [_run_row(run) for run in self._search(f"tags.`{ROLE}` = 'cell'")]
        return pd.DataFrame(rows) if rows else pd.DataFrame(columns=RUN_COLUMNS)

    def _experiment(self, name: str) -> str:
        found = retry_locked(self.client.get_experiment_by_name, name)
        if found is None:
            try:
                location = _artifact_location(self.uri, name)
                return retry_locked(self.client.create_experiment, name, artifact_location=location)
            except MlflowException as err:  # another process created it meanwhile
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = retry_locked(self.client.get_experiment_by_name, name)
        if found.lifecycle_stage == "deleted":
            raise ConfigError(
                f"MLflow experiment {name!r} is deleted in {self.uri}; restore it with "
                f"`mlflow experiments restore --experiment-id {found.experiment_id}` or name another experiment"
            )
        return found.experiment_id

    def _reopen(self, run_id: str, cell_id: str, tags: dict[str, str]) -> None:
        try:
            run = retry_locked(self.client.get_run, run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise ConfigError(
                f"MLflow run {run_id} of cell {cell_id} is not in {self.uri}; the Optuna study points at another "
                "tracking store: set the tracking uri the suite started with, or start the suite with a new study"
            ) from None
        retry_locked(self.client.update_run, run_id, status="RUNNING")
        if FAIL_REASON in run.data.tags:
            retry_locked(self.client.delete_tag, run_id, FAIL_REASON)
        retry_locked(self.client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _search(self, filter_string: str) -> Iterator[Run]:
        token = None
        while True:
            page = retry_locked(self.client.search_runs, [self.experiment_id], filter_string, page_token=token)
            yield from page
            token = page.token
            if not token:
                return


def recorded_runs(client: MlflowClient, experiment_id: str, suite_name: str) -> RunHistory:
    """The variants of suite ``suite_name`` recorded on its parent run in ``experiment_id`` (none without one)."""
    query = f"tags.`{ROLE}` = 'parent' and tags.`{SUITE}` = '{suite_name}'"
    parents = retry_locked(client.search_runs, [experiment_id], query, max_results=1)
    tags = parents[0].data.tags if parents else {}
    runs = [SuiteRun.model_validate_json(value) for key, value in tags.items() if key.startswith(RECORD_PREFIX)]

    def suite_text(run: SuiteRun) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            path = retry_locked(client.download_artifacts, parents[0].info.run_id, f"{SUITE_RUNS_DIR}/{run.key}.yaml", tmp)
            return Path(path).read_text()

    return RunHistory(by_first_run(runs), f"the MLflow store {client.tracking_uri}", suite_text)


def _artifact_location(uri: str, experiment: str) -> str | None:
    """``<store folder>/mlartifacts/<experiment>`` as a file URI for a local store; None (server default) else."""
    parsed = urlparse(uri)
    store = Path(unquote(parsed.path)) if parsed.scheme == "file" else sqlite_file(uri)
    if store is None:
        return None
    return (store.resolve().parent / "mlartifacts" / experiment).as_uri()


def _run_row(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "artifact_uri": run.info.artifact_uri,
        "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
        "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True),
        **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
        **{f"params.{k}": v for k, v in run.data.params.items()},
        **{f"tags.{k}": v for k, v in run.data.tags.items()},
    }


def _device_name(config: RunConfig) -> str:
    device = pick_device(config.train.device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _now_ms() -> int:
    return int(time.time() * 1000)
