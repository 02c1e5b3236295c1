"""Every registered method runs through the real engine and evaluation: one short epoch on shapes."""

import math

import pytest

from bench.config import apply_overrides, resolve_run_config
from bench.data.registry import DatasetConfig, load_dataset
from bench.methods import all_methods
from bench.runner import run

TINY_HEADS = {
    "barlow_twins": ["method.projector=16-16"],
    "byol": ["method.projector=16-8", "method.predictor=16-8"],
    "corinfomax": ["method.projector=16-16-8"],
    "dae": ["method.projector=16-16-16"],
    "dino": ["method.projector=16-16-8", "method.out_dim=32"],
    "mocov2": ["method.projector=16-8", "method.queue_size=64"],
    "mocov3": ["method.projector=16-16-8", "method.predictor=16-8"],
    "mveb": ["method.projector=16-16-16"],
    "mvmr": ["method.projector=16-16", "method.representations=[raw, lsd, augmented, hog]"],
    "sidae": ["method.projector=16-16-16", "method.predictor=8-16"],
    "simclr": ["method.projector=16-8"],
    "simsiam": ["method.projector=16-16", "method.predictor=8-16"],
    "supervised": [],
    "swav": ["method.projector=16-8", "method.num_prototypes=10", "method.freeze_prototypes_steps=0"],
    "vicreg": ["method.projector=16-16"],
    "wmse": ["method.projector=16-4", "method.w_size=8"],
}
COMMON = ["dataset=shapes", "dataset.n_train=128", "dataset.n_test=40", "backbone.width=4", "batch_size=32", "epochs=2",
          "optimizer.lr_scaling=none", "train.progress=false", "train.knn_every=1", "eval.linear.epochs=2"]


def test_every_registered_method_has_smoke_settings():
    assert set(TINY_HEADS) == set(all_methods())


@pytest.fixture(scope="module")
def splits():
    return load_dataset(DatasetConfig(name="shapes", n_train=128, n_test=40))


@pytest.mark.parametrize("method", sorted(TINY_HEADS))
def test_method_trains_and_evaluates(method, splits, tmp_path):
    cache = f"train.cache_dir={tmp_path / 'cache'}"
    cfg = resolve_run_config(apply_overrides({}, [f"method={method}", *TINY_HEADS[method], *COMMON, cache]))
    report = run(cfg, tmp_path, splits=splits)
    assert report["status"] == "complete"
    assert all(math.isfinite(h["loss"]) for h in report["history"])
    assert 0 <= report["metrics"]["knn20.top1"] <= 1 and 0 <= report["history"][-1]["knn_top1"] <= 1
    assert (tmp_path / "model.pt").exists()
