"""A suite's results as one pandas frame: one row per expected cell, joined with its MLflow child run.

Columns: ``cell_id``, ``run_id`` (None for a cell never run), ``status`` (one of ``STATUSES``),
``fail_reason``, the suite's axis keys as written (``method``, ``dataset``, ``vicreg.projector``, ``seed``;
``method`` and ``dataset`` are always there), every key of the cell's resolved run config flattened with dots
(``batch_size``, ``method.projector``, ``optimizer.lr``), one column per final metric (``knn20.top1``), and as
JSON text the whole resolved config (``cell.config``) and the choices its run made on the validation split
(``cell.selection``: the run's params ``selection.<name>``; null when it logged none, as runs from before the
validation split), from which the paper column derives the cell's protocol record. The fingerprint tags of a
cell's run are columns too (``fingerprint.packages.torch``, ``bench.report.provenance``).
A search suite has no fixed cells: its rows are the child runs found, with their config read from the run's
``config.yaml``. Lists and mappings become text (``[scattering, hog]``), so every column can be grouped.
A cell whose run is tagged with a baseline's method (``labels.Baseline``: ``random_init``, ``raw_pixels``) has
that method. Runs are read with an explicit ``MlflowClient``, never through MLflow's global state.
``shown_report_suite`` picks the variant of a suite that a report shows (``bench.suite.as_run``) from the
records of its MLflow parent run.
"""

from __future__ import annotations

import difflib
import json
import math
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from bench.core.states import CellStatus
from bench.suite.as_run import RunHistory, Shown, shown_suite
from bench.config.overrides import flatten
from bench.suite.suite import Suite, expand_suite
from bench.errors import ConfigError
from bench.methods import all_methods
from bench.report.labels import is_baseline
from bench.report.provenance import fingerprint_columns
from bench.stores import sqlite_file
from bench.tracking.mlflow_runs import FAIL_REASON, ROLE, STATUS, SUITE, recorded_runs, retry_locked, tracking_uri

#: the status of a cell (see ``run_status``)
STATUSES = (CellStatus.COMPLETE, CellStatus.FAILED, CellStatus.RUNNING, CellStatus.PRUNED, CellStatus.MISSING)
#: the tag naming a child run's cell
CELL_TAG = "ssl_bench.cell_id"
#: the tag naming a child run's method
METHOD_TAG = "ssl_bench.method"
#: per-epoch metrics are logged as ``train/<x>`` and ``val/knn20.top1``; final metrics have no slash
EPOCH_METRIC_MARK = "/"
#: the columns holding a cell's resolved config and its run's selection, as JSON text
CONFIG_COLUMN, SELECTION_COLUMN = "cell.config", "cell.selection"
#: the prefix of the params that hold the choices made on the validation split (``selection.linear.lr``)
SELECTION_PARAM = "selection."


def suite_runs(suite: Suite, *, uri: str | None = None) -> pd.DataFrame:
    """One row per expected cell of ``suite`` (per child run found, for a search suite); see the module docstring.

    ``uri`` defaults to the suite's tracking URI (``$MLFLOW_TRACKING_URI``, else ``results/mlflow.db``).
    """
    client = tracking_client(uri or tracking_uri(suite.tracking.mlflow_uri))
    runs = _latest_cell_runs(client, experiment_id(client, suite.tracking.experiment or suite.name), suite.name)
    if suite.search is None:
        rows = [_row(cell.id, cell.config.model_dump(mode="json"), cell.axes, runs.get(cell.id)) for cell in expand_suite(suite)]
    else:
        base = expand_suite(suite)[0].axes
        rows = []
        for cell_id, run in runs.items():
            config = _run_config(client, run)
            flat = flatten_config(config)
            searched = {key: flat[_column_for(key, flat)] for key in suite.search.space}
            rows.append(_row(cell_id, config, {**base, **searched}, run))
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["cell_id", "run_id", "status", "fail_reason"])
    for column in ("run_id", "fail_reason"):  # None (not NaN) where there is no run or no reason
        frame[column] = pd.Series([row[column] for row in rows], index=frame.index, dtype=object)
    return frame


def shown_report_suite(path: Path, sets: Sequence[str], *, as_run: int | None, as_file: bool,
                       tracking: str | None) -> Shown:
    """The variant of the suite at ``path`` that a report shows (``as_run.shown_suite``), from the records on its
    MLflow parent run in ``tracking`` (default: the suite's tracking URI)."""
    return shown_suite(path, sets, as_run=as_run, as_file=as_file,
                       history=lambda suite: mlflow_history(suite, tracking_uri(tracking or suite.tracking.mlflow_uri)))


def mlflow_history(suite: Suite, uri: str) -> RunHistory:
    """The variants of ``suite``'s name recorded in the store at ``uri`` (none when it has no such experiment)."""
    store = sqlite_file(uri)
    experiment = None
    if store is None or store.is_file():
        client = MlflowClient(tracking_uri=uri)
        experiment = retry_locked(client.get_experiment_by_name, suite.tracking.experiment or suite.name)
    if experiment is None:
        return RunHistory([], f"the MLflow store {uri}", lambda run: "")
    return recorded_runs(client, experiment.experiment_id, suite.name)


