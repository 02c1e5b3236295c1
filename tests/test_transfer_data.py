"""COCO-format transfer data: the synthetic shapes set, CocoDetection, and COCO AP with pycocotools."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from bench.data.shapes import CLASSES
from bench.errors import ConfigError, DataError
from bench.transfer.coco import CocoConfig, CocoDetection, CocoSplits, load_coco
from bench.transfer.evaluate import METRICS, NoPredictionsWarning, coco_evaluate, to_coco_results
from bench.transfer.synthetic import generate_coco_shapes

N_TRAIN, N_VAL = 6, 4


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_coco_shapes(tmp_path_factory.mktemp("coco"), n_train=N_TRAIN, n_val=N_VAL, seed=0)


def config(root: Path, **kwargs) -> CocoConfig:
    return CocoConfig(root=root, train_split="train", val_split="val", **kwargs)


def copy_set(shapes_set: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shapes_set, tmp_path / "copy"))


def edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def ground_truth_outputs(dataset: CocoDetection) -> tuple[list[dict], list[int]]:
    """The targets of every image as torchvision-style detector outputs with score 1."""
    outputs, image_ids = [], []
    for _, target in (dataset[i] for i in range(len(dataset))):
        n = len(target["labels"])
        outputs.append({"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(n), "masks": target["masks"][:, None].float()})
        image_ids.append(target["image_id"])
    return outputs, image_ids


# ---------------------------------------------------------------- synthetic set


def test_synthetic_set_is_coco_with_exact_disjoint_masks(shapes_set: Path) -> None:
    assert shapes_set.name == "coco_shapes_64px_train6_val4_objects3_seed0"
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        coco = COCO(str(shapes_set / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
        assert len(coco.getImgIds()) == n
        for image_id in coco.getImgIds():
            info = coco.imgs[image_id]
            assert Image.open(shapes_set / split / info["file_name"]).size == (64, 64)
            anns = coco.imgToAnns[image_id]
            assert 1 <= len(anns) <= 3
            masks = np.stack([coco.annToMask(a) for a in anns])
            assert masks.sum(axis=0).max() == 1  # no two shapes share a pixel
            for ann, mask in zip(anns, masks):
                rows, cols = np.nonzero(mask)
                assert ann["bbox"] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
                assert ann["area"] == mask.sum() and ann["iscrowd"] == 0


def test_synthetic_set_is_deterministic_and_reused(shapes_set: Path, tmp_path: Path) -> None:
    again = generate_coco_shapes(tmp_path, n_train=N_TRAIN, n_val=N_VAL, seed=0)
    assert files(again) == files(shapes_set)
    stamp = (again / "annotations" / "instances_train.json").stat().st_mtime_ns
    assert generate_coco_shapes(tmp_path, n_train=N_TRAIN, n_val=N_VAL, seed=0) == again
    assert (again / "annotations" / "instances_train.json").stat().st_mtime_ns == stamp
    other = generate_coco_shapes(tmp_path, n_train=N_TRAIN, n_val=N_VAL, seed=1)
    assert other != again and sorted(p.name for p in tmp_path.iterdir()) == sorted([again.name, other.name])  # no temp folder left
    first = files(again)
    assert all(first[name] != content for name, content in files(other).items())


def test_synthetic_set_refuses_empty_splits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="generate_coco_shapes: n_val=0, expected at least 1"):
        generate_coco_shapes(tmp_path, n_train=2, n_val=0)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- CocoDetection


def test_coco_detection_targets_match_the_files(shapes_set: Path) -> None:
    splits = load_coco(config(shapes_set, classes=list(reversed(CLASSES))))
    assert isinstance(splits, CocoSplits) and (len(splits.train), len(splits.val)) == (N_TRAIN, N_VAL)
    assert splits.train.classes == CLASSES and splits.train.category_ids == list(range(1, 11))
    coco = COCO(str(shapes_set / "annotations" / "instances_val.json"))
    for index, image_id in enumerate(sorted(coco.getImgIds())):
        image, target = splits.val[index]
        assert target["image_id"] == image_id
        expected = np.array(Image.open(shapes_set / "val" / coco.imgs[image_id]["file_name"]))
        assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))
        anns = coco.imgToAnns[image_id]
        assert target["labels"].tolist() == [a["category_id"] for a in anns]  # ids 1..10 are already contiguous
        assert target["iscrowd"].tolist() == [0] * len(anns)
        assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(anns), 64, 64)
        assert target["area"].tolist() == target["masks"].flatten(1).sum(1).tolist()
        for box, mask in zip(target["boxes"].tolist(), target["masks"]):
            rows, cols = torch.nonzero(mask, as_tuple=True)
            assert box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_training_split_skips_images_left_without_instances(shapes_set: Path, tmp_path: Path) -> None:
    root = copy_set(shapes_set, tmp_path)

    def crowd_image_1(content: dict) -> None:
        for ann in content["annotations"]:
            ann["iscrowd"] = int(ann["image_id"] == 1)

    edit_json(root / "annotations" / "instances_train.json", crowd_image_1)
    edit_json(root / "annotations" / "instances_val.json", crowd_image_1)
    splits = load_coco(config(root))
    assert splits.train.ids == list(range(2, N_TRAIN + 1))
    assert splits.val.ids == list(range(1, N_VAL + 1))
    _, target = splits.val[0]
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 64, 64) and target["labels"].shape == (0,)
    assert len(load_coco(config(root, min_size=64)).train) == 0  # no 64-px shape in a 64-px image


# ---------------------------------------------------------------- evaluation


def test_ground_truth_as_predictions_scores_one(shapes_set: Path) -> None:
    val = load_coco(config(shapes_set)).val
    outputs, image_ids = ground_truth_outputs(val)
    results = to_coco_results(outputs, image_ids, val.category_ids)
    gt = {(a["image_id"], a["category_id"], tuple(a["bbox"])) for a in val.coco.dataset["annotations"]}
    assert {(r["image_id"], r["category_id"], tuple(r["bbox"])) for r in results} == gt
    scores = coco_evaluate(val.coco, results)
    # every shape of a 64-px image is under 32x32 pixels: APm and APl are undefined, so left out (never NaN)
    assert set(scores) == {f"{t}.{m}" for t in ("bbox", "segm") for m in METRICS if m not in ("APm", "APl")}
    for iou_type in ("bbox", "segm"):
        assert scores[f"{iou_type}.AP"] == scores[f"{iou_type}.AP50"] == scores[f"{iou_type}.AP75"] == 1.0
        assert scores[f"{iou_type}.APs"] == 1.0


def test_shifted_boxes_lower_box_ap_only(shapes_set: Path) -> None:
    val = load_coco(config(shapes_set)).val
    outputs, image_ids = ground_truth_outputs(val)
    for output in outputs:
        output["boxes"] = output["boxes"] + 2.0  # IoU (s-2)²/(2s²-(s-2)²): 0.3 to 0.8 for boxes of side s = 6..30
    scores = coco_evaluate(val.coco, to_coco_results(outputs, image_ids, val.category_ids))
    assert 0.1 < scores["bbox.AP"] < 0.6 and scores["bbox.AP75"] < scores["bbox.AP50"]
    assert scores["segm.AP"] == 1.0


def test_box_ap_by_hand() -> None:
    """One 10x10 object and one detection with IoU 0.62: a hit at IoU thresholds 0.50, 0.55, 0.60 of ten."""
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 20}],
        "categories": [{"id": 3, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}],
    }
    coco.createIndex()
    output = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 6.2]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}
    scores = coco_evaluate(coco, to_coco_results([output], [7], [3]), iou_types=("bbox",))
    assert scores["bbox.AP"] == pytest.approx(0.3) and scores["bbox.APs"] == pytest.approx(0.3)
    assert scores["bbox.AP50"] == pytest.approx(1.0) and scores["bbox.AP75"] == 0.0


def test_empty_predictions_score_zero_with_a_warning(shapes_set: Path) -> None:
    with pytest.warns(NoPredictionsWarning, match="no prediction"):
        scores = coco_evaluate(load_coco(config(shapes_set)).val.coco, [])
    assert scores == {f"{t}.{m}": 0.0 for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs")}


# ---------------------------------------------------------------- user errors


def test_missing_root_and_annotation_file_name_the_download(shapes_set: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset root .*nowhere does not exist.*annotations_trainval2017.zip"):
        load_coco(CocoConfig(root=tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"instances_train2017.json not found; get COCO 2017 from .*annotations_trainval2017.zip.*zips/train2017.zip"):
        load_coco(CocoConfig(root=tmp_path))
    root = copy_set(shapes_set, tmp_path)
    (root / "annotations" / "instances_val.json").unlink()
    with pytest.raises(DataError, match=r"annotations/instances_val.json not found; .*generate_coco_shapes"):
        load_coco(config(root))


def test_json_that_is_not_coco(shapes_set: Path, tmp_path: Path) -> None:
    root = copy_set(shapes_set, tmp_path)
    path = root / "annotations" / "instances_val.json"
    edit_json(path, lambda content: content["annotations"][1].pop("bbox"))
    with pytest.raises(DataError, match=r"instances_val.json is not a COCO instances file: annotations\[1\] must have the fields area, bbox,"):
        load_coco(config(root))
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="instances_val.json is not a COCO instances file: expected a JSON object .* found a list"):
        load_coco(config(root))
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="instances_val.json is not readable JSON"):
        load_coco(config(root))


def test_category_mismatch_names_the_categories(shapes_set: Path, tmp_path: Path) -> None:
    root = copy_set(shapes_set, tmp_path)
    with pytest.raises(DataError, match="configured but not in the file: 'hexagon'; in the file but not configured: 'bar'"):
        load_coco(config(root, classes=CLASSES[:-1] + ["hexagon"]))
    edit_json(root / "annotations" / "instances_val.json", lambda content: content["categories"][2].update(name="trigon"))
    with pytest.raises(DataError, match="only in train: 3:'triangle'; only in val: 3:'trigon'"):
        load_coco(config(root))


def test_missing_or_resized_image(shapes_set: Path, tmp_path: Path) -> None:
    root = copy_set(shapes_set, tmp_path)
    Image.open(root / "val" / "000003.png").resize((32, 32)).save(root / "val" / "000003.png")
    with pytest.raises(DataError, match="000003.png is 32x32 pixels but .*instances_val.json says 64x64"):
        load_coco(config(root)).val[2]
    (root / "val" / "000002.png").unlink()
    with pytest.raises(DataError, match=r"1 of the 4 images listed by .*instances_val.json are missing from .*val, e.g. 000002.png"):
        load_coco(config(root))
