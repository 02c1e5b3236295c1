"""Suites end to end: real worker processes, a real Optuna queue and a real MLflow store under tmp_path."""

from __future__ import annotations

import json
from datetime import datetime, timezone
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from postgres_server import PostgresUnavailable, postgres_url
from suite_fixtures import DEFAULTS

from bench.cli import EXIT_CELLS_FAILED, main
from bench.core.torch_state import TorchSettings
from bench.suite.suite import expand_suite, load_suite
from bench.data.cifar import CIFAR10_FILES
from bench.orchestrate.launch import prepare
from bench.orchestrate.queue import (
    CELL_ATTR,
    EPOCH_ATTR,
    OBJECTIVE_ATTR,
    REASON_ATTR,
    SUITE_ATTR,
    create_study,
    default_storage_url,
    enqueue_cells,
    open_storage,
    suite_storage,
)
from bench.orchestrate.slurm import launch_slurm
from bench.orchestrate.worker import work
from bench.tracking.mlflow_runs import SuiteTracker
from bench.train.records import MONITOR

TINY = {
    "defaults": {**DEFAULTS, "train": {"progress": False}},
    "evaluations": {"probes": [], "knn_k": [20]},
    "matrix": {"method": ["simclr", "vicreg"]},
    "ablations": {"simclr.projector": ["16-8"], "vicreg.projector": ["16-16"]},
    "seeds": [0, 1],
    "storage": {"heartbeat_interval": 1, "grace_period": 3},
    "launcher": {"workers": 2},
}


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Run in a fresh directory: the default stores (results/optuna.db, results/mlflow.db) land under it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "results"


def write_suite(path: Path, name: str, **changes) -> Path:
    """TINY with ``changes``; the tiny-head ablations are kept for the methods the suite still has."""
    suite = {"name": name, **json.loads(json.dumps(TINY)), **changes}
    methods = suite["matrix"].get("method", [])
    suite["ablations"] = {k: v for k, v in suite["ablations"].items() if k.split(".")[0] in methods}
    if "ablations" in changes:
        suite["ablations"] = changes["ablations"]
    path.write_text(yaml.safe_dump(suite))
    return path


def study_of(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=default_storage_url())