def resolve_key(df: pd.DataFrame, key: str) -> str:
    """The column of ``df`` that a user's key names: the key itself, else ``method.<key>`` (``projector``),
    else for ``<method>.<param>`` the column ``method.<param>`` (``mvmr.representations``).

    Raises ConfigError with the closest column names when nothing matches.
    """
    found = _column_for(key, df.columns)
    if found is None:
        close = difflib.get_close_matches(key, [str(c) for c in df.columns], n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else "run `ssl-bench validate SUITE` to see the suite's axes"
        raise ConfigError(f"unknown key '{key}': not an axis, run-config key or final metric of the suite's runs; {hint}")
    return found


def flatten_config(data: dict[str, Any]) -> dict[str, Any]:
    """A nested config -> ``{dotted.key: value}``; lists and mappings become text such as ``[scattering, hog]``."""
    return {key: hashable(value) for key, value in flatten(data).items()}


def hashable(value: Any) -> Any:
    """``value`` as it can be grouped: lists and mappings as their YAML flow text, anything else as it is."""
    if isinstance(value, list | dict):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=math.inf).strip()
    return value


def tracking_client(uri: str) -> MlflowClient:
    """A client of the store at ``uri``; a missing SQLite store is an error (MLflow would create an empty one)."""
    store = sqlite_file(uri)
    if store is not None:
        if not store.is_file():
            raise ConfigError(f"no MLflow store at {store}: run the suite first (ssl-bench run SUITE), or give the "
                              "tracking URI it ran with (--tracking, $MLFLOW_TRACKING_URI or tracking.mlflow_uri)")
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of the MLflow experiment ``name``; ConfigError when the store has none of that name."""
    experiment = retry_locked(client.get_experiment_by_name, name)
    if experiment is None:
        raise ConfigError(f"no MLflow experiment '{name}' in {client.tracking_uri}: run the suite first (ssl-bench run "
                          "SUITE), or give the tracking URI it ran with (--tracking, $MLFLOW_TRACKING_URI or tracking.mlflow_uri)")
    return experiment.experiment_id


def run_status(run: Run | None) -> str:
    """A cell's status from its latest run: the run's final status, ``running`` before it has one, else ``missing``."""
    if run is None:
        return CellStatus.MISSING
    status = run.data.tags.get(STATUS)
    return CellStatus(status) if status in STATUSES else CellStatus.RUNNING


def final_metrics(run: Run) -> dict[str, float]:
    """The run's final metrics (``knn20.top1``), without the per-epoch ones (``train/loss``, ``val/knn20.top1``)."""
    return {k: v for k, v in run.data.metrics.items() if EPOCH_METRIC_MARK not in k}


def selection(run: Run) -> dict[str, Any]:
    """The choices the run made on the validation split, from its params ``selection.<name>`` (values as logged:
    JSON for numbers)."""
    return {name.removeprefix(SELECTION_PARAM): _param_value(value)
            for name, value in run.data.params.items() if name.startswith(SELECTION_PARAM)}


def _param_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _column_for(key: str, columns: Any) -> str | None:
    """The first of ``key``, ``method.<key>`` and (for ``<method>.<param>``) ``method.<param>`` in ``columns``."""
    owner, _, param = key.partition(".")
    candidates = [key, f"method.{key}"]
    if param and owner in all_methods():
        candidates.append(f"method.{param}")
    return next((c for c in candidates if c in columns), None)


def _latest_cell_runs(client: MlflowClient, experiment: str, suite_name: str) -> dict[str, Run]:
    """cell id -> the suite's latest child run of that cell (a retried cell may have several)."""
    query = f"tags.`{ROLE}` = 'cell' and tags.`{SUITE}` = '{suite_name}'"
    latest: dict[str, Run] = {}
    token = None
    while True:
        page = retry_locked(client.search_runs, [experiment], query, order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            latest.setdefault(run.data.tags[CELL_TAG], run)
        token = page.token
        if not token:
            return latest


def _run_config(client: MlflowClient, run: Run) -> dict[str, Any]:
    """The resolved config that a child run logged as ``config.yaml`` (the params are cut to MLflow's length limit)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = retry_locked(client.download_artifacts, run.info.run_id, "config.yaml", tmp)
        return yaml.safe_load(Path(path).read_text())


def _row(cell_id: str, config: dict[str, Any], axes: dict[str, Any], run: Run | None) -> dict[str, Any]:
    """One cell: identity, status, axes, flattened config and final metrics."""
    row: dict[str, Any] = {
        "cell_id": cell_id,
        "run_id": run.info.run_id if run else None,
        "status": run_status(run),
        "fail_reason": run.data.tags.get(FAIL_REASON) if run else None,
        **{key: hashable(value) for key, value in axes.items()},
    }
    row.setdefault("method", config["method"]["name"])
    row.setdefault("dataset", config["dataset"]["name"])
    row.update(flatten_config(config))
    row[CONFIG_COLUMN] = json.dumps(config)
    row[SELECTION_COLUMN] = json.dumps(selection(run) or None if run is not None else None)
    if run is not None:
        row.update(final_metrics(run))
        row.update(fingerprint_columns(run.data.tags))
        if is_baseline(run.data.tags.get(METHOD_TAG)):
            row["method"] = run.data.tags[METHOD_TAG]
    return row
