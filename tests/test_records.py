"""Typed epoch records and run reports (bench/train/records.py): a real tiny run's report reads back equal from
``metrics.json``, the checkpoint and the model file keep the flat plain history, and an epoch record's MLflow metric
names are the ones every earlier version logged."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bench.config import apply_overrides, resolve_run_config
from bench.orchestrate.worker import finished_report
from bench.runner import METRICS, run
from bench.tracking.mlflow_runs import epoch_metric_name
from bench.train.checkpoint import CHECKPOINT
from bench.train.engine import MODEL
from bench.train.records import EpochRecord, Monitor, RunReport

TINY = ["method=simclr", "method.projector=16-8", "dataset=shapes", "dataset.n_train=64", "dataset.n_test=32",
        "backbone.width=4", "batch_size=32", "epochs=2", "train.knn_every=2", "train.progress=false",
        "train.threads=1", "eval.probes=[]", "eval.knn_k=[5]"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = resolve_run_config(apply_overrides({}, TINY))
    run_dir = tmp_path_factory.mktemp("records")
    return cfg, run_dir, run(cfg, run_dir)


def test_a_run_report_reads_back_equal_from_metrics_json(tiny_run):
    cfg, run_dir, report = tiny_run
    text = (run_dir / METRICS).read_text()
    assert RunReport.model_validate_json(text) == report and finished_report(run_dir, cfg) == report
    stored = json.loads(text)
    assert list(stored) == ["status", "config_id", "metrics", "selection", "test_reads", "splits", "history",
                            "resumed_from_epoch", "torch", "fingerprint", "cost", "config"]
    assert stored["status"] == "complete" and stored["splits"] == report.splits.model_dump()
    assert (report.splits.pretrain, report.splits.train + report.splits.val, report.splits.test) == (64, 64, 32)
    flat = [record.as_dict() for record in report.history]
    assert stored["history"] == flat and [list(r) for r in flat] == [
        ["epoch", "loss", "lr", "images_per_s", "positive_cos"],  # SimCLR's logged term
        ["epoch", "loss", "lr", "images_per_s", "positive_cos", "val/knn20.top1", "val/rankme"]]  # and the monitor's
    assert report.metrics["val.rankme"] == report.history[-1].monitor.rankme == stored["history"][-1]["val/rankme"]
    for path in (CHECKPOINT, MODEL):  # plain containers, as torch.load(weights_only=True) reads them
        assert torch.load(run_dir / path, weights_only=True)["history"] == flat


def test_a_resumed_run_reads_its_checkpointed_history(tiny_run, tmp_path):
    cfg, done, report = tiny_run
    run_dir = shutil.copytree(done, tmp_path / "run")
    old = dict(json.loads((run_dir / METRICS).read_text()))
    del old["cost"]  # a report of an older version is no finished report: the cell is evaluated again
    (run_dir / METRICS).write_text(json.dumps(old))
    assert finished_report(run_dir, cfg) is None
    again = run(cfg, run_dir)  # resumes at the end of training: the history comes from the checkpoint
    assert again.resumed_from_epoch == 2 and again.history == report.history


def test_an_epoch_record_keeps_its_flat_fields_and_mlflow_names():
    plain = {"epoch": 3, "loss": 1.5, "lr": 0.1, "images_per_s": 900.0, "align": 0.25, "uniform": -2.0,
             "val/knn20.top1": 0.5, "val/rankme": 7.0}  # a history record as every earlier version stored it
    record = EpochRecord.from_dict(plain)
    assert record == EpochRecord(epoch=3, loss=1.5, lr=0.1, images_per_s=900.0, logs={"align": 0.25, "uniform": -2.0},
                                 monitor=Monitor(knn20_top1=0.5, rankme=7.0))
    assert record.as_dict() == plain and list(record.as_dict()) == list(plain)
    assert [epoch_metric_name(name) for name in record.metrics()] == [
        "train/loss", "train/lr", "train/images_per_s", "train/align", "train/uniform", "val/knn20.top1", "val/rankme"]
    bare = {"epoch": 1, "loss": 2.0, "lr": 0.2, "images_per_s": 10.0}
    assert EpochRecord.from_dict(bare).monitor is None and EpochRecord.from_dict(bare).as_dict() == bare
