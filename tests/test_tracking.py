"""MLflow tracking on real SQLite stores: parent and cell runs, retries, statuses, concurrent writers."""

import json
import multiprocessing
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy
import yaml
from mlflow import MlflowClient

from bench.config import RunConfig, resolve_run_config
from bench.config.run import config_id
from bench.core.states import CellStatus
from bench.errors import ConfigError
from bench.tracking.mlflow_runs import SuiteTracker, retry_locked, tracking_uri
from bench.train.records import MONITOR, RANKME_MONITOR, EpochRecord, Monitor, ReportCost, RunReport, SplitSizes

SUITE_YAML = "name: tiny\nmatrix:\n  method: [simclr, byol]\n"
TRIAL = {"study": "tiny", "number": 3, "id": 17}


def _config(method: str = "simclr") -> RunConfig:
    return resolve_run_config({"method": method, "dataset": {"name": "digits"}, "epochs": 3, "batch_size": 64})


def _tracker(tmp_path: Path, experiment: str = "tiny") -> SuiteTracker:
    return SuiteTracker(tracking_uri(f"sqlite:///{tmp_path}/results/mlflow.db"), experiment)


def _at(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _artifact(client: MlflowClient, run_id: str, name: str, dst: Path) -> str:
    return Path(client.download_artifacts(run_id, name, str(dst))).read_text()


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = tmp_path / "res"
    assert tracking_uri(None, results) == f"sqlite:///{results.resolve()}/mlflow.db"
    assert results.is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(None, results) == "http://127.0.0.1:5000"
    assert tracking_uri("postgresql://db/mlflow", results) == "postgresql://db/mlflow"
    monkeypatch.chdir(tmp_path)
    assert tracking_uri("stores/mlruns") == f"file://{tmp_path.resolve()}/stores/mlruns"


def test_file_store_refused_with_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        SuiteTracker(tracking_uri(str(tmp_path / "mlruns")), "tiny")


def test_parent_found_or_created_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = _tracker(tmp_path)
    parent = tracker.parent_run("tiny", SUITE_YAML)
    tracker.finish_parent(parent, "complete")
    assert tracker.client.get_run(parent).info.status == "FINISHED"
    assert tracker.parent_run("tiny", SUITE_YAML) == parent  # a second invocation of the suite
    other = tracker.parent_run("other", "name: other\n")
    assert other != parent

    again = SuiteTracker(tracker.uri, "tiny")  # a new process finds the same experiment and parent
    assert again.experiment_id == tracker.experiment_id
    assert again.parent_run("tiny", SUITE_YAML) == parent
    run = tracker.client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.tags["ssl_bench.role"] == "parent" and run.data.tags["ssl_bench.suite"] == "tiny"
    assert _artifact(tracker.client, parent, "suite.yaml", tmp_path / "dl") == SUITE_YAML
    parents = tracker.client.search_runs([tracker.experiment_id], "tags.`ssl_bench.role` = 'parent'")
    assert sorted(r.data.tags["ssl_bench.suite"] for r in parents) == ["other", "tiny"]  # one run per suite
    assert tracker.cell_runs().empty

    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tmp_path / "results" / "mlartifacts" / "tiny").resolve().as_uri()
    assert (tmp_path / "results" / "mlartifacts" / "tiny" / parent / "artifacts" / "suite.yaml").is_file()
    assert not (tmp_path / "mlruns").exists()


