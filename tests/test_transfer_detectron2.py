"""detectron2 backend: weight conversion, protocol configs, dataset lookup and error messages (without detectron2),
then real CPU fine-tuning through ``ssl-bench transfer`` and a suite's detection stage (with detectron2)."""

import importlib.util
import json
import os
import pickle

import numpy as np
import pytest
import torch
import yaml

from bench.config import resolve_run_config
from bench.errors import ConfigError, DataError
from bench.models.backbones import BackboneConfig, build_backbone
from bench.train.checkpoint import atomic_save
from bench.transfer.detectron2 import Detectron2Config, convert_checkpoint, detection_config, mask_format, write_config
from bench.transfer.detectron2_train import CocoSource, VocSource, dataset_sources, detectron2_metrics, train_detectron2

BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}  # bottlenecks per stage of ResNet-50 (res2..res5)
BN = ("weight", "bias", "running_mean", "running_var")


def save_model_pt(path, backbone_state, backbone_cfg):
    """A model.pt as bench/train/engine.py writes it: method state (with a projector), backbone, config, history."""
    config = resolve_run_config({"method": {"name": "simclr"}, "backbone": backbone_cfg}).model_dump(mode="json")
    model = {**{f"backbone.{k}": v for k, v in backbone_state.items()}, "projector.0.weight": torch.ones(8, 2048)}
    atomic_save({"model": model, "backbone": backbone_state, "config": config, "history": []}, path)
    return path


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    """A resnet50 backbone with every BN tensor randomised (so a swapped BN mapping shows), saved as model.pt."""
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="resnet50"), 3)
    with torch.no_grad():
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.normal_()
                m.running_var.uniform_(0.5, 2.0)
    state = backbone.state_dict()
    path = save_model_pt(tmp_path_factory.mktemp("run") / "model.pt", state, {"name": "resnet50"})
    return path, state


def expected_names() -> set[str]:
    """detectron2's ResNet-50 tensor names, written out from its module layout (stem, res2..res5 bottlenecks)."""
    names = {"stem.conv1.weight", *(f"stem.conv1.norm.{p}" for p in BN)}
    for stage, blocks in BLOCKS.items():
        for b in range(blocks):
            convs = ["conv1", "conv2", "conv3"] + (["shortcut"] if b == 0 else [])
            for conv in convs:
                names.add(f"res{stage}.{b}.{conv}.weight")
                names.update(f"res{stage}.{b}.{conv}.norm.{p}" for p in BN)
    return names


def torchvision_name(d2_name: str) -> str:
    """Inverse renaming, to look up the source tensor of a converted one."""
    if d2_name.startswith("stem."):
        return "net." + d2_name.removeprefix("stem.").replace("conv1.norm", "bn1")
    stage, rest = d2_name.split(".", 1)
    rest = rest.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    for k in (1, 2, 3):
        rest = rest.replace(f"conv{k}.norm", f"bn{k}")
    return f"net.layer{int(stage[3:]) - 1}.{rest}"


def test_convert_maps_every_backbone_tensor(resnet50, tmp_path):
    src, state = resnet50
    payload = convert_checkpoint(src, tmp_path / "weights.pkl")
    model = payload["model"]
    counted = [k for k in state if not k.endswith("num_batches_tracked") and ".fc." not in k]
    assert len(model) == len(counted) == 265
    assert set(model) == expected_names()
    for name, array in model.items():
        source = state[torchvision_name(name)]
        assert isinstance(array, np.ndarray) and array.dtype == np.float32
        assert array.shape == tuple(source.shape)
        np.testing.assert_array_equal(array, source.numpy())
    # a handful, by hand: the stem, a projection shortcut, a strided 3x3 and the last BN
    assert model["stem.conv1.weight"].shape == (64, 3, 7, 7)
    np.testing.assert_array_equal(model["stem.conv1.norm.running_mean"], state["net.bn1.running_mean"].numpy())
    assert model["res2.0.shortcut.weight"].shape == (256, 64, 1, 1)
    np.testing.assert_array_equal(model["res2.0.shortcut.norm.bias"], state["net.layer1.0.downsample.1.bias"].numpy())
    assert model["res3.0.conv2.weight"].shape == (128, 128, 3, 3)
    np.testing.assert_array_equal(model["res5.2.conv3.norm.running_var"], state["net.layer4.2.bn3.running_var"].numpy())
    assert model["res4.5.conv3.weight"].shape == (1024, 256, 1, 1)