def complete_per_cell(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        counts[t.user_attrs[CELL_ATTR]] = counts.get(t.user_attrs[CELL_ATTR], 0) + 1
    return counts


def tracking_client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{Path('results/mlflow.db').resolve()}")


def child_runs(experiment: str):
    mlflow.set_tracking_uri(f"sqlite:///{Path('results/mlflow.db').resolve()}")
    runs = mlflow.search_runs(experiment_names=[experiment])
    return runs[runs["tags.ssl_bench.role"] != "parent"] if "tags.ssl_bench.role" in runs else runs


def test_suite_runs_with_two_workers_and_reruns_as_a_no_op(results, tmp_path, capsys):
    path = write_suite(tmp_path / "tiny.yaml", "tiny")
    cells = expand_suite(load_suite(path))
    assert len(cells) == 4
    assert main(["run", str(path)]) == 0
    study = study_of("tiny")
    assert complete_per_cell(study) == {c.id: 1 for c in cells}
    runs = child_runs("tiny")
    assert sorted(runs["tags.ssl_bench.cell_id"]) == sorted(c.id for c in cells)
    assert (runs["status"] == "FINISHED").all() and runs["metrics.knn20.top1"].between(0, 1).all()
    by_trial = {t.user_attrs["mlflow_run_id"]: t.user_attrs[CELL_ATTR] for t in study.get_trials()}
    assert {r: c for r, c in zip(runs["run_id"], runs["tags.ssl_bench.cell_id"])} == by_trial
    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    assert "4 complete" in capsys.readouterr().out

    logs = {log: log.stat().st_size for log in (results / "logs" / "tiny").glob("worker-*.log")}
    assert main(["run", str(path)]) == 0
    assert "no cell is waiting or running; nothing to do" in capsys.readouterr().out
    assert {log: log.stat().st_size for log in (results / "logs" / "tiny").glob("worker-*.log")} == logs  # no worker started
    assert len(study_of("tiny").get_trials()) == 4 and len(child_runs("tiny")) == 4


def test_killed_worker_cell_resumes_from_its_checkpoint(results, tmp_path):
    path = write_suite(tmp_path / "kill.yaml", "kill", matrix={"method": ["simclr"]}, seeds=[0, 1, 2])
    suite_defaults = TINY["defaults"] | {"epochs": 6}
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | {"defaults": suite_defaults}))
    assert main(["run", str(path), "--launcher", "print"]) == 0
    url = default_storage_url()
    worker = subprocess.Popen([sys.executable, "-m", "bench.cli", "worker", "--storage", url, "--study", "kill"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    victim = None
    while victim is None and worker.poll() is None:  # no deadline: on a loaded machine the worker is slow to start
        running = study_of("kill").get_trials(states=(TrialState.RUNNING,))
        victim = next((t for t in running if 2 <= t.user_attrs.get(EPOCH_ATTR, 0) <= 4), None)  # 2 epochs left at least
        time.sleep(0.2)
    assert victim is not None, "the worker never got two epochs into a cell"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    assert main(["run", str(path), "--workers", "1"]) == 0
    study = study_of("kill")
    cells = expand_suite(load_suite(path))
    assert complete_per_cell(study) == {c.id: 1 for c in cells}
    killed = victim.user_attrs[CELL_ATTR]
    report = json.loads((results / "cells" / killed / "metrics.json").read_text())
    assert report["resumed_from_epoch"] >= 2
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3, 4, 5, 6]
    assert len(child_runs("kill")) == 3


def test_diverging_cell_fails_with_its_reason_while_the_others_complete(results, tmp_path, capsys):
    path = write_suite(tmp_path / "div.yaml", "div", matrix={"method": ["simclr"], "optimizer.lr": [1.0e-3, 1.0e+30]}, seeds=[0],
                       defaults=TINY["defaults"] | {"optimizer": {"name": "sgd", "lr_scaling": "none"}})
    assert main(["run", str(path), "--workers", "1"]) == EXIT_CELLS_FAILED
    trials = study_of("div").get_trials()
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "FAIL"]
    failed = next(t for t in trials if t.state == TrialState.FAIL)
    assert failed.user_attrs[REASON_ATTR].startswith("diverged")
    runs = child_runs("div")
    assert sorted(runs["status"]) == ["FAILED", "FINISHED"]
    assert "diverged" in capsys.readouterr().out


def test_search_with_tpe_and_median_pruner_prunes_a_trial(results, tmp_path):
    defaults = TINY["defaults"] | {"epochs": 4, "method": "simclr", "train": {"progress": False, "knn_every": 1}}
    search = {"space": {"optimizer.lr": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
                        "method.temperature": {"type": "float", "low": 0.05, "high": 1.0}},
              "sampler": "tpe", "pruner": "median", "n_trials": 8, "n_startup_trials": 2, "n_warmup_steps": 1}
    path = write_suite(tmp_path / "hp.yaml", "hp", defaults=defaults, matrix={}, ablations={"simclr.projector": ["16-8"]},
                       seeds=[0], search=search)
    assert main(["search", str(path), "--workers", "1"]) == 0
    trials = study_of("hp").get_trials()
    states = [t.state for t in trials]
    assert len(trials) == 8 and TrialState.PRUNED in states and TrialState.COMPLETE in states
    assert all(set(t.params) == {"optimizer.lr", "method.temperature"} for t in trials)
    for t in trials:
        config = t.user_attrs["config"]
        assert config["optimizer"]["lr"] == pytest.approx(t.params["optimizer.lr"])
        assert config["method"]["temperature"] == pytest.approx(t.params["method.temperature"])
    runs = child_runs("hp")
    assert (runs["status"] == "KILLED").sum() == states.count(TrialState.PRUNED)
    assert (runs["status"] == "FINISHED").sum() == states.count(TrialState.COMPLETE)
    # the objective and the pruner read the validation split: recorded on the study, every trial and every run
    val = {"metric": "val.knn20.top1", "split": "val"}
    assert study_of("hp").user_attrs[OBJECTIVE_ATTR] == val and all(t.user_attrs[OBJECTIVE_ATTR] == val for t in trials)
    assert (runs["tags.ssl_bench.objective"] == "val.knn20.top1").all() and (runs["tags.ssl_bench.objective_split"] == "val").all()
    by_run = runs.set_index("run_id")
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value == by_run.loc[t.user_attrs["mlflow_run_id"], "metrics.val.knn20.top1"]
        monitor = tracking_client().get_metric_history(t.user_attrs["mlflow_run_id"], MONITOR)
        assert t.intermediate_values == {m.step: m.value for m in monitor} and t.intermediate_values