def test_cell_run_logs_tags_params_metrics_artifacts(tmp_path):
    tracker = _tracker(tmp_path)
    cfg = _config()
    parent = tracker.parent_run("tiny", SUITE_YAML)
    cell = config_id(cfg)
    run_id = tracker.start_cell(parent, cell, cfg, suite="tiny", axes={"method": "simclr", "batch_size": 64},
                                trial=TRIAL, objective="val.knn20.top1")
    history = [
        EpochRecord(epoch=1, loss=5.5, lr=0.1, images_per_s=900.0, logs={"align": 0.5}),
        EpochRecord(epoch=2, loss=4.25, lr=0.05, images_per_s=1000.0, logs={"align": 0.25},
                    monitor=Monitor(knn20_top1=0.625, rankme=3.5)),
        EpochRecord(epoch=3, loss=4.0, lr=0.0, images_per_s=1100.0, logs={"align": 0.125}),
    ]
    for record in history:
        tracker.log_epoch(run_id, record)
    report = RunReport(status=CellStatus.COMPLETE, config_id=cell,
                       metrics={"knn20.top1": 0.75, "linear.top1": 0.8125, "val.knn20.top1": 0.5},
                       selection={"linear.lr": 0.3, "knn.k": 20}, test_reads=1,
                       splits=SplitSizes(pretrain=64, train=64, val=16, test=32), history=history, resumed_from_epoch=0.0,
                       torch={}, fingerprint={}, cost=ReportCost(device="cpu", gpus=0, memory="peak resident set size"),
                       config=cfg.model_dump(mode="json"))
    tracker.finish_cell(run_id, status="complete", metrics=report.metrics, report=report)

    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == f"simclr-digits-{cell}"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert {k: tags[f"ssl_bench.{k}"] for k in ("cell_id", "method", "dataset", "seed", "suite", "status", "device")} \
        == {"cell_id": cell, "method": "simclr", "dataset": "digits", "seed": "0", "suite": "tiny",
            "status": "complete", "device": "cpu"}
    assert len(tags["mlflow.source.git.commit"]) in (7, 40) or tags["mlflow.source.git.commit"] == "unknown"
    assert tags["ssl_bench.host"]
    assert (tags["optuna.study"], tags["optuna.trial_number"], tags["optuna.trial_id"]) == ("tiny", "3", "17")
    assert (tags["ssl_bench.objective"], tags["ssl_bench.objective_split"]) == ("val.knn20.top1", "val")
    assert "ssl_bench.fail_reason" not in tags

    params = run.data.params
    assert params["axis.method"] == "simclr" and params["axis.batch_size"] == "64"
    assert params["method.temperature"] == "0.1" and params["optimizer.betas"] == "[0.9, 0.999]"
    assert params["train.threads"] == "null" and params["eval.knn"] == "true" and params["augment"] == "simclr"
    resolved = cfg.model_dump(mode="json")
    assert (params["selection.linear.lr"], params["selection.knn.k"]) == ("0.3", "20")  # chosen on val
    config_params = {k: v for k, v in params.items() if not k.startswith(("axis.", "selection."))}
    assert set(config_params) == set(pd.json_normalize(resolved).columns)  # every leaf, nothing else
    for key, value in config_params.items():
        expected = _at(resolved, key)
        assert value == (expected if isinstance(expected, str) else json.dumps(expected)), key

    def curve(name: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, name)]

    assert curve("train/loss") == [(1, 5.5), (2, 4.25), (3, 4.0)]
    assert curve("train/lr") == [(1, 0.1), (2, 0.05), (3, 0.0)]
    assert curve("train/images_per_s") == [(1, 900.0), (2, 1000.0), (3, 1100.0)]
    assert curve("train/align") == [(1, 0.5), (2, 0.25), (3, 0.125)]  # the method's own term
    assert curve(MONITOR) == [(2, 0.625)] and curve(RANKME_MONITOR) == [(2, 3.5)]  # the validation monitor, per epoch
    assert curve("val.knn20.top1") == [(0, 0.5)]  # the final validation number, at step 0
    assert run.data.metrics["knn20.top1"] == 0.75 and run.data.metrics["linear.top1"] == 0.8125

    assert {a.path for a in tracker.client.list_artifacts(run_id)} == {"config.yaml", "report.json"}
    config_yaml = yaml.safe_load(_artifact(tracker.client, run_id, "config.yaml", tmp_path / "dl"))
    assert resolve_run_config(config_yaml) == cfg
    assert RunReport.model_validate_json(_artifact(tracker.client, run_id, "report.json", tmp_path / "dl")) == report

    table = tracker.cell_runs()
    assert table["run_id"].tolist() == [run_id]
    assert table["status"].tolist() == ["FINISHED"]
    assert table["metrics.linear.top1"].tolist() == [0.8125]
    assert table["params.method.name"].tolist() == ["simclr"]
    assert table["tags.ssl_bench.cell_id"].tolist() == [cell]


def test_retried_cell_reopens_its_run(tmp_path):
    tracker = _tracker(tmp_path)
    cfg = _config()
    parent = tracker.parent_run("tiny", SUITE_YAML)
    first = tracker.start_cell(parent, "c1", cfg, suite="tiny", axes={"seed": 0}, trial=TRIAL)
    tracker.log_epoch(first, EpochRecord(epoch=1, loss=3.0, lr=0.1, images_per_s=10.0))
    tracker.finish_cell(first, status="failed", reason="worker lost (heartbeat stale)")
    failed = tracker.client.get_run(first)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["ssl_bench.status"] == "failed"
    assert failed.data.tags["ssl_bench.fail_reason"] == "worker lost (heartbeat stale)"

    retry_trial = {**TRIAL, "number": 4, "id": 18}
    again = tracker.start_cell(parent, "c1", cfg, suite="tiny", axes={"seed": 0}, trial=retry_trial, run_id=first)
    assert again == first
    reopened = tracker.client.get_run(first)
    assert reopened.info.status == "RUNNING"
    assert reopened.data.tags["ssl_bench.status"] == "running"
    assert "ssl_bench.fail_reason" not in reopened.data.tags
    assert reopened.data.tags["optuna.trial_number"] == "4" and reopened.data.tags["optuna.trial_id"] == "18"
    assert reopened.data.params == failed.data.params

    tracker.log_epoch(first, EpochRecord(epoch=2, loss=2.5, lr=0.05, images_per_s=12.0))
    tracker.finish_cell(first, status="complete", metrics={"knn20.top1": 0.5})
    table = tracker.cell_runs()
    assert table["run_id"].tolist() == [first] and table["status"].tolist() == ["FINISHED"]
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(first, "train/loss")] == [(1, 3.0), (2, 2.5)]

    with pytest.raises(ConfigError, match="not in sqlite:///"):
        tracker.start_cell(parent, "c2", cfg, suite="tiny", axes={}, trial=TRIAL, run_id="0" * 32)


