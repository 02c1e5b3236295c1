"""The evaluation protocols of a run, composed on cached features."""

import torch

from bench.config.run import EvalConfig
from bench.eval.linear import LinearConfig
from bench.eval.protocols import evaluate_features


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    centers = torch.randn(10, 16, generator=torch.Generator().manual_seed(0)) * 4
    return centers[y] + torch.randn(n, 16, generator=g), y


def test_knn_linear_and_label_fractions_from_one_feature_cache():
    train_f, train_y = _blobs(1000, 1)
    test_f, test_y = _blobs(300, 2)
    cfg = EvalConfig(linear=LinearConfig(epochs=20), label_fractions=[0.01, 0.1])
    metrics = evaluate_features(train_f, train_y, test_f, test_y, 10, cfg, seed=0)
    for key in ["knn20.top1", "knn200.top1", "linear.top1", "linear_1pct.top1", "linear_10pct.top1"]:
        assert metrics[key] > 0.9, key
    assert "knn20.top5" in metrics and "linear_10pct.top5" in metrics


def test_disabled_protocols_are_skipped():
    train_f, train_y = _blobs(200, 1)
    test_f, test_y = _blobs(50, 2)
    only_knn = evaluate_features(train_f, train_y, test_f, test_y, 10, EvalConfig(linear=None, label_fractions=[0.1]), seed=0)
    assert set(only_knn) == {"knn20.top1", "knn20.top5", "knn200.top1", "knn200.top5"}
    assert evaluate_features(train_f, train_y, test_f, test_y, 10, EvalConfig(knn=False, linear=None), seed=0) == {}