def test_converted_pickle_has_detectron2_layout(resnet50, tmp_path):
    dst = tmp_path / "out" / "weights.pkl"
    convert_checkpoint(resnet50[0], dst)
    with open(dst, "rb") as f:
        loaded = pickle.load(f, encoding="latin1")  # as detectron2's DetectionCheckpointer reads a .pkl
    assert set(loaded) == {"model", "__author__", "matching_heuristics"}
    assert loaded["__author__"] == "ssl-bench" and loaded["matching_heuristics"] is True
    assert len(loaded["model"]) == 265
    assert not any("fc" in k or "projector" in k or "num_batches_tracked" in k for k in loaded["model"])
    assert [p.name for p in dst.parent.iterdir()] == ["weights.pkl"]  # no temporary file left behind


def one_line_config_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_convert_refuses_other_backbones(resnet50, tmp_path):
    _, state = resnet50
    r18 = build_backbone(BackboneConfig(name="resnet18"), 3).state_dict()
    src = save_model_pt(tmp_path / "r18.pt", r18, {"name": "resnet18"})
    assert "holds a resnet18 backbone" in one_line_config_error(convert_checkpoint, src, tmp_path / "w.pkl")

    cifar = {**state, "net.conv1.weight": torch.zeros(64, 3, 3, 3)}  # what cifar_stem=true builds
    src = save_model_pt(tmp_path / "cifar.pt", cifar, {"name": "resnet50", "cifar_stem": True})
    assert "backbone.cifar_stem=true" in one_line_config_error(convert_checkpoint, src, tmp_path / "w.pkl")

    gray = {**state, "net.conv1.weight": torch.zeros(64, 1, 7, 7)}  # pre-trained on 1-channel images
    src = save_model_pt(tmp_path / "gray.pt", gray, {"name": "resnet50"})
    message = one_line_config_error(convert_checkpoint, src, tmp_path / "w.pkl")
    assert "conv1.weight is of shape (64, 1, 7, 7)" in message and "(64, 3, 7, 7)" in message
    assert not (tmp_path / "w.pkl").exists()


def test_convert_refuses_files_that_are_not_ours(resnet50, tmp_path):
    random_file = tmp_path / "random.pt"
    random_file.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "is not an ssl-bench model.pt" in one_line_config_error(convert_checkpoint, random_file, tmp_path / "w.pkl")

    training_checkpoint = tmp_path / "checkpoint.pt"  # the engine's resumable checkpoint has no "backbone"
    torch.save({"model": {}, "epoch": 3, "config": {}}, training_checkpoint)
    assert "is not an ssl-bench model.pt" in one_line_config_error(convert_checkpoint, training_checkpoint, tmp_path / "w.pkl")

    assert "does not exist" in one_line_config_error(convert_checkpoint, tmp_path / "nope.pt", tmp_path / "w.pkl")
    assert "ending in .pkl" in one_line_config_error(convert_checkpoint, resnet50[0], tmp_path / "w.pth")


