"""A suite on a real cluster: worker processes share a PostgreSQL queue and log to an MLflow server over HTTP.

One of three workers is killed (SIGKILL) in the middle of a cell and a replacement joins; every cell must
still complete exactly once in Optuna and have exactly one finished MLflow run, with its artifacts readable
through the server. The servers are those CI starts (.ci/run: `SSL_BENCH_TEST_POSTGRES`,
`SSL_BENCH_TEST_MLFLOW`), else throwaway ones (tests/postgres_server.py, tests/mlflow_server.py); the
helpers' script mode, which .ci/run uses, is checked here too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from mlflow import MlflowClient
from mlflow_server import mlflow_url
from optuna.trial import FrozenTrial, TrialState
from postgres_server import PostgresUnavailable, postgres_url
from suite_fixtures import DEFAULTS

from bench.cli import main
from bench.suite.suite import expand_suite, load_suite
from bench.orchestrate.launch import worker_command
from bench.orchestrate.queue import CELL_ATTR, CONFIG_ATTR, EPOCH_ATTR, METRICS_ATTR, RUN_ATTR
from bench.runner import METRICS

EPOCHS = 6
KILL_AFTER_EPOCHS = (1, 2)  #: kill a worker whose cell has done this many epochs: three or more remain
SEEDS = list(range(6))
WORKERS = 3
TIMEOUT_S = 600  #: a hung worker, not a slow one: a loaded machine may take minutes


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(PostgreSQL URL, MLflow server URL): CI's servers, else throwaway ones; skip without PostgreSQL."""
    base = tmp_path_factory.mktemp("servers")
    try:
        with postgres_url(base) as postgres, mlflow_url(postgres, base) as tracking:
            yield postgres, tracking
    except PostgresUnavailable as err:
        pytest.skip(f"no PostgreSQL server could be started here: {err.reason}")


def write_suite(path: Path, name: str, postgres: str, tracking: str) -> Path:
    """Six short cells (checkpoint every epoch) whose queue is `postgres` and whose runs go to `tracking`."""
    suite = {
        "name": name,
        "defaults": {**DEFAULTS, "dataset": {"name": "shapes", "n_train": 384, "n_test": 64}, "epochs": EPOCHS,
                     "train": {"progress": False, "checkpoint_every": 1}},
        "evaluations": {"probes": [], "knn_k": [5], "diagnostics": False},
        "matrix": {"method": ["simclr"]},
        "ablations": {"simclr.projector": ["16-8"]},
        "seeds": SEEDS,
        "storage": {"url": postgres, "runs_dir": str(path.parent / "cells"), "heartbeat_interval": 1, "grace_period": 5},
        "tracking": {"mlflow_uri": tracking, "experiment": name},
    }
    path.write_text(yaml.safe_dump(suite))
    return path


def start_worker(postgres: str, study: str, log: Path) -> subprocess.Popen:
    """`ssl-bench worker` as its own process (one thread, CPU), its output in `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with log.open("w") as out:
        return subprocess.Popen(worker_command(postgres, study), cwd=log.parent, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def mid_cell(study: optuna.Study, workers: list[subprocess.Popen], logs: list[Path]) -> tuple[FrozenTrial, subprocess.Popen]:
    """Wait for a running trial in its first epochs; return it and the worker that runs it (from the logs).

    No clock deadline: the workers' own progress is the measure (they may be slow to start on a loaded machine)."""
    while any(worker.poll() is None for worker in workers):
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if trial.user_attrs.get(EPOCH_ATTR) not in KILL_AFTER_EPOCHS:
                continue
            for worker, log in zip(workers, logs, strict=True):
                if re.search(rf":{worker.pid}: trial {trial.number} started", log.read_text()):
                    return trial, worker
        time.sleep(0.1)
    raise AssertionError("the workers ended before one was seen one or two epochs into a cell")