def test_pruned_and_failed_statuses(tmp_path):
    tracker = _tracker(tmp_path)
    parent = tracker.parent_run("tiny", SUITE_YAML)
    pruned = tracker.start_cell(parent, "p", _config(), suite="tiny", axes={}, trial=TRIAL)
    tracker.finish_cell(pruned, status="pruned", reason="pruned at epoch 2 (val/knn20.top1 below median)")
    failed = tracker.start_cell(parent, "f", _config("byol"), suite="tiny", axes={}, trial=TRIAL)
    tracker.finish_cell(failed, status="failed", reason="diverged at epoch 1 step 3")
    tracker.finish_parent(parent, "failed")

    table = tracker.cell_runs().set_index("run_id")
    assert table.loc[pruned, "status"] == "KILLED" and table.loc[pruned, "tags.ssl_bench.status"] == "pruned"
    assert table.loc[failed, "status"] == "FAILED" and table.loc[failed, "tags.ssl_bench.status"] == "failed"
    assert table.loc[failed, "tags.ssl_bench.fail_reason"] == "diverged at epoch 1 step 3"
    assert table.loc[failed, "tags.mlflow.runName"].startswith("byol-digits-")
    assert tracker.client.get_run(parent).info.status == "FAILED"


def test_deleted_experiment_names_the_fix(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(ConfigError, match="mlflow experiments restore"):
        SuiteTracker(tracker.uri, "tiny")


def test_locked_sqlite_write_is_retried_until_the_lock_is_released(tmp_path):
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    release = threading.Timer(0.4, holder.execute, ["commit"])
    engine = sqlalchemy.create_engine(f"sqlite:///{db}", connect_args={"timeout": 0})  # no busy wait: fail at once
    attempts = []

    def insert() -> None:
        attempts.append(1)
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("insert into t values (1)"))

    release.start()
    retry_locked(insert)
    release.join()
    assert len(attempts) > 1
    assert holder.execute("select count(*) from t").fetchone() == (1,)
    holder.close()

    queries = []

    def bad_query() -> None:
        queries.append(1)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select * from missing"))

    with pytest.raises(sqlalchemy.exc.OperationalError, match="no such table"):
        retry_locked(bad_query)
    assert len(queries) == 1  # any other error is raised at once


WORKERS, CELLS, EPOCHS = 2, 3, 6


def _log_cells(uri: str, parent: str, worker: int, start: Any) -> None:
    """One worker process: log CELLS cells of EPOCHS epochs each, as fast as it can."""
    tracker = SuiteTracker(uri, "tiny")
    cfg = _config()
    start.wait()
    for c in range(CELLS):
        run_id = tracker.start_cell(parent, f"w{worker}-c{c}", cfg, suite="tiny", axes={"worker": worker, "cell": c},
                                    trial={**TRIAL, "number": worker * CELLS + c})
        for epoch in range(1, EPOCHS + 1):
            tracker.log_epoch(run_id, EpochRecord(epoch=epoch, loss=100 * worker + 10 * c + epoch, lr=0.1, images_per_s=1.0))
        tracker.finish_cell(run_id, status="complete", metrics={"knn20.top1": worker + c / 10})


def test_concurrent_workers_share_one_sqlite_store(tmp_path):
    tracker = _tracker(tmp_path)
    parent = tracker.parent_run("tiny", SUITE_YAML)  # the launcher: migrations run here, once
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WORKERS)
    procs = [ctx.Process(target=_log_cells, args=(tracker.uri, parent, w, start)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)  # a hang, not a slow machine: under load this takes minutes
    assert [p.exitcode for p in procs] == [0] * WORKERS

    table = tracker.cell_runs()
    assert len(table) == WORKERS * CELLS
    assert set(table["status"]) == {"FINISHED"}
    assert set(table["tags.mlflow.parentRunId"]) == {parent}
    for row in table.to_dict("records"):
        worker, cell = int(row["params.axis.worker"]), int(row["params.axis.cell"])
        losses = [(m.step, m.value) for m in tracker.client.get_metric_history(row["run_id"], "train/loss")]
        assert losses == [(e, 100 * worker + 10 * cell + e) for e in range(1, EPOCHS + 1)]
        assert row["metrics.knn20.top1"] == worker + cell / 10
