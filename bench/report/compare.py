"""``ssl-bench compare``: a few runs side by side, with the config keys that differ and their final metrics.

A run is named by its cell id (the cell's latest run) or its MLflow run id. The config shown is the run's logged
params: ``method.name``, ``dataset.name`` and ``epochs`` always, any other key only where the runs differ. Below the
metrics, the fingerprint id of each run and every fingerprint field that differs (``bench.report.provenance``).
"""

from __future__ import annotations

import argparse
import re

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from rich.console import Console
from rich.table import Table

from bench.errors import ConfigError
from bench.report.labels import EMPTY, format_value
from bench.report.provenance import fingerprint_differences
from bench.report.runs import CELL_TAG, experiment_id, final_metrics, run_status, shown_report_suite, tracking_client
from bench.tracking.mlflow_runs import ROLE, retry_locked, tracking_uri

#: config keys shown even where the runs agree
ALWAYS = ("method.name", "dataset.name", "epochs")
#: a cell id or an MLflow run id
RUN_NAME = re.compile(r"[0-9A-Za-z_-]+")


def compare(runs: list[str], *, uri: str, experiment: str | None = None) -> Table:
    """A rich table with one column per run (cell id or run id) in the store at ``uri``; ``experiment`` narrows
    the search for cell ids to one MLflow experiment (default: all of them)."""
    client = tracking_client(uri)
    experiments = [experiment_id(client, experiment)] if experiment else [e.experiment_id for e in client.search_experiments()]
    found = [_find(client, experiments, name) for name in runs]
    params = [{k: v for k, v in run.data.params.items() if not k.startswith("axis.")} for run in found]
    keys = sorted(set().union(*params) - set(ALWAYS))
    shown = [*ALWAYS, *(k for k in keys if len({p.get(k) for p in params}) > 1)]
    metrics = [final_metrics(run) for run in found]
    table = Table("key", *(f"{run.data.tags.get(CELL_TAG, '')}\n{run.info.run_id[:8]}" for run in found),
                  title=f"{len(found)} runs: config keys that differ, final metrics (accuracies in %), fingerprint fields that differ")
    table.add_row("status", *(run_status(run) for run in found))
    for key in shown:
        table.add_row(key, *(p.get(key, EMPTY) for p in params))
    table.add_section()
    for name in sorted(set().union(*metrics)):
        table.add_row(name, *(format_value(name, m[name]) if name in m else EMPTY for m in metrics))
    table.add_section()
    for key, values in fingerprint_differences([run.data.tags for run in found]):
        table.add_row(key, *(EMPTY if v is None else v for v in values))
    return table


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    """``ssl-bench compare RUN_OR_CELL ... [--suite SUITE]``: print the runs side by side."""
    if args.suite:
        shown = shown_report_suite(args.suite, args.set, as_run=args.as_run, as_file=args.as_file, tracking=args.tracking)
        console.print(shown.line, markup=False, highlight=False)
        suite = shown.suite
        uri, experiment = tracking_uri(args.tracking or suite.tracking.mlflow_uri), suite.tracking.experiment or suite.name
    else:
        uri, experiment = tracking_uri(args.tracking), None
    console.print(compare(args.runs, uri=uri, experiment=experiment))
    return 0


def _find(client: MlflowClient, experiments: list[str], name: str) -> Run:
    """The latest cell run of cell ``name``, else the run with id ``name``."""
    if not RUN_NAME.fullmatch(name):
        raise ConfigError(f"'{name}' is not a cell id or an MLflow run id (letters, digits, '-' and '_')")
    query = f"tags.`{ROLE}` = 'cell' and tags.`{CELL_TAG}` = '{name}'"
    page = retry_locked(client.search_runs, experiments, query, order_by=["attributes.start_time DESC"], max_results=1)
    if page:
        return page[0]
    try:
        return retry_locked(client.get_run, name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    raise ConfigError(f"no cell or run '{name}' in {client.tracking_uri}: give a cell id or an MLflow run id as "
                      "`ssl-bench status SUITE` lists them, and the suite (--suite) or store (--tracking) they ran in")