def test_killed_worker_loses_no_cell_in_postgres_and_mlflow(servers: tuple[str, str], tmp_path: Path) -> None:
    postgres, tracking = servers
    name = f"cluster_{uuid.uuid4().hex[:12]}"
    path = write_suite(tmp_path / "cluster.yaml", name, postgres, tracking)
    cells = expand_suite(load_suite(path))
    assert len(cells) == len(SEEDS)
    assert main(["run", str(path), "--launcher", "print"]) == 0
    study = optuna.load_study(study_name=name, storage=postgres)

    logs = [tmp_path / f"worker-{i}.log" for i in range(WORKERS + 1)]
    workers = [start_worker(postgres, name, log) for log in logs[:WORKERS]]
    try:
        victim_trial, victim = mid_cell(study, workers, logs[:WORKERS])
        os.kill(victim.pid, signal.SIGKILL)
        workers.append(start_worker(postgres, name, logs[WORKERS]))
        codes = [worker.wait(timeout=TIMEOUT_S) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert sorted(codes) == [-signal.SIGKILL] + [0] * WORKERS, "\n".join(log.read_text() for log in logs)

    # Optuna: the killed trial failed as stale and its retry completed; each cell is complete exactly once
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[CELL_ATTR] for t in complete) == sorted(c.id for c in cells)
    assert [t.number for t in trials if t.state != TrialState.COMPLETE] == [victim_trial.number]
    assert study.trials[victim_trial.number].state == TrialState.FAIL
    killed_cell = victim_trial.user_attrs[CELL_ATTR]
    report = json.loads((tmp_path / "cells" / killed_cell / METRICS).read_text())
    assert report["resumed_from_epoch"] >= victim_trial.user_attrs[EPOCH_ATTR]
    assert [h["epoch"] for h in report["history"]] == list(range(1, EPOCHS + 1))

    # running the suite again starts nothing and closes its parent run
    assert main(["run", str(path)]) == 0
    assert len(study.get_trials()) == len(trials)

    # MLflow, read back through the server: the parent run and one finished run per cell, the same the trials name
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags["ssl_bench.role"] == "parent"]
    assert [(p.info.status, p.data.tags["ssl_bench.status"]) for p in parents] == [("FINISHED", "complete")]
    cell_runs = {r.data.tags["ssl_bench.cell_id"]: r for r in runs if r.data.tags["ssl_bench.role"] == "cell"}
    assert len(cell_runs) == len(runs) - 1 == len(cells)
    assert {t.user_attrs[CELL_ATTR]: t.user_attrs[RUN_ATTR] for t in complete} == {c: r.info.run_id for c, r in cell_runs.items()}
    assert victim_trial.user_attrs[RUN_ATTR] == cell_runs[killed_cell].info.run_id
    for trial in complete:
        run = cell_runs[trial.user_attrs[CELL_ATTR]]
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), "artifacts go through the server"
        folder = tmp_path / "artifacts" / run.info.run_id
        folder.mkdir(parents=True)
        config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(folder))).read_text())
        cell_report = json.loads(Path(client.download_artifacts(run.info.run_id, "report.json", str(folder))).read_text())
        assert config == trial.user_attrs[CONFIG_ATTR]
        assert cell_report["metrics"] == trial.user_attrs[METRICS_ATTR]
        assert {k: run.data.metrics[k] for k in cell_report["metrics"]} == pytest.approx(cell_report["metrics"])
        assert 0 <= run.data.metrics["knn5.top1"] <= 1


def test_postgres_helper_script_serves_until_sigterm(tmp_path: Path) -> None:
    helper = Path(__file__).with_name("postgres_server.py")
    server = subprocess.Popen([sys.executable, str(helper), str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        if not url:
            pytest.skip(f"no PostgreSQL server could be started here: {server.stderr.read().strip()}")
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("select current_database()")).scalar() == "ssl_bench"
        engine.dispose()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=TIMEOUT_S) == 0
    finally:
        server.kill()
        server.wait()
    port = sqlalchemy.make_url(url).port
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert list(tmp_path.iterdir()) == []