COCO_SIZES = [640, 672, 704, 736, 768, 800]
VOC_SIZES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
# protocol -> (architecture, MASK_ON, train sizes, steps, max_iter, warm-up) at 16 images per batch (MoCo / detectron2)
PROTOCOLS = {
    "coco_r50_c4_1x": ("c4", True, COCO_SIZES, [60000, 80000], 90000, 1000),
    "coco_r50_c4_2x": ("c4", True, COCO_SIZES, [120000, 160000], 180000, 1000),
    "coco_r50_fpn_1x": ("fpn", True, COCO_SIZES, [60000, 80000], 90000, 1000),
    "coco_r50_fpn_2x": ("fpn", True, COCO_SIZES, [120000, 160000], 180000, 1000),
    "voc_r50_c4_24k": ("c4", False, VOC_SIZES, [18000, 22000], 24000, 100),
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_protocol_config_carries_moco_fields(protocol, tmp_path):
    arch, mask_on, sizes, steps, max_iter, warmup = PROTOCOLS[protocol]
    cfg = detection_config(Detectron2Config(protocol=protocol), tmp_path / "w.pkl", output_dir=tmp_path / "out")
    m = cfg["MODEL"]
    assert m["META_ARCHITECTURE"] == "GeneralizedRCNN" and m["WEIGHTS"] == str(tmp_path / "w.pkl")
    assert m["MASK_ON"] is mask_on
    assert m["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and m["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert m["RESNETS"]["DEPTH"] == 50 and m["RESNETS"]["STRIDE_IN_1X1"] is False
    assert m["BACKBONE"]["FREEZE_AT"] == 0
    if arch == "c4":
        assert m["RESNETS"]["NORM"] == "naiveSyncBN"
        assert m["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
        assert m["RPN"]["PRE_NMS_TOPK_TEST"] == 6000 and m["RPN"]["POST_NMS_TOPK_TEST"] == 1000
        assert "FPN" not in m
    else:
        assert m["BACKBONE"]["NAME"] == "build_resnet_fpn_backbone"
        assert m["RESNETS"]["NORM"] == m["FPN"]["NORM"] == "SyncBN"
        assert m["ROI_BOX_HEAD"]["NORM"] == m["ROI_MASK_HEAD"]["NORM"] == "SyncBN"
        assert (m["ROI_BOX_HEAD"]["NUM_CONV"], m["ROI_BOX_HEAD"]["NUM_FC"]) == (4, 1)
        assert m["RESNETS"]["OUT_FEATURES"] == m["FPN"]["IN_FEATURES"] == ["res2", "res3", "res4", "res5"]
    assert m["ROI_HEADS"]["NUM_CLASSES"] == (80 if mask_on else 20) and m["ROI_HEADS"]["BATCH_SIZE_PER_IMAGE"] == 512
    assert m["DEVICE"] == "cuda"
    assert cfg["INPUT"] == {"FORMAT": "RGB", "MASK_FORMAT": "polygon", "MIN_SIZE_TRAIN": sizes, "MIN_SIZE_TEST": 800,
                            "MAX_SIZE_TRAIN": 1333, "MAX_SIZE_TEST": 1333}
    s = cfg["SOLVER"]
    assert (s["IMS_PER_BATCH"], s["BASE_LR"], s["STEPS"], s["MAX_ITER"], s["WARMUP_ITERS"]) == (16, 0.02, steps, max_iter, warmup)
    assert cfg["TEST"] == {"EVAL_PERIOD": 0, "DETECTIONS_PER_IMAGE": 100, "PRECISE_BN": {"ENABLED": True, "NUM_ITER": 200}}
    assert cfg["OUTPUT_DIR"] == str(tmp_path / "out")

    half = detection_config(Detectron2Config(protocol=protocol, ims_per_batch=8), tmp_path / "w.pkl", output_dir=tmp_path)["SOLVER"]
    assert half["IMS_PER_BATCH"] == 8 and half["BASE_LR"] == pytest.approx(0.01)
    assert half["STEPS"] == [2 * x for x in steps] and half["MAX_ITER"] == 2 * max_iter and half["WARMUP_ITERS"] == 2 * warmup

    short = detection_config(Detectron2Config(protocol=protocol, ims_per_batch=8, iterations=90), tmp_path / "w.pkl",
                             output_dir=tmp_path)["SOLVER"]  # steps in proportion, warm-up cut to the run
    assert (short["MAX_ITER"], short["STEPS"], short["WARMUP_ITERS"]) == (90, [round(90 * x / max_iter) for x in steps], 90)
    assert detection_config(Detectron2Config(protocol=protocol, iterations=1), tmp_path / "w.pkl",
                            output_dir=tmp_path)["SOLVER"]["STEPS"] == []  # no step at or after the last iteration


def test_datasets_and_yaml(tmp_path):
    cfg = detection_config(Detectron2Config(eval_period=500), tmp_path / "w.pkl", output_dir=tmp_path, train_split="train",
                           val_split="val", num_classes=3)
    assert cfg["DATASETS"] == {"TRAIN": ["ssl_bench_coco_train"], "TEST": ["ssl_bench_coco_val"]}
    assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 3 and cfg["TEST"]["EVAL_PERIOD"] == 500
    assert yaml.safe_load(write_config(cfg, tmp_path / "cfg" / "config.yaml").read_text()) == cfg

    voc = detection_config(Detectron2Config(protocol="voc_r50_c4_24k"), tmp_path / "w.pkl", output_dir=tmp_path)
    assert voc["DATASETS"] == {"TRAIN": ["ssl_bench_voc_2007_trainval", "ssl_bench_voc_2012_trainval"],
                               "TEST": ["ssl_bench_voc_2007_test"]}
    message = one_line_config_error(lambda: detection_config(Detectron2Config(protocol="voc_r50_c4_24k"), tmp_path / "w.pkl",
                                                             output_dir=tmp_path, num_classes=3))
    assert "coco_* protocols only" in message


def test_dataset_sources_find_coco_and_voc_files(tmp_path):
    coco = tmp_path / "coco"
    for split in ("train", "val"):
        (coco / split).mkdir(parents=True)
        (coco / "annotations").mkdir(exist_ok=True)
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    cfg = detection_config(Detectron2Config(protocol="coco_r50_c4_1x"), tmp_path / "w.pkl", output_dir=tmp_path,
                           train_split="train", val_split="val")
    assert dataset_sources(cfg, coco) == [
        CocoSource("ssl_bench_coco_train", coco / "annotations" / "instances_train.json", coco / "train"),
        CocoSource("ssl_bench_coco_val", coco / "annotations" / "instances_val.json", coco / "val"),
    ]
    (coco / "annotations" / "instances_val.json").unlink()
    with pytest.raises(DataError, match="instances_val.json is missing: expected the COCO layout"):
        dataset_sources(cfg, coco)

    voc = tmp_path / "voc"
    for folder, splits in (("VOC2007", ("trainval", "test")), ("VOC2012", ("trainval",))):
        (voc / folder / "ImageSets" / "Main").mkdir(parents=True)
        (voc / folder / "JPEGImages").mkdir()
        for split in splits:
            (voc / folder / "ImageSets" / "Main" / f"{split}.txt").write_text("000001\n")
    cfg = detection_config(Detectron2Config(protocol="voc_r50_c4_24k"), tmp_path / "w.pkl", output_dir=tmp_path)
    assert dataset_sources(cfg, voc) == [
        VocSource("ssl_bench_voc_2007_trainval", voc / "VOC2007", "trainval", 2007),
        VocSource("ssl_bench_voc_2012_trainval", voc / "VOC2012", "trainval", 2012),
        VocSource("ssl_bench_voc_2007_test", voc / "VOC2007", "test", 2007),
    ]
    os.rename(voc / "VOC2012", voc / "VOC2012-incomplete")
    with pytest.raises(DataError, match="VOC2012/ImageSets/Main/trainval.txt is missing"):
        dataset_sources(cfg, voc)


def test_detectron2_metrics_are_fractions_of_the_summary():
    results = {"bbox": {"AP": 40.0, "AP50": 60.5, "AP75": 43.0, "APs": 20.0, "APm": 44.0, "APl": 52.0, "AP-person": 55.0},
               "segm": {"AP": 35.0, "AP50": 57.0, "APm": float("nan")}}  # NaN: no ground-truth object of that size
    assert detectron2_metrics(results) == pytest.approx({"bbox.AP": 0.40, "bbox.AP50": 0.605, "bbox.AP75": 0.43, "bbox.APs": 0.20,
                                                         "bbox.APm": 0.44, "bbox.APl": 0.52, "segm.AP": 0.35, "segm.AP50": 0.57})


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None, reason="detectron2 is installed here")
def test_train_without_detectron2_says_how_to_get_it(tmp_path):
    cfg = detection_config(Detectron2Config(), tmp_path / "w.pkl", output_dir=tmp_path)
    message = one_line_config_error(lambda: train_detectron2(cfg, dataset_root=tmp_path))
    assert message.startswith("detectron2 is not installed: use the GPU worker image (docker/)")
    assert "backend: torchvision" in message


def test_mask_format_follows_the_annotations(tmp_path):
    from bench.transfer.coco import read_coco
    from bench.transfer.synthetic import generate_coco_shapes

    synthetic = read_coco(generate_coco_shapes(tmp_path, n_train=2, n_val=1), "train")
    assert mask_format(synthetic) == "bitmask"  # RLE instance masks
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 20}], "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0,
                             "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [9, 9, 2, 2], "area": 4, "iscrowd": 1,
                             "segmentation": {"size": [20, 20], "counts": [189, 2, 18, 2, 189]}}]}
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "annotations" / "instances_poly.json").write_text(json.dumps(coco))
    (tmp_path / "poly").mkdir()  # read_coco checks that the image folder is there (none of it is read)
    assert mask_format(read_coco(tmp_path, "poly")) == "polygon"  # COCO 2017: polygons, RLE only for crowds


