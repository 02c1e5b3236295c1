"""The bundled datasets: deterministic, balanced, and hard for raw pixels."""

import torch

from bench.data.registry import DatasetConfig, load_dataset
from bench.data.shapes import CLASSES, generate
from bench.eval.knn import knn_eval
from bench.eval.protocols import pixel_features


def test_shapes_is_a_pure_function_of_size_and_seed():
    a, la = generate(300, seed=3)
    b, lb = generate(300, seed=3)
    c, _ = generate(300, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    assert a.dtype == torch.uint8 and a.shape == (300, 3, 32, 32)


def test_shapes_splits_are_balanced_and_disjoint():
    splits = load_dataset(DatasetConfig(name="shapes", n_train=500, n_test=200))
    assert splits.train.num_classes == len(CLASSES) == 10
    assert torch.bincount(splits.train.labels, minlength=10).tolist() == [45] * 10  # 5 per class held out for val
    assert torch.bincount(splits.val.labels, minlength=10).tolist() == [5] * 10
    assert len(splits.test) == 200
    flat_train = {bytes(img.numpy()) for img in splits.train.images}
    assert not any(bytes(img.numpy()) in flat_train for img in splits.test.images)


def test_raw_pixels_classify_shapes_poorly():
    splits = load_dataset(DatasetConfig(name="shapes", n_train=2000, n_test=500))
    train_f, train_y = pixel_features(splits.train, torch.device("cpu"))
    test_f, test_y = pixel_features(splits.test, torch.device("cpu"))
    acc = knn_eval(train_f, train_y, test_f, test_y, 10, ks=(20,))["knn20.top1"]
    assert 0.1 < acc < 0.4  # above chance (colour and size leak a little), far from solved


def test_digits_is_upsampled_single_channel():
    splits = load_dataset(DatasetConfig(name="digits"))
    assert splits.train.images.shape[1:] == (1, 32, 32)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert splits.train.images.max() > 200  # 0..16 rescaled to the full uint8 range
