"""The evaluation protocols of a run on cached features: every choice on val (phase 1), the test split once (phase 2)."""

import pytest
import torch

from bench.eval.config import EvalConfig
from bench.data.base import ImageSet
from bench.data.registry import DatasetSplits
from bench.eval.features import Features
from bench.eval.probes import ProbeInputs
from bench.eval.protocols import evaluate_pixels, score_on_test, select_features

CPU = torch.device("cpu")


def _blobs(n: int, seed: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    centers = torch.randn(10, 16, generator=torch.Generator().manual_seed(0)) * 4
    return Features(centers[y] + torch.randn(n, 16, generator=g), y)


def _inputs(train: Features, val: Features) -> ProbeInputs:
    """Cached features only: no image, no backbone is read by the cached probes."""
    return ProbeInputs(train, val, 10, images=None, backbone=None, device=CPU)


def test_knn_probes_and_label_fractions_from_one_feature_cache():
    train, val, test = _blobs(1000, 1), _blobs(200, 3), _blobs(300, 2)
    cfg = EvalConfig(probes=["logreg", {"name": "linear", "epochs": 20}], label_fractions=[0.01, 0.1])
    selected = select_features(_inputs(train, val), cfg, seed=0)
    metrics = score_on_test(selected, test, cfg)
    for key in ["knn20.top1", "knn200.top1", "knn.top1", "linear.top1", "linear_1pct.top1", "linear_10pct.top1",
                "logreg.top1", "logreg_1pct.top1", "logreg_10pct.top1"]:
        assert metrics[key] > 0.9, key
        assert selected.val_metrics[f"val.{key}"] > 0.9, key
    assert "knn20.top5" in metrics and "linear_10pct.top5" in metrics and "val.logreg.top5" in selected.val_metrics
    assert metrics["knn.top1"] == metrics[f"knn{selected.selection['knn.k']}.top1"]
    assert {"knn.k", "knn.t", "logreg.C", "linear.lr", "linear.wd", "linear_1pct.lr", "logreg_10pct.C"} <= set(selected.selection)
    assert selected.selection["logreg.fit_n"] == 1200 and selected.selection["logreg_10pct.fit_n"] == 100  # refit: train + val
    with pytest.raises(RuntimeError, match="once"):
        score_on_test(selected, test, cfg)


def test_disabled_protocols_are_skipped():
    train, val, test = _blobs(200, 1), _blobs(50, 3), _blobs(50, 2)
    only_knn = EvalConfig(probes=[], label_fractions=[0.1], knn_k=[20, 200])
    selected = select_features(_inputs(train, val), only_knn, seed=0)
    assert set(score_on_test(selected, test, only_knn)) == {"knn20.top1", "knn20.top5", "knn200.top1", "knn200.top5",
                                                             "knn.top1", "knn.top5"}
    one_k = EvalConfig(probes=[], knn_k=[5])  # no choice, so no knn.top1
    assert set(score_on_test(select_features(_inputs(train, val), one_k, seed=0), test, one_k)) == {"knn5.top1", "knn5.top5"}
    none = EvalConfig(knn=False, probes=[])
    selected = select_features(_inputs(train, val), none, seed=0)
    assert score_on_test(selected, test, none) == {} and selected.selection == {}


def _grey(pixels: list[list[int]], labels: list[int]) -> ImageSet:
    """2x2 one-channel images with mean 0.5 and std 0.5: pixel 0 -> -1, 255 -> +1 once normalised."""
    images = torch.tensor(pixels, dtype=torch.uint8).view(-1, 1, 2, 2)
    return ImageSet("grey", images, torch.tensor(labels), ["white", "black"], (0.5,), (0.5,))


def test_raw_pixel_knn_matches_hand_computation():
    """The bank (train + val): white (class 0) and black (class 1). Normalised, a query votes for the one it shares more
    pixels with: (0,0,0,255) -> (-1,-1,-1,1) has cosine 0.5 with black and -0.5 with white. Unnormalised pixels would
    call every query white (black is the zero vector), 1 of 4 right; normalised ones get 3 of 4."""
    bank = _grey([[255] * 4, [0] * 4], [0, 1])
    test = _grey([[0, 0, 0, 255], [255, 255, 255, 0], [255, 0, 0, 0], [255, 255, 0, 255]], [1, 0, 1, 1])
    # nearest by hand: black (right), white (right), black (right), white (wrong)
    splits = DatasetSplits(pretrain=bank, train=bank, val=bank, test=test)
    cfg = EvalConfig(probes=[], knn_k=[1], diagnostics=False)
    evaluation = evaluate_pixels(splits, cfg, CPU, seed=0)
    assert evaluation.metrics["knn1.top1"] == 0.75
    assert evaluation.metrics["val.knn1.top1"] == 1.0 and evaluation.test_reads == 1
    pooled = evaluate_pixels(splits, cfg, CPU, seed=0, size=1)  # each image its mean pixel: -0.5, 0.5, -0.5, 0.5
    assert pooled.metrics["knn1.top1"] == 0.75
