"""The on-disk loaders read tiny files written here in the exact official formats."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data.folder import FolderSet
from bench.data.loader import iter_batches
from bench.data.registry import DatasetConfig, DatasetSplits, read_dataset
from bench.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def load(name: str, root: Path, **kwargs) -> DatasetSplits:
    """The splits as the files give them (``load_dataset`` then holds out the validation split, tests/test_validation.py)."""
    return read_dataset(DatasetConfig(name=name, root=root, **kwargs))


# ---------------------------------------------------------------- CIFAR


def write_pickle(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def write_cifar10(root: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    """Five 2-image train batches and a 3-image test batch; returns (train data, labels, test data, labels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = RNG.integers(0, 256, (10, 3072), dtype=np.uint8)
    train_labels = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    for i in range(5):
        batch = {b"data": train[2 * i : 2 * i + 2], b"labels": train_labels[2 * i : 2 * i + 2], b"batch_label": b"x"}
        write_pickle(folder / f"data_batch_{i + 1}", batch, protocol)
    test = RNG.integers(0, 256, (3, 3072), dtype=np.uint8)
    test[0, 1024 + 32 * 2 + 5] = 200  # green channel, row 2, column 5 of the first test image
    write_pickle(folder / "test_batch", {b"data": test, b"labels": [0, 7, 8]}, protocol)
    names = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072}, protocol)
    return train, train_labels, test, [0, 7, 8]


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_round_trip_from_parent_or_official_folder(tmp_path: Path, protocol: int) -> None:
    train, train_labels, test, test_labels = write_cifar10(tmp_path, protocol)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        splits = load("cifar10", root)
        assert splits.pretrain is splits.train
        assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape == (10, 3, 32, 32)
        assert torch.equal(splits.train.images, torch.from_numpy(train).view(10, 3, 32, 32))
        assert splits.train.labels.tolist() == train_labels
        assert torch.equal(splits.test.images.flatten(1), torch.from_numpy(test))
        assert splits.test.images[0, 1, 2, 5] == 200
        assert splits.test.labels.tolist() == test_labels
        assert splits.train.classes[3] == "cat" and splits.train.num_classes == 10
        assert splits.train.mean == (0.4914, 0.4822, 0.4465) and splits.train.std == (0.247, 0.243, 0.261)
        assert splits.train.meta["root"] == str(root)


def write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in [("train", 6), ("test", 4)]:
        data = np.full((n, 3072), 0, dtype=np.uint8)
        data[:, :1024] = np.arange(n, dtype=np.uint8)[:, None] * 10  # red channel = 10 * index
        fine = [(7 * i) % 100 for i in range(n)]
        coarse = [(3 * i) % 20 for i in range(n)]
        write_pickle(folder / name, {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse, b"filenames": []})
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    write_pickle(folder / "meta", meta)


def test_cifar100_fine_and_cifar20_coarse_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    fine, coarse = load("cifar100", tmp_path), load("cifar20", tmp_path)
    assert fine.train.labels.tolist() == [0, 7, 14, 21, 28, 35]
    assert fine.test.labels.tolist() == [0, 7, 14, 21]
    assert coarse.train.labels.tolist() == [0, 3, 6, 9, 12, 15]
    assert fine.train.num_classes == 100 and fine.train.classes[35] == "fine35"
    assert coarse.train.num_classes == 20 and coarse.train.classes[15] == "coarse15"
    assert torch.equal(coarse.train.images, fine.train.images)
    assert fine.train.images[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40, 50]
    assert fine.train.images[:, 1:].max() == 0
    assert coarse.train.mean == (0.5071, 0.4865, 0.4409) and coarse.train.std == (0.2673, 0.2564, 0.2762)


def test_cifar_image_size_resizes_all_splits(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    splits = load("cifar100", tmp_path, image_size=16)
    assert splits.train.images.shape == (6, 3, 16, 16) and splits.test.images.shape == (4, 3, 16, 16)
    # Each image is constant per channel, so resizing keeps every value.
    assert splits.train.images[:, 0].amin(dim=(1, 2)).tolist() == [0, 10, 20, 30, 40, 50]
    assert splits.train.images[:, 0].amax(dim=(1, 2)).tolist() == [0, 10, 20, 30, 40, 50]


def test_cifar_missing_root_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*cifar-10-python.tar.gz"):
        load("cifar10", tmp_path / "nowhere")
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"lacks data_batch_3 \(expected files: data_batch_1, .*batches.meta\).*cifar-10-python"):
        load("cifar10", tmp_path)


