"""A suite with a ``detection`` evaluation: dependent detection cells run after their sources, with 2 workers."""

from __future__ import annotations

import importlib.util

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from suite_fixtures import DEFAULTS

from bench.cli import main
from bench.suite.suite import expand_suite, load_suite, stage_cells
from bench.core.states import FailureKind
from bench.train.records import ReportCost
from bench.transfer.stage import REPORT, StageReport
from bench.orchestrate.queue import (CELL_ATTR, DEPENDS_ATTR, KIND_ATTR, Failure, claim_waiting, default_storage_url,
                                    open_storage)

DETECTION = {
    "backend": "torchvision",
    "synthetic": {"n_train": 8, "n_val": 4, "image_size": 64},
    "detector": {"detector": "faster_rcnn", "iterations": 3, "batch_size": 2, "warmup_iterations": 1, "min_sizes": [64],
                 "max_size": 64, "test_size": 64, "anchor_sizes": [8, 16, 32, 64, 128], "fpn_channels": 16,
                 "proposals": 50, "rpn_batch_size": 32, "roi_batch_size": 32, "progress": False},
}


@pytest.fixture
def suite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    suite = {
        "name": "det",
        "defaults": {**DEFAULTS, "method": {"name": "simclr", "projector": "32-16"}, "backbone": {"name": "resnet18"},
                     "epochs": 1, "dataset": {"name": "shapes", "n_train": 128, "n_test": 32}, "train": {"progress": False}},
        "evaluations": {"probes": [], "knn_k": [5], "detection": DETECTION},
        "seeds": [0, 1],
        "storage": {"heartbeat_interval": 1, "grace_period": 3},
    }
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_detection_cells_depend_on_their_pretraining_cells(suite_file, tmp_path, capsys):
    suite = load_suite(suite_file)
    sources = expand_suite(suite)
    stages = stage_cells(suite, sources)
    assert [s.depends_on for s in stages] == [c.id for c in sources]
    assert len({s.id for s in stages} | {c.id for c in sources}) == 4

    assert main(["run", str(suite_file), "--workers", "2"]) == 0
    trials = optuna.load_study(study_name="det", storage=default_storage_url()).get_trials()
    assert sorted(t.state for t in trials) == [TrialState.COMPLETE] * 4
    by_cell = {t.user_attrs[CELL_ATTR]: t for t in trials}
    for stage in stages:
        detection, source = by_cell[stage.id], by_cell[stage.depends_on]
        assert detection.user_attrs[DEPENDS_ATTR] == source.user_attrs[CELL_ATTR]
        assert detection.datetime_start >= source.datetime_complete, "a detection cell started before its source finished"
        assert detection.user_attrs["mlflow_run_id"] == source.user_attrs["mlflow_run_id"]
    mlflow.set_tracking_uri(default_storage_url().replace("optuna.db", "mlflow.db"))
    runs = mlflow.search_runs(experiment_names=["det"])
    cells = runs[runs["tags.ssl_bench.role"] == "cell"]
    assert len(cells) == 2 and cells["metrics.detection.bbox.AP50"].between(0, 1).all()
    assert (cells["metrics.detection.cost.wall.train"] > 0).all()  # the detection cell's cost, beside the source's
    for stage in stages:  # each detection cell's report: its metrics and what its cost measured
        report = StageReport.model_validate_json((tmp_path / "results" / "cells" / stage.id / REPORT).read_text())
        assert report.metrics["detection.cost.wall.total"] >= report.metrics["detection.cost.wall.train"] > 0
        assert report.cost == ReportCost(device="cpu", gpus=1, memory="peak resident set size")
        assert report.source is not None and report.source.endswith(f"{stage.depends_on}/model.pt")
    assert cells["metrics.knn5.top1"].between(0, 1).all()
    capsys.readouterr()
    assert main(["status", str(suite_file)]) == 0
    assert "4 complete" in capsys.readouterr().out


def test_a_diverged_source_and_a_diverged_detection_fail_with_their_kinds(suite_file):
    """Two sources, one diverging: its detection cell fails as ``source cell``; the other source's detection cell,
    at an absurd detector lr, fails as ``diverged`` (a typed kind, not a config mistake)."""
    data = yaml.safe_load(suite_file.read_text())
    data["seeds"] = [0]
    data["ablations"] = {"simclr.optimizer.lr": [1.0e-3, 1.0e30]}
    data["evaluations"]["detection"]["detector"]["lr"] = 1.0e30
    suite_file.write_text(yaml.safe_dump(data))
    assert main(["run", str(suite_file), "--workers", "1"]) == 5
    trials = optuna.load_study(study_name="det", storage=default_storage_url()).get_trials()
    failed = sorted((t.user_attrs[KIND_ATTR], t.user_attrs["fail_reason"]) for t in trials if t.state == TrialState.FAIL)
    assert [kind for kind, _ in failed] == [FailureKind.DIVERGED, FailureKind.DIVERGED, FailureKind.SOURCE]
    assert sum("detection fine-tuning diverged" in reason and "detector.lr" in reason for _, reason in failed) == 1
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 1


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None, reason="detectron2 is not installed (.ci/run installs it "
                    "from ../shared/vendor/detectron2-8a9d885.tar.gz where that archive is)")