def test_a_cell_shared_by_two_suites_is_trained_once(results, tmp_path):
    first = write_suite(tmp_path / "a.yaml", "suite_a", matrix={"method": ["simclr"]}, seeds=[0])
    second = write_suite(tmp_path / "b.yaml", "suite_b", matrix={"method": ["simclr", "vicreg"]}, seeds=[0])
    assert main(["run", str(first), "--workers", "1"]) == 0
    shared = expand_suite(load_suite(first))[0].id
    model = results / "cells" / shared / "model.pt"
    stamp = model.stat().st_mtime_ns
    assert main(["run", str(second), "--workers", "1"]) == 0
    assert model.stat().st_mtime_ns == stamp
    assert complete_per_cell(study_of("suite_b")) == {c.id: 1 for c in expand_suite(load_suite(second))}
    a, b = child_runs("suite_a"), child_runs("suite_b")
    same = b[b["tags.ssl_bench.cell_id"] == shared]
    assert float(same["metrics.knn20.top1"].iloc[0]) == float(a["metrics.knn20.top1"].iloc[0])


def test_worker_runs_cells_in_process(results, tmp_path):
    path = write_suite(tmp_path / "w.yaml", "inproc", matrix={"method": ["vicreg"]}, seeds=[3])
    assert main(["run", str(path), "--launcher", "print"]) == 0
    summary = work(default_storage_url(), "inproc")
    assert summary.complete == [expand_suite(load_suite(path))[0].id] and not summary.failed


def test_a_deterministic_cell_leaves_no_setting_behind_in_its_worker(results, tmp_path):
    """One worker process runs a deterministic cell, then a fast one: the second runs under torch's defaults."""
    before = TorchSettings.current()
    path = write_suite(tmp_path / "d.yaml", "scoped", matrix={"method": ["vicreg"], "train.deterministic": [True, False]},
                       seeds=[0], launcher={"workers": 1})
    assert main(["run", str(path), "--launcher", "print"]) == 0
    summary = work(default_storage_url(), "scoped", max_cells=1)
    first = json.loads((results / "cells" / summary.complete[0] / "metrics.json").read_text())
    assert first["config"]["train"]["deterministic"] and first["torch"]["deterministic"]
    assert not first["torch"]["cudnn_benchmark"]
    assert not torch.are_deterministic_algorithms_enabled()  # restored between the cells
    summary = work(default_storage_url(), "scoped")
    second = json.loads((results / "cells" / summary.complete[0] / "metrics.json").read_text())
    assert not second["config"]["train"]["deterministic"]
    assert not second["torch"]["deterministic"] and second["torch"]["cudnn_benchmark"] and second["torch"]["matmul_tf32"]
    assert TorchSettings.current() == before