def test_cifar_damaged_pickles(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    path = folder / "data_batch_2"
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(DataError, match="data_batch_2 is not a readable CIFAR pickle.*truncated"):
        load("cifar10", tmp_path)
    write_pickle(path, {b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"data_batch_2: expected 'data' as a uint8 array \(N, 3072\), found uint8 \(2, 3000\)"):
        load("cifar10", tmp_path)
    write_pickle(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(DataError, match="data_batch_2: expected 2 'labels', found 1"):
        load("cifar10", tmp_path)
    path.write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(DataError, match="data_batch_2 is not a readable CIFAR pickle.*unexpected object os.system"):
        load("cifar10", tmp_path)


def test_unknown_pretrain_split_is_a_config_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    with pytest.raises(ConfigError, match="pretrain_split='unlabeled' is not available for cifar10; choose one of: train"):
        load("cifar10", tmp_path, pretrain_split="unlabeled")


# ---------------------------------------------------------------- STL-10


def write_stl_images(path: Path, images: np.ndarray) -> None:
    """Official layout: each channel of each image stored column-major."""
    path.write_bytes(np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes())


def write_stl10(root: Path, with_unlabeled: bool = True) -> dict[str, np.ndarray]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    arrays = {split: RNG.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for split, n in [("train", 4), ("test", 3), ("unlabeled", 5)]}
    for split in ("train", "test") + ("unlabeled",) * with_unlabeled:
        write_stl_images(folder / f"{split}_X.bin", arrays[split])
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 3, 3]))
    (folder / "test_y.bin").write_bytes(bytes([2, 5, 10]))
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return arrays


def test_stl10_column_major_round_trip(tmp_path: Path) -> None:
    arrays = write_stl10(tmp_path)
    raw = bytearray(27648)
    raw[2 * 96 + 1] = 7  # first channel, stored column 2 then row 1: the pixel at row 1, column 2
    (tmp_path / "stl10_binary" / "test_X.bin").write_bytes(bytes(raw))
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([4]))
    splits = load("stl10", tmp_path / "stl10_binary")
    assert splits.pretrain is splits.train
    assert splits.train.images.shape == (4, 3, 96, 96) and splits.train.images.dtype == torch.uint8
    assert torch.equal(splits.train.images, torch.from_numpy(arrays["train"]))
    assert splits.train.labels.tolist() == [0, 9, 2, 2]
    assert splits.test.images[0, 0, 1, 2] == 7 and int(splits.test.images.sum()) == 7
    assert splits.test.labels.tolist() == [3]
    assert splits.train.classes[7] == "monkey"
    assert splits.train.mean == (0.485, 0.456, 0.406) and splits.train.std == (0.229, 0.224, 0.225)


def test_stl10_unlabeled_pretrain_splits(tmp_path: Path) -> None:
    arrays = write_stl10(tmp_path)
    both = load("stl10", tmp_path, pretrain_split="train+unlabeled")
    assert both.pretrain.labels.tolist() == [0, 9, 2, 2, -1, -1, -1, -1, -1]
    assert torch.equal(both.pretrain.images, torch.from_numpy(np.concatenate([arrays["train"], arrays["unlabeled"]])))
    assert len(both.pretrain.labeled()) == 4 and len(both.train) == 4
    unlabeled = load("stl10", tmp_path, pretrain_split="unlabeled", image_size=32)
    assert unlabeled.pretrain.labels.tolist() == [-1] * 5
    assert unlabeled.pretrain.images.shape == (5, 3, 32, 32) and unlabeled.test.images.shape == (3, 3, 32, 32)


def test_stl10_reads_unlabeled_file_only_when_asked(tmp_path: Path) -> None:
    write_stl10(tmp_path, with_unlabeled=False)
    assert len(load("stl10", tmp_path).pretrain) == 4
    with pytest.raises(DataError, match="lacks unlabeled_X.bin.*stl10_binary.tar.gz"):
        load("stl10", tmp_path, pretrain_split="train+unlabeled")
    with pytest.raises(ConfigError, match="choose one of: train, unlabeled, train\\+unlabeled"):
        load("stl10", tmp_path, pretrain_split="test")


