"""A cell's cost: stage clocks on a controlled time source (exact arithmetic), and a real tiny cell's ``cost.*``
metrics, resumed from its checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.config import apply_overrides, resolve_run_config
from bench.config.search import SearchConfig
from bench.core import cost
from bench.core.cost import cell_clock, cost_metrics, stage, timed
from bench.orchestrate.search import objective_value
from bench.runner import METRICS, run
from bench.train.checkpoint import load_checkpoint

CPU = torch.device("cpu")
TINY = ["method=simclr", "method.projector=16-8", "dataset=shapes", "dataset.n_train=128", "dataset.n_test=32",
        "backbone.width=4", "batch_size=32", "epochs=1", "train.progress=false", "train.threads=1", "eval.probes=[]",
        "eval.knn_k=[5]"]


class Ticks:
    """A perf_counter that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def ticks(monkeypatch) -> Ticks:
    clock = Ticks()
    monkeypatch.setattr(cost.time, "perf_counter", clock)
    return clock


def test_stages_carve_absorb_and_add_up_to_the_total(ticks):
    @timed("extract")
    def extract(seconds: float) -> str:
        ticks.advance(seconds)
        return "features"

    with cell_clock(CPU) as clock:
        ticks.advance(1)  # in no stage: other
        with stage("train"):
            ticks.advance(10)
            with stage("monitor", carve=True):
                ticks.advance(2)
                assert extract(1) == "features"  # inside the monitor: monitor time
            ticks.advance(5)
            with stage("checkpoint", carve=True):
                ticks.advance(1)
                mid = clock.snapshot()
        assert extract(4) == "features"
        metrics = cost_metrics(clock, gpus=2, image_epochs=640)
    assert mid["seconds"] == {"train": 15.0, "monitor": 3.0, "checkpoint": 1.0} and mid["total"] == 20.0
    walls = {k.removeprefix("cost.wall."): v for k, v in metrics.items() if k.startswith("cost.wall.")}
    assert walls == {"train": 15.0, "monitor": 3.0, "checkpoint": 1.0, "extract": 4.0, "other": 1.0, "total": 24.0}
    assert sum(v for k, v in walls.items() if k != "total") == walls["total"]
    assert metrics["cost.gpus"] == 2 and metrics["cost.gpu_seconds"] == 48.0 and metrics["cost.gpu_hours"] == 48.0 / 3600
    assert metrics["cost.image_epochs"] == 640 and all(metrics[f"cost.peak_mem_gb.{s}"] > 0 for s in walls if s not in ("other", "total"))


def test_a_resumed_clock_adds_the_checkpointed_attempt(ticks):
    earlier = {"seconds": {"load": 2.0, "train": 30.0}, "total": 40.0, "peak_bytes": {"train": 5 * 10**9}}
    with cell_clock(CPU) as clock:
        clock.resume(earlier)
        with stage("train"):
            ticks.advance(6)
        ticks.advance(1)
        metrics = cost_metrics(clock, gpus=1, image_epochs=10)
    assert metrics["cost.wall.train"] == 36.0 and metrics["cost.wall.load"] == 2.0 and metrics["cost.wall.total"] == 47.0
    assert metrics["cost.wall.other"] == 9.0 and metrics["cost.peak_mem_gb.train"] >= 5.0


def test_stages_outside_a_cell_do_nothing():
    assert timed("knn")(lambda x: x + 1)(1) == 2
    with stage("train"):
        pass
    assert cost.active_clock() is None


def test_a_cell_reports_its_cost_and_a_resumed_cell_adds_the_checkpointed_seconds(tmp_path):
    cfg = resolve_run_config(apply_overrides({}, TINY + ["train.knn_every=1"]))
    first = run(cfg, tmp_path).metrics
    stages = {"load", "fingerprint", "train", "monitor", "checkpoint", "extract", "knn", "diagnostics"}
    assert {k.removeprefix("cost.wall.") for k in first if k.startswith("cost.wall.")} == stages | {"other", "total"}
    assert math.isclose(sum(first[f"cost.wall.{s}"] for s in stages | {"other"}), first["cost.wall.total"])
    assert first["cost.image_epochs"] == 128 and first["cost.gpus"] == 1 and first["cost.peak_mem_gb.train"] > 0
    assert first["cost.gpu_hours"] == first["cost.wall.total"] / 3600
    assert first["val.rankme"] == json.loads((tmp_path / METRICS).read_text())["history"][-1]["val/rankme"] > 1
    label_free = SearchConfig.model_validate({"space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1}},
                                              "metric": "val.rankme"})
    assert objective_value(first, label_free) == first["val.rankme"]  # a search objective that reads no label
    kept = load_checkpoint(tmp_path)["cost"]  # written at the last epoch, inside the train stage
    (tmp_path / METRICS).unlink()
    again = run(cfg, tmp_path).metrics  # resumes at the end of training: evaluates again
    assert again["cost.wall.train"] >= kept["seconds"]["train"] > 0
    assert again["cost.wall.load"] >= kept["seconds"]["load"] and again["cost.wall.total"] > kept["total"]
    assert again["cost.wall.extract"] < again["cost.wall.total"] - kept["total"]  # only this attempt's evaluation
