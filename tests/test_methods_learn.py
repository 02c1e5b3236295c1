"""Each SSL method, trained briefly on CPU, beats the same backbone at random init by 10 kNN points.

The test-bed is the generated ``shapes`` set (5k train / 1k test, 32 px) with a small CNN (width 16) and
strong colour augmentation (hue 0.5, grayscale 0.5): the defaults of suites/quickstart.yaml. SimCLR,
VICReg and Barlow Twins run with the quickstart's own settings. The non-contrastive BYOL and SimSiam
learn slower in short runs: they get batch 64 (more steps), more epochs and crops of at least half the
image (so that both views keep the shape), SimSiam with its paper optimizer (SGD, momentum 0.9) and
BYOL with a faster EMA (tau_base 0.99). Measured on a 2-core CPU when the budgets were set (kNN k=20,
random init 16.6% for seed 0 and 16.8% for seed 1): SimCLR 48%, VICReg 52%, Barlow Twins 31%,
BYOL 32% (40 epochs, seed 1), SimSiam 30% (24 epochs, seed 0) and 31% (48 epochs, seed 1).
"""

from pathlib import Path

import pytest
import torch
import yaml

from bench.config import apply_overrides, resolve_run_config
from bench.data.registry import load_dataset
from bench.eval.protocols import evaluate_backbone
from bench.quickstart import quickstart_configs
from bench.runner import run
from bench.train.engine import build_method

SUITE = Path(__file__).resolve().parent.parent / "suites" / "quickstart.yaml"
TEST_ONLY = ["train.progress=false", "eval.linear=null"]
MARGIN = 0.10
HALF_CROPS = "augment=[{scale: [0.5, 1.0], jitter: [0.4, 0.4, 0.4, 0.5], gray_p: 0.5}, {scale: [0.5, 1.0], jitter: [0.4, 0.4, 0.4, 0.5], gray_p: 0.5}]"
SLOW_LEARNERS = {
    "byol": ["method=byol", "method.projector=512-128", "method.predictor=512-128", "method.tau_base=0.99",
             "batch_size=64", "epochs=40", HALF_CROPS],
    "simsiam": ["method=simsiam", "method.projector=512-512", "method.predictor=128-512", "batch_size=64", "epochs=40",
                "optimizer={name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4, lr_scaling: none}", HALF_CROPS],
}


@pytest.fixture(scope="module")
def configs():
    cfgs = {cfg.method.name: cfg for cfg in quickstart_configs(SUITE, TEST_ONLY)}
    defaults = yaml.safe_load(SUITE.read_text())["defaults"]
    for name, sets in SLOW_LEARNERS.items():
        cfgs[name] = resolve_run_config(apply_overrides(defaults, sets + TEST_ONLY))
    return cfgs


@pytest.fixture(scope="module")
def baseline(configs):
    cfg = configs["simclr"]
    splits = load_dataset(cfg.dataset)
    backbone = build_method(cfg, splits).backbone
    knn = evaluate_backbone(backbone, splits, cfg.eval, torch.device("cpu"), cfg.seed)["knn20.top1"]
    return splits, knn


def test_budgets_share_the_test_bed(configs):
    widths = {cfg.backbone.width for cfg in configs.values()}
    datasets = {(cfg.dataset.name, cfg.dataset.n_train, cfg.dataset.n_test) for cfg in configs.values()}
    assert widths == {16} and datasets == {("shapes", 5000, 1000)}
    assert configs["simsiam"].optimizer.name == "sgd" and configs["byol"].method.tau_base == 0.99


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "vicreg", "barlow_twins", "byol", "simsiam"])
def test_ssl_method_beats_random_init_on_shapes(method, configs, baseline, tmp_path):
    splits, random_knn = baseline
    cfg = configs[method]
    report = run(cfg, tmp_path, splits=splits)
    knn = report["metrics"]["knn20.top1"]
    losses = [h["loss"] for h in report["history"]]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], f"{method}: the loss did not fall ({losses[0]:.3f} -> {losses[-1]:.3f})"
    assert report["metrics"]["diag.collapsed"] == 0.0
    assert knn >= random_knn + MARGIN, f"{method}: kNN {knn:.3f} after {cfg.epochs} epochs vs {random_knn:.3f} at random init"