def test_stl10_truncated_and_mismatched_files(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train_X.bin has 110492 bytes, expected a positive multiple of 27648"):
        load("stl10", tmp_path)
    path.write_bytes(bytes(27648 * 3))
    with pytest.raises(DataError, match="train_y.bin holds 4 labels, expected 3"):
        load("stl10", tmp_path)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, compress: bool) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": RNG.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([5, 0, 4, 1, 9, 2], dtype=np.uint8),
        "t10k-images-idx3-ubyte": RNG.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([7, 2, 1, 0], dtype=np.uint8),
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize(
    ("name", "subfolder", "compress"),
    [("mnist", "", False), ("mnist", "MNIST/raw", True), ("fashion_mnist", "FashionMNIST/raw", False), ("fashion_mnist", "", True)],
)
def test_idx_round_trip(tmp_path: Path, name: str, subfolder: str, compress: bool) -> None:
    arrays = write_idx_set(tmp_path / subfolder, compress)
    splits = load(name, tmp_path)
    assert splits.pretrain is splits.train
    assert splits.train.images.shape == (6, 1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert splits.train.labels.tolist() == [5, 0, 4, 1, 9, 2] and splits.test.labels.tolist() == [7, 2, 1, 0]
    assert splits.train.channels == 1 and splits.train.num_classes == 10
    if name == "mnist":
        assert splits.train.classes[5] == "5" and splits.train.mean == (0.1307,) and splits.train.std == (0.3081,)
    else:
        assert splits.train.classes[9] == "Ankle boot" and splits.train.mean == (0.2860,) and splits.train.std == (0.3530,)


def test_idx_image_size(tmp_path: Path) -> None:
    write_idx_set(tmp_path, compress=False)
    splits = load("mnist", tmp_path, image_size=32)
    assert splits.train.images.shape == (6, 1, 32, 32) and splits.test.images.shape == (4, 1, 32, 32)


def test_idx_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*ossci-datasets"):
        load("mnist", tmp_path / "nowhere")
    arrays = write_idx_set(tmp_path, compress=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.unlink()
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte .*fashion-mnist"):
        load("fashion_mnist", tmp_path)
    images.write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: magic number 2049, expected 2051"):
        load("mnist", tmp_path)
    images.write_bytes(idx_bytes(arrays["train-images-idx3-ubyte"])[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: the header announces a 6x28x28 array \(4704 bytes of data\), found 4694"):
        load("mnist", tmp_path)
    images.unlink()
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(arrays["train-images-idx3-ubyte"]))[:-20])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a valid gzip file"):
        load("mnist", tmp_path)
    gz.write_bytes(gzip.compress(idx_bytes(arrays["train-images-idx3-ubyte"][:5])))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte holds 6 labels for the 5 images"):
        load("mnist", tmp_path)


# ---------------------------------------------------------------- image folders


def save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def solid(color: tuple[int, int, int], height: int = 24, width: int = 40) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (height, width, 3)).copy()


COLORS = {"bee": (250, 200, 0), "cat": (10, 20, 30), "dog": (0, 128, 255)}


def write_imagenet(root: Path) -> None:
    for split, count in [("train", 2), ("val", 1)]:
        for name, color in COLORS.items():
            for i in range(count):
                save_image(root / split / name / f"{name}_{i}.png", solid(color))
    save_image(root / "train" / "cat" / "extra.JPEG", solid(COLORS["cat"], 32, 32))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_imagefolder_imagenet_layout_through_iter_batches(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    splits = load("imagefolder", tmp_path, image_size=16)
    train, val = splits.train, splits.test
    assert isinstance(train, FolderSet) and splits.pretrain is train
    assert train.classes == ["bee", "cat", "dog"] and train.num_classes == 3 and train.channels == 3
    assert train.image_shape == (3, 16, 16) and train.labeled() is train
    assert [p.name for p in train.files] == ["bee_0.png", "bee_1.png", "cat_0.png", "cat_1.png", "extra.JPEG", "dog_0.png", "dog_1.png"]
    assert train.labels.tolist() == [0, 0, 1, 1, 1, 2, 2] and val.labels.tolist() == [0, 1, 2]
    assert train.mean == (0.485, 0.456, 0.406) and train.meta["layout"] == "imagenet"
    batches = list(iter_batches(train, 3, torch.device("cpu"), workers=0))
    images = torch.cat([b[0] for b in batches])
    assert [len(b[0]) for b in batches] == [3, 3, 1]
    assert images.dtype == torch.uint8 and images.shape == (7, 3, 16, 16)
    assert torch.cat([b[1] for b in batches]).tolist() == train.labels.tolist()
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(7))
    for image, label, path in zip(images, train.labels, train.files):
        expected = torch.tensor(COLORS[train.classes[label]], dtype=torch.int16)[:, None, None]
        tolerance = 2 if path.suffix == ".JPEG" else 0  # JPEG is lossy
        assert (image.short() - expected).abs().max() <= tolerance


def test_folderset_item_is_the_whole_image_and_batches_are_eval_crops(tmp_path: Path) -> None:
    gradient = np.zeros((16, 32, 3), dtype=np.uint8)
    gradient[:, :, 0] = np.arange(32, dtype=np.uint8) * 8  # red = 8 * column
    save_image(tmp_path / "wide.png", gradient)
    save_image(tmp_path / "big.png", solid((9, 99, 199), 64, 48))
    folder = FolderSet("t", [tmp_path / "wide.png", tmp_path / "big.png"], torch.tensor([0, 0]), ["x"], image_size=16)
    image, label, index = folder[0]
    assert label == 0 and index == 0 and torch.equal(image, torch.from_numpy(gradient).permute(2, 0, 1))
    images, _, index = next(iter_batches(folder, 2, torch.device("cpu")))
    assert index.tolist() == [0, 1] and images.shape == (2, 3, 16, 16)
    # shorter side 16 -> round(16 / 0.875) = 18 (the image becomes 18 x 36), then the centre 16 columns 10..25
    source_column = (torch.arange(10, 26) + 0.5) * 32 / 36 - 0.5
    assert (images[0, 0, 5].float() - 8 * source_column).abs().max() <= 0.5
    assert images[1, :, 0, 0].tolist() == [9, 99, 199] and images[1].amin() == 9 and images[1, 2].amax() == 199


def test_imagefolder_classes_file(tmp_path: Path) -> None:
    write_imagenet(tmp_path)
    classes_file = tmp_path / "subset.txt"
    classes_file.write_text("dog\nbee\n\n")
    splits = load("imagefolder", tmp_path, classes_file=classes_file)
    assert splits.train.classes == ["dog", "bee"] and splits.train.labels.tolist() == [0, 0, 1, 1]
    assert splits.train.image_size == 224 and splits.test.labels.tolist() == [0, 1]
    classes_file.write_text("dog\nzebra\n")
    with pytest.raises(DataError, match=r"class folder .*train/zebra does not exist"):
        load("imagefolder", tmp_path, classes_file=classes_file)


def test_imagefolder_bad_folders_and_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist.*image-net.org"):
        load("imagefolder", tmp_path / "nowhere")
    tmp_path.joinpath("other").mkdir()
    with pytest.raises(DataError, match="has neither train/ and val/ folders nor wnids.txt"):
        load("imagefolder", tmp_path / "other")
    write_imagenet(tmp_path)
    (tmp_path / "val" / "dog" / "dog_0.png").unlink()
    with pytest.raises(DataError, match=r"val/dog holds no .jpg/.jpeg/.png images"):
        load("imagefolder", tmp_path)
    (tmp_path / "val" / "dog" / "dog_0.png").write_bytes(b"\x89PNG garbage")
    splits = load("imagefolder", tmp_path, image_size=8)
    with pytest.raises(DataError, match=r"cannot read image .*val/dog/dog_0.png"):
        list(iter_batches(splits.test, 2, torch.device("cpu"), workers=0))


def write_tiny_imagenet(root: Path) -> None:
    folder = root / "tiny-imagenet-200"
    (folder / "wnids.txt").parent.mkdir(parents=True)
    (folder / "wnids.txt").write_text("n0200\nn0100\n")
    for wnid, color in [("n0100", (1, 2, 3)), ("n0200", (200, 100, 50))]:
        for i in range(2):
            save_image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", solid(color, 64, 64))
    for i, color in enumerate([(200, 100, 50), (1, 2, 3), (200, 100, 50)]):
        save_image(folder / "val" / "images" / f"val_{i}.JPEG", solid(color, 64, 64))
    rows = ["val_0.JPEG\tn0200\t0\t0\t63\t63", "val_1.JPEG\tn0100\t1\t2\t40\t50", "val_2.JPEG\tn0200\t5\t5\t9\t9"]
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")


def test_imagefolder_tiny_imagenet_layout(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path)
    splits = load("imagefolder", tmp_path, image_size=32)
    train, val = splits.train, splits.test
    assert train.meta["layout"] == "tiny-imagenet" and train.classes == ["n0100", "n0200"]
    assert train.labels.tolist() == [0, 0, 1, 1] and val.labels.tolist() == [1, 0, 1]
    assert [p.name for p in val.files] == ["val_0.JPEG", "val_1.JPEG", "val_2.JPEG"]
    images, labels, index = next(iter_batches(val, 3, torch.device("cpu"), workers=0))
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [1, 0, 1] and index.tolist() == [0, 1, 2]
    assert (images[1].short() - torch.tensor([1, 2, 3])[:, None, None]).abs().max() <= 2
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn0999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_annotations.txt line 1: expected .*found 'val_0.JPEG"):
        load("imagefolder", tmp_path / "tiny-imagenet-200")