# ------------------------------------------------------------------ with detectron2: real fine-tuning on the CPU

needs_detectron2 = pytest.mark.skipif(importlib.util.find_spec("detectron2") is None,
                                      reason="detectron2 is not installed (.ci/run installs it from "
                                             "../shared/vendor/detectron2-8a9d885.tar.gz where that archive is)")
#: a handful of iterations on two images at the synthetic images' own 64 px (sizes left unset: they follow the data),
#: few proposals and detections (C4 runs res5 on each, and again on each detection for its mask), one batch of precise BN
TINY = {"ims_per_batch": 2, "iterations": 2, "roi_batch_size": 16, "proposals": 10, "detections": 10,
        "precise_bn_iterations": 1, "num_workers": 0, "device": "cpu"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The run directory of a ResNet-50 pre-trained by `ssl-bench train` (SimCLR, one epoch of 64 shapes at 32 px)."""
    from bench.cli import main

    run_dir = tmp_path_factory.mktemp("pretrained")
    sets = ["method=simclr", "method.projector=32-16", "dataset=shapes", "dataset.n_train=64", "dataset.n_test=32",
            "backbone.name=resnet50", "batch_size=32", "epochs=1", "eval.probes=[]", "train.progress=false",
            "train.threads=1", "train.device=cpu"]
    assert main(["train", *(a for s in sets for a in ("--set", s)), "--out", str(run_dir)]) == 0
    return run_dir


@needs_detectron2
@pytest.mark.parametrize("protocol", ["coco_r50_c4_1x", "coco_r50_fpn_1x"])
def test_transfer_command_fine_tunes_and_logs_finite_ap_to_mlflow(protocol, pretrained, tmp_path, monkeypatch):
    """`ssl-bench transfer` with the detectron2 backend on the synthetic set: conversion, CPU training, COCO
    evaluation (AP 0 when the 2-iteration model predicts nothing), metrics in MLflow, never NaN."""
    from mlflow import MlflowClient

    from bench.cli import main

    monkeypatch.chdir(tmp_path)  # the synthetic set is generated under results/cache
    stage = {"backend": "detectron2", "synthetic": {"n_train": 4, "n_val": 2}, "detectron2": {"protocol": protocol, **TINY}}
    (tmp_path / "stage.yaml").write_text(yaml.safe_dump(stage))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["transfer", str(pretrained), "--config", "stage.yaml", "--out", "out", "--tracking", uri]) == 0

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("transfer").experiment_id])
    metrics = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.params["detectron2.protocol"] == protocol
    ap = {k: v for k, v in metrics.items() if not k.startswith("detection.cost.")}
    assert set(ap) == {f"detection.{t}.{m}" for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs")}
    assert all(0.0 <= v <= 1.0 for v in ap.values()), ap  # finite: APm/APl are undefined on 64 px shapes
    # the cost of the stage, as a pre-training cell's (bench.core.cost): its stages add up to the total
    stages = sum(v for k, v in metrics.items() if k.startswith("detection.cost.wall.") and not k.endswith(".total"))
    assert metrics["detection.cost.wall.train"] > 0 and metrics["detection.cost.wall.eval"] > 0
    assert stages == pytest.approx(metrics["detection.cost.wall.total"])
    trained = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert trained["INPUT"]["MASK_FORMAT"] == "bitmask" and trained["MODEL"]["DEVICE"] == "cpu"
    assert trained["INPUT"]["MIN_SIZE_TRAIN"] == [64] and trained["INPUT"]["MIN_SIZE_TEST"] == 64  # the images' own size
    assert (tmp_path / "out" / "backbone.pkl").is_file() and (tmp_path / "out" / "model_final.pth").is_file()


@needs_detectron2
def test_a_model_without_predictions_scores_ap_zero_with_a_warning(tmp_path):
    """detectron2's COCOEvaluator reports NaN for every metric when no image got a detection; ours records AP 0."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.structures import Boxes, Instances

    from bench.transfer.detectron2_train import _trainer_class
    from bench.transfer.evaluate import NoPredictionsWarning
    from bench.transfer.interrupt import SigtermStop
    from bench.transfer.synthetic import generate_coco_shapes

    root = generate_coco_shapes(tmp_path, n_train=1, n_val=2)
    name = "ssl_bench_test_no_predictions"
    register_coco_instances(name, {}, str(root / "annotations" / "instances_val.json"), str(root / "val"))
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    evaluator = _trainer_class(SigtermStop()).build_evaluator(cfg, name)
    evaluator.reset()
    nothing = Instances((64, 64), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0), pred_classes=torch.zeros(0, dtype=torch.long))
    evaluator.process([{"image_id": 1}, {"image_id": 2}], [{"instances": nothing}, {"instances": nothing}])
    try:
        with pytest.warns(NoPredictionsWarning):
            results = evaluator.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert detectron2_metrics(results) == {"bbox.AP": 0.0, "bbox.AP50": 0.0, "bbox.AP75": 0.0, "bbox.APs": 0.0}
