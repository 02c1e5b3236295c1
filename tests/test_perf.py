"""`ssl-bench perf` pieces run and report consistent figures (speed itself is not asserted here)."""

import torch

from bench.data.registry import DatasetConfig, load_dataset
from bench.perf import bench_augmentation, bench_eval


def test_augmentation_benchmark_reports_both_pipelines():
    data = load_dataset(DatasetConfig(name="shapes", n_train=256, n_test=10)).pretrain
    out = bench_augmentation(data, torch.device("cpu"), batch_size=64, n_images=128)
    assert out["aug.ours_images_per_s"] > 0 and out["aug.classic_images_per_s"] > 0
    assert out["aug.speedup"] == out["aug.ours_images_per_s"] / out["aug.classic_images_per_s"]


def test_augmentation_benchmark_handles_grayscale_images():
    data = load_dataset(DatasetConfig(name="digits")).pretrain
    out = bench_augmentation(data, torch.device("cpu"), batch_size=64, n_images=128)
    assert out["aug.classic_images_per_s"] > 0


def test_eval_benchmark_classifies_separable_features():
    out = bench_eval(torch.device("cpu"), n_train=2000, n_test=500, dim=64, classes=10)
    assert out["eval.knn20_top1"] > 0.9 and out["eval.linear_top1"] > 0.9
    assert out["eval.knn_seconds"] > 0 and out["eval.linear_seconds"] > 0


def test_mvmr_cache_benchmark_runs_both_modes(tmp_path):
    from bench.perf import bench_mvmr_cache

    out = bench_mvmr_cache(torch.device("cpu"), tmp_path, quick=True)
    assert out["mvmr.cached_images_per_s"] > 0 and out["mvmr.recomputed_images_per_s"] > 0
    assert list((tmp_path / "cache").glob("*.npy"))  # the cached mode wrote its representations