def test_worker_logs_to_the_mlflow_uri_it_is_given(results, tmp_path):
    """A worker that reaches the tracking store at another address than ``run`` did (here: the store moved)."""
    (tmp_path / "here").mkdir()
    path = write_suite(tmp_path / "m.yaml", "moved", matrix={"method": ["vicreg"]}, seeds=[4],
                       tracking={"mlflow_uri": f"sqlite:///{tmp_path / 'here' / 'mlflow.db'}"})
    assert main(["run", str(path), "--launcher", "print"]) == 0
    (tmp_path / "here").rename(tmp_path / "there")
    moved = f"sqlite:///{tmp_path / 'there' / 'mlflow.db'}"
    assert main(["worker", "--storage", default_storage_url(), "--study", "moved", "--mlflow-uri", moved]) == 0
    runs = SuiteTracker(moved, "moved").cell_runs()
    assert list(runs["status"]) == ["FINISHED"] and not (tmp_path / "here" / "mlflow.db").exists()


def test_slurm_launcher_through_submitits_local_executor(results, tmp_path):
    path = write_suite(tmp_path / "slurm.yaml", "slurm", seeds=[0])
    suite = load_suite(path)
    cells = expand_suite(suite)
    prepare(suite, cells, default_storage_url())
    jobs = launch_slurm(default_storage_url(), "slurm", suite.launcher.slurm, 2, cluster="local")
    done = [job.result() for job in jobs]
    assert sorted(c for d in done for c in d["complete"]) == sorted(c.id for c in cells)
    assert complete_per_cell(study_of("slurm")) == {c.id: 1 for c in cells}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    try:
        with postgres_url(tmp_path_factory.mktemp("pg")) as url:
            yield url
    except PostgresUnavailable as err:
        pytest.skip(f"no PostgreSQL server could be started here: {err.reason}")


def test_two_workers_share_a_postgresql_queue(results, tmp_path, postgres):
    name = f"pg_{os.getpid()}_{time.time_ns()}"
    path = write_suite(tmp_path / "pg.yaml", name, matrix={"method": ["simclr"]}, seeds=list(range(20)),
                       defaults=TINY["defaults"] | {"epochs": 1, "dataset": {"name": "shapes", "n_train": 64, "n_test": 32},
                                                    "batch_size": 32},
                       evaluations={"probes": [], "knn_k": [5], "diagnostics": False})
    assert main(["run", str(path), "--storage", postgres, "--workers", "2"]) == 0
    study = optuna.load_study(study_name=name, storage=postgres)
    cells = expand_suite(load_suite(path))
    assert len(cells) == 20
    assert complete_per_cell(study) == {c.id: 1 for c in cells}
    assert len(study.get_trials()) == 20
    logs = [p.read_text() for p in (results / "logs" / name).glob("worker-*.log")]
    assert len(logs) == 2 and all("started" in log for log in logs), "both workers took cells"
    # a bare postgresql:// URL (psycopg 3 under SQLAlchemy 2.1, not installed here) reaches the same queue
    bare = "postgresql://" + postgres.split("://", 1)[1]
    assert main(["status", str(path), "--storage", bare]) == 0
    assert name in optuna.study.get_all_study_names(open_storage(bare))