def test_a_detectron2_detection_cell_adds_finite_metrics_to_its_source_run(suite_file):
    """The detectron2 backend in a suite: a ResNet-50 pre-training cell, then its dependent R50-FPN detection cell
    (2 CPU iterations at the synthetic images' own size) whose COCO metrics join the source's MLflow run."""
    data = yaml.safe_load(suite_file.read_text())
    data["seeds"] = [0]
    data["defaults"].update({"backbone": {"name": "resnet50"}, "batch_size": 32, "dataset": {"name": "shapes", "n_train": 64, "n_test": 32}})
    data["evaluations"]["detection"] = {
        "backend": "detectron2", "synthetic": {"n_train": 4, "n_val": 2},
        "detectron2": {"protocol": "coco_r50_fpn_1x", "ims_per_batch": 2, "iterations": 2, "roi_batch_size": 16, "detections": 10,
                       "precise_bn_iterations": 1, "num_workers": 0, "device": "cpu"}}
    suite_file.write_text(yaml.safe_dump(data))
    assert main(["run", str(suite_file), "--workers", "1"]) == 0
    trials = optuna.load_study(study_name="det", storage=default_storage_url()).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    mlflow.set_tracking_uri(default_storage_url().replace("optuna.db", "mlflow.db"))
    [cell] = mlflow.search_runs(experiment_names=["det"], filter_string="tags.`ssl_bench.role` = 'cell'").to_dict("records")
    detection = {k: v for k, v in cell.items() if k.startswith(("metrics.detection.bbox.", "metrics.detection.segm."))}
    assert {"metrics.detection.bbox.AP50", "metrics.detection.segm.AP50"} <= detection.keys()
    assert all(0.0 <= v <= 1.0 for v in detection.values()), detection  # finite, none NaN


@pytest.mark.parametrize("failure,retries,waits", [
    (Failure(FailureKind.PREEMPTED, "SIGTERM at epoch 1"), 2, True),  # about to be re-enqueued: the dependent waits
    (None, 2, True),  # a dead worker's trial, failed by the heartbeat check
    (Failure(FailureKind.PREEMPTED, "SIGTERM at epoch 1"), 0, False),  # no retries: failed for good
    (Failure(FailureKind.DIVERGED, "diverged at epoch 1 step 2"), 2, False),  # not a retried reason
])
def test_a_dependent_waits_while_its_failed_source_is_about_to_be_retried(tmp_path, failure, retries, waits):
    storage = open_storage(f"sqlite:///{tmp_path / 'q.db'}", heartbeat_interval=60, grace_period=120, retries=retries)
    study = optuna.create_study(study_name="dep", storage=storage)
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={CELL_ATTR: "src", **(failure.record() if failure else {})}))
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, user_attrs={CELL_ATTR: "det", DEPENDS_ATTR: "src"}))
    assert claim_waiting(study, storage, retries) is None
    assert study.get_trials()[1].state == (TrialState.WAITING if waits else TrialState.FAIL)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from bench.transfer.synthetic import generate_coco_shapes

    return generate_coco_shapes(tmp_path_factory.mktemp("coco"), n_train=4, n_val=2)


def test_transfer_refuses_a_missing_annotation_file(tmp_path, capsys):
    assert main(["transfer", "none", "--set", f"coco.root={tmp_path}", "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and "instances_train2017.json" in err


def test_transfer_refuses_a_category_mismatch(synthetic_root, tmp_path, capsys):
    coco = f"coco={{root: {synthetic_root}, train_split: train, val_split: val, classes: [cat, dog]}}"
    assert main(["transfer", "none", "--set", coco, "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and "cat" in err and "dog" in err


def test_transfer_refuses_a_checkpoint_of_the_wrong_architecture(synthetic_root, tmp_path, capsys):
    from bench.config import apply_overrides, resolve_run_config
    from bench.runner import run

    cfg = resolve_run_config(apply_overrides({**DEFAULTS, "epochs": 1}, ["method=vicreg", "method.projector=16-16",
                                                                         "dataset.n_train=64", "eval.probes=[]"]))
    run(cfg, tmp_path / "small_cnn")
    coco = f"coco={{root: {synthetic_root}, train_split: train, val_split: val}}"
    assert main(["transfer", str(tmp_path / "small_cnn"), "--set", coco, "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and "small_cnn" in err
