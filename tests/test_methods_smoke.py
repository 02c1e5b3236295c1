"""Every registered method runs through the real engine and evaluation: suites/smoke.yaml, one cell each."""

import math
from pathlib import Path

import pytest

from bench.suite.suite import expand_suite, load_suite
from bench.data.registry import DatasetConfig, load_dataset
from bench.methods import all_methods, baseline_methods
from bench.runner import run
from bench.train.engine import MONITOR

SMOKE = Path(__file__).resolve().parent.parent / "suites" / "smoke.yaml"


@pytest.fixture(scope="module")
def cells():
    return {cell.axes["method"]: cell for cell in expand_suite(load_suite(SMOKE))}


def test_smoke_suite_has_one_cell_per_registered_method(cells):
    assert sorted(cells) == sorted([*all_methods(), *baseline_methods()])  # and the suite's two baselines


@pytest.fixture(scope="module")
def splits():
    return load_dataset(DatasetConfig(name="shapes", n_train=128, n_test=40))


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_method_trains_and_evaluates(method, cells, splits, tmp_path):
    cfg = cells[method].config.model_copy(deep=True)
    cfg.train.cache_dir = tmp_path / "cache"
    report = run(cfg, tmp_path, splits=splits)
    assert report["status"] == "complete"
    assert all(math.isfinite(h["loss"]) for h in report["history"])
    assert 0 <= report["metrics"]["knn20.top1"] <= 1 and 0 <= report["history"][-1][MONITOR] <= 1
    assert (tmp_path / "model.pt").exists()