@pytest.mark.parametrize("method, expected", [
    ({}, "defaults.dataset.root: {data}/cifar-10-batches-py lacks data_batch_1"),  # the data is not on this machine
    ({"projector": "16-abc"}, "defaults.method.projector: Value error, not a head spec"),  # a study of an older ssl-bench
    ({"temperature": float("inf")}, "defaults.method.temperature: Input should be a finite number"),
])
def test_worker_refuses_the_stored_suite_before_claiming_a_cell(method, expected, tmp_path, monkeypatch, capsys):
    """``run`` validated the suite on its machine; a worker checks it again on its own, claiming nothing when it fails."""
    data = tmp_path / "data" / CIFAR10_FILES.folder
    data.mkdir(parents=True)
    for name in (*CIFAR10_FILES.train, CIFAR10_FILES.test, CIFAR10_FILES.meta):
        (data / name).touch()
    dataset = {"name": "cifar10", "root": str(data.parent)}
    path = write_suite(tmp_path / "w.yaml", "w", matrix={}, ablations={}, defaults=TINY["defaults"] | {"method": "simclr", "dataset": dataset})
    suite = load_suite(path)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = {"uri": "sqlite:///unused.db", "experiment": "w", "parent_run_id": "-"}
    study = create_study(suite, suite_storage(suite, url), tracking, sets=(), now=datetime.now(timezone.utc))
    enqueue_cells(study, expand_suite(suite))
    if method:  # the study holds a suite that this version refuses
        stored = yaml.safe_load(suite.to_yaml())
        stored["defaults"]["method"] = {"name": "simclr", **method}
        study.set_user_attr(SUITE_ATTR, yaml.safe_dump(stored))
    else:  # the files were on the machine that ran the suite, not on this one
        (data / "data_batch_1").unlink()
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    monkeypatch.chdir(work_dir)
    assert main(["worker", "--storage", url, "--study", "w"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: the suite of study 'w': invalid suite") and expected.format(data=data.parent) in err
    assert {t.state for t in study.get_trials()} == {TrialState.WAITING} and not any(work_dir.iterdir())


def test_baselines_run_as_cells_of_the_suite_and_are_rows_of_its_table(results, tmp_path, capsys):
    """random init (the seed's initialisation, 0 epochs) and raw pixels (no model at all) run through the same worker,
    are logged with the tags the reports read, and are the rows "random init" and "raw pixels" of the table."""
    path = write_suite(tmp_path / "b.yaml", "with_baselines", matrix={"method": ["simclr"]}, seeds=[0],
                       defaults={**TINY["defaults"], "epochs": 1},
                       evaluations={"probes": [{"name": "linear", "epochs": 2}], "knn_k": [20]},
                       baselines=["random_init", "raw_pixels"])
    cells = expand_suite(load_suite(path))
    assert [c.axes["method"] for c in cells] == ["simclr", "random_init", "raw_pixels"]
    assert main(["run", str(path), "--launcher", "print"]) == 0
    summary = work(default_storage_url(), "with_baselines")
    assert sorted(summary.complete) == sorted(c.id for c in cells) and not summary.failed
    runs = child_runs("with_baselines").set_index("tags.ssl_bench.method")
    assert sorted(runs.index) == ["random_init", "raw_pixels", "simclr"]
    for method in runs.index:  # every evaluation of the suite, on val and test, and the cost, like an SSL cell
        for metric in ["knn20.top1", "val.knn20.top1", "linear.top1", "val.linear.top1", "cost.gpu_hours", "cost.wall.total"]:
            assert 0 <= runs.loc[method, f"metrics.{metric}"] < 1e6, (method, metric)
    assert runs.loc["random_init", "params.epochs"] == "0" and runs.loc["random_init", "metrics.cost.image_epochs"] == 0
    assert "metrics.train.loss" not in runs or runs["metrics.train.loss"].isna()[["random_init", "raw_pixels"]].all()
    cell_dir = {c.axes["method"]: results / "cells" / c.id for c in cells}
    assert (cell_dir["random_init"] / "model.pt").exists() and not (cell_dir["raw_pixels"] / "model.pt").exists()
    assert runs.loc["simclr", "metrics.knn20.top1"] != runs.loc["random_init", "metrics.knn20.top1"]
    capsys.readouterr()
    assert main(["table", str(path), "--metric", "knn20.top1"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert list(rows)[2:] == ["simclr", "random init", "raw pixels"]  # after the header and its rule: baselines last
    for method, label in [("simclr", "simclr"), ("random_init", "random init"), ("raw_pixels", "raw pixels")]:
        assert f"{100 * runs.loc[method, 'metrics.knn20.top1']:.1f}" in rows[label]
