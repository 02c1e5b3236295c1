"""detectron2 backend of detection transfer, following MoCo's protocol (``docs/protocols.md`` §7): weights and config.

Three steps: convert a pre-trained ResNet-50 backbone (``model.pt``) to a detectron2 weight pickle (here),
write the detectron2 config of one protocol (R50-C4 or R50-FPN on COCO, R50-C4 on VOC07+12; here), and train
and evaluate it with detectron2's DefaultTrainer (bench/transfer/detectron2_train.py). Only the last step needs
detectron2, which has no wheel: the GPU worker image (docker/) and CI build it; everything else runs without it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pycocotools.coco import COCO
from pydantic import Field
from torchvision import models

from bench.core.files import atomic_path
from bench.errors import ConfigError
from bench.schema import ConfigModel
from bench.transfer.sizes import Sizes
from bench.transfer.source import read_pretrained

Protocol = Literal["coco_r50_c4_1x", "coco_r50_c4_2x", "coco_r50_fpn_1x", "coco_r50_fpn_2x", "voc_r50_c4_24k"]

#: the ROI head MoCo registers for C4: detectron2's Res5ROIHeads plus a norm layer after res5 (``docs/protocols.md`` §7.1)
EXTRA_NORM_HEAD = "Res5ROIHeadsExtraNorm"
#: prefix of the dataset names this module registers in detectron2's DatasetCatalog
DATASET_PREFIX = "ssl_bench_"
#: Pascal VOC sets of MoCo's VOC protocol (``docs/protocols.md`` §7.1), the two training sets first:
#: dataset name -> (devkit folder, image-set split, year)
VOC_SETS = {
    "ssl_bench_voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "ssl_bench_voc_2012_trainval": ("VOC2012", "trainval", 2012),
    "ssl_bench_voc_2007_test": ("VOC2007", "test", 2007),
}

_BLOCK_LAYERS = {"bn1": "conv1.norm", "bn2": "conv2.norm", "bn3": "conv3.norm",
                 "downsample.0": "shortcut", "downsample.1": "shortcut.norm"}


# ----------------------------------------------------------------------------------------- weights


def detectron2_name(name: str) -> str:
    """detectron2's name of a torchvision ResNet trunk tensor (``docs/protocols.md`` §7.1).

    ``conv1.weight`` -> ``stem.conv1.weight``, ``bn1.*`` -> ``stem.conv1.norm.*``,
    ``layer1.0.bn2.*`` -> ``res2.0.conv2.norm.*``, ``layer1.0.downsample.0/1.*`` -> ``res2.0.shortcut[.norm].*``.
    """
    module, _, leaf = name.rpartition(".")
    head, _, rest = module.partition(".")
    if head.startswith("layer"):
        block, _, layer = rest.partition(".")
        return f"res{int(head[len('layer'):]) + 1}.{block}.{_BLOCK_LAYERS.get(layer, layer)}.{leaf}"
    return f"stem.{_BLOCK_LAYERS.get(module, module)}.{leaf}"


def _reference_resnet50() -> dict[str, torch.Size]:
    """Shapes of torchvision's ResNet-50 trunk (no fc, no BN counters), built without allocating memory."""
    with torch.device("meta"):
        reference = models.resnet50()
    return {k: v.shape for k, v in reference.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _load_backbone(src: Path) -> dict[str, torch.Tensor]:
    """The backbone state_dict of an ssl-bench ``model.pt``, checked to be a 3-channel torchvision ResNet-50."""
    backbone, _ = read_pretrained(src, ("resnet50",), "detectron2's R50 protocols")
    state = {k.removeprefix("net."): v for k, v in backbone.items()}
    for name, shape in _reference_resnet50().items():
        if name not in state or state[name].shape != shape:
            got = "missing" if name not in state else f"of shape {tuple(state[name].shape)}"
            raise ConfigError(f"{src}: backbone tensor {name} is {got}, torchvision's ResNet-50 has {tuple(shape)} "
                              "(detectron2 needs 3-channel RGB weights): pre-train a resnet50 on an RGB dataset")
    return state


def convert_checkpoint(src: Path, dst: Path) -> dict[str, Any]:
    """Convert the backbone of an ssl-bench ``model.pt`` into a detectron2 weight pickle at ``dst`` and return it.

    The backbone is the network ``model.pt`` stores under "backbone" (the online / student network of
    methods with two). Tensor names are renamed as MoCo's convert-pretrain-to-detectron2.py does (``docs/protocols.md`` §7.1);
    the classifier, projector and predictor heads and BN batch counters are left out. The pickle is
    ``{"model": {name: numpy array}, "__author__": "ssl-bench", "matching_heuristics": True}``:
    detectron2's DetectionCheckpointer reads it because the file ends in ``.pkl`` and carries
    ``__author__``, and matches its names to the model's by suffix (res5 goes to the C4 ROI head).
    Raises ConfigError for a file that is not an ssl-bench model.pt or holds no 3-channel torchvision
    ResNet-50 with the standard stem.
    """
    if dst.suffix != ".pkl":
        raise ConfigError(f"{dst}: detectron2 reads converted weights only from a file ending in .pkl; name it e.g. {dst.with_suffix('.pkl').name}")
    state = _load_backbone(src)
    reference = _reference_resnet50()
    payload = {
        "model": {detectron2_name(k): state[k].detach().float().numpy() for k in reference},
        "__author__": "ssl-bench",
        "matching_heuristics": True,
    }
    with atomic_path(dst) as tmp, open(tmp, "wb") as f:
        pickle.dump(payload, f)
    return payload


# ------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class _Schedule:
    """What distinguishes the protocols: head architecture, data and the schedule at 16 images per batch."""

    arch: Literal["c4", "fpn"]
    data: Literal["coco", "voc"]
    max_iter: int
    steps: tuple[int, ...]
    warmup_iters: int
    min_size_train: tuple[int, ...]


# COCO: 1x = 90k iterations, steps 60k/80k; 2x = 180k, steps 120k/160k; train sizes 640..800 step 32; warm-up
# left at detectron2's default 1000 (docs/protocols.md §7.1: coco_R_50_C4_2x.yaml and its 1x note; detectron2 Base-RCNN-C4/FPN.yaml).
# VOC: 24k iterations, steps 18k/22k, warm-up 100, train sizes 480..800 step 32 (docs/protocols.md §7.1: pascal_voc_R_50_C4_24k.yaml).
_COCO_SIZES = tuple(range(640, 801, 32))
_PROTOCOLS: dict[str, _Schedule] = {
    "coco_r50_c4_1x": _Schedule("c4", "coco", 90_000, (60_000, 80_000), 1000, _COCO_SIZES),
    "coco_r50_c4_2x": _Schedule("c4", "coco", 180_000, (120_000, 160_000), 1000, _COCO_SIZES),
    "coco_r50_fpn_1x": _Schedule("fpn", "coco", 90_000, (60_000, 80_000), 1000, _COCO_SIZES),
    "coco_r50_fpn_2x": _Schedule("fpn", "coco", 180_000, (120_000, 160_000), 1000, _COCO_SIZES),
    "voc_r50_c4_24k": _Schedule("c4", "voc", 24_000, (18_000, 22_000), 100, tuple(range(480, 801, 32))),
}
_BASE_BATCH, _BASE_LR = 16, 0.02  # docs/protocols.md §7.1, Base-RCNN-C4-BN.yaml: SOLVER.IMS_PER_BATCH 16, BASE_LR 0.02


def _c4_model() -> dict[str, Any]:
    """MoCo's Base-RCNN-C4-BN.yaml (``docs/protocols.md`` §7.1; ``docs/corinfomax.md`` §4.3 uses the same)."""
    return {
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 0},  # nothing frozen
        # MoCo's config uses naiveSyncBN, commenting that "SyncBN seems to cause larger variance"
        "RESNETS": {"NORM": "naiveSyncBN"},
        "RPN": {"PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 1000},
        "ROI_HEADS": {"NAME": EXTRA_NORM_HEAD},
    }


def _fpn_model() -> dict[str, Any]:
    """R50-FPN as in detectron2's Base-RCNN-FPN.yaml with SyncBN in the backbone, FPN and heads.

    ``docs/mveb.md`` §4.3: Mask R-CNN R50-FPN with MoCo's hyper-parameters, "SyncBN in the backbone and FPN"; MoCo
    also puts BN in the newly initialised layers. The normalised heads (4 conv + 1 fc box head, normalised
    mask head) are detectron2's configs/Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml.
    """
    levels = ["res2", "res3", "res4", "res5"]
    return {
        "BACKBONE": {"NAME": "build_resnet_fpn_backbone", "FREEZE_AT": 0},
        "RESNETS": {"NORM": "SyncBN", "OUT_FEATURES": levels},
        "FPN": {"IN_FEATURES": levels, "NORM": "SyncBN"},
        "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
        "RPN": {"IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "PRE_NMS_TOPK_TRAIN": 2000, "PRE_NMS_TOPK_TEST": 1000,
                "POST_NMS_TOPK_TRAIN": 1000, "POST_NMS_TOPK_TEST": 1000},
        "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"]},
        "ROI_BOX_HEAD": {"NAME": "FastRCNNConvFCHead", "NUM_CONV": 4, "NUM_FC": 1, "POOLER_RESOLUTION": 7, "NORM": "SyncBN"},
        "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4, "POOLER_RESOLUTION": 14, "NORM": "SyncBN"},
    }


class Detectron2Config(ConfigModel):
    """The detectron2 backend's protocol and what a run may change of it (schedule length, sizes, cost knobs)."""

    protocol: Protocol = Field("coco_r50_fpn_1x", description="MoCo's / MVEB's protocol: R50-C4 or R50-FPN on COCO, R50-C4 on VOC")
    ims_per_batch: int = Field(16, ge=1, description="images per iteration; lr, iterations, steps and warm-up scale from 16")
    iterations: int | None = Field(None, ge=1, description="explicit number of iterations (steps follow in proportion)")
    min_sizes: list[int] | None = Field(None, min_length=1, description="shorter-side training sizes; None: the protocol's, "
                                        "or the images' own when far smaller (bench/transfer/sizes.py)")
    max_size: int | None = Field(None, ge=1, description="longer-side cap; None: 1333 or the images'")
    test_size: int | None = Field(None, ge=1, description="shorter-side test size; None: 800 or the images'")
    roi_batch_size: int = Field(512, ge=1, description="proposals sampled per image for the ROI heads' loss")
    proposals: int | None = Field(None, ge=1, description="RPN proposals kept per image at test time; None: the protocol's 1000")
    detections: int = Field(100, ge=1, description="detections kept per image at test time (COCO's AP counts up to 100)")
    precise_bn_iterations: int = Field(200, ge=0, description="batches of precise BN statistics after training (0: none)")
    eval_period: int = Field(0, ge=0, description="evaluate every N iterations too (0: once, at the end)")
    checkpoint_every: int = Field(5000, ge=1, description="write a detectron2 checkpoint every N iterations")
    num_workers: int = Field(4, ge=0, description="data-loading processes")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(0, ge=0, description="seed of the heads' initialisation and the data order (detectron2's SEED)")


def protocol_sizes(protocol: Protocol) -> Sizes:
    """The training sizes, longer-side cap and test size of ``protocol`` (test 800, cap 1333 for all, ``docs/protocols.md`` §7.1)."""
    return Sizes(_PROTOCOLS[protocol].min_size_train, 1333, 800)


def protocol_arch(protocol: Protocol) -> Literal["c4", "fpn"]:
    """The head architecture of ``protocol``."""
    return _PROTOCOLS[protocol].arch


def mask_format(coco: COCO) -> Literal["bitmask", "polygon"]:
    """detectron2's INPUT.MASK_FORMAT for a COCO-format set: ``bitmask`` when a non-crowd instance mask is RLE (as in
    the synthetic set), else ``polygon`` (COCO 2017, whose RLE masks are crowd regions, which training skips)."""
    rle = any(isinstance(a.get("segmentation"), dict) for a in coco.dataset["annotations"] if not a["iscrowd"])
    return "bitmask" if rle else "polygon"


def _solver(sched: _Schedule, options: Detectron2Config) -> dict[str, Any]:
    """SOLVER: the protocol's schedule scaled to ``ims_per_batch`` (linear scaling rule), or cut to ``iterations``."""
    scale = options.ims_per_batch / _BASE_BATCH
    max_iter = round(sched.max_iter / scale)
    steps = [round(s / scale) for s in sched.steps]
    warmup = round(sched.warmup_iters / scale)
    if options.iterations is not None:
        # a step at or after the last iteration changes nothing (and detectron2's scheduler refuses it)
        steps = [round(s * options.iterations / max_iter) for s in steps if round(s * options.iterations / max_iter) < options.iterations]
        max_iter, warmup = options.iterations, min(warmup, options.iterations)
    return {"IMS_PER_BATCH": options.ims_per_batch, "BASE_LR": _BASE_LR * scale, "STEPS": steps, "MAX_ITER": max_iter,
            "WARMUP_ITERS": warmup, "WARMUP_FACTOR": 0.001, "WARMUP_METHOD": "linear",
            "CHECKPOINT_PERIOD": options.checkpoint_every}


def detection_config(options: Detectron2Config, weights: Path, *, output_dir: Path, train_split: str = "train2017",
                     val_split: str = "val2017", num_classes: int = 80, masks: Literal["bitmask", "polygon"] = "polygon",
                     sizes: Sizes | None = None, device: Literal["cpu", "cuda"] = "cuda") -> dict[str, Any]:
    """The full detectron2 config of one transfer protocol, as a nested dict (YAML-ready, no ``_BASE_``).

    ``weights`` is the pickle ``convert_checkpoint`` wrote. The coco_* protocols read a COCO-format set
    (``<dataset_root>/annotations/instances_<split>.json`` and ``<dataset_root>/<split>/``, the root given to
    ``train_detectron2``) with ``num_classes`` categories whose masks are in format ``masks`` (``mask_format``);
    voc_r50_c4_24k reads VOC2007+2012 trainval and tests on VOC2007 test, so its splits and classes are fixed.
    Off 16 images per batch, the schedule follows the linear scaling rule (as detectron2's
    DefaultTrainer.auto_scale_workers): lr x k, iterations, steps and warm-up / k with k = ims_per_batch / 16.
    ``sizes`` (default: the protocol's) are the training and test sizes; the options' sizes, when set, win.
    """
    sched = _PROTOCOLS[options.protocol]
    if sched.data == "voc" and (train_split, val_split, num_classes) != ("train2017", "val2017", 80):
        raise ConfigError(f"protocol {options.protocol} trains on VOC2007+2012 trainval and tests on VOC2007 test (20 classes); "
                          "train_split, val_split and num_classes apply to the coco_* protocols only: leave them unset")
    if num_classes < 1:
        raise ConfigError(f"detectron2 transfer: num_classes ({num_classes}) must be >= 1")
    base = sizes or protocol_sizes(options.protocol)
    sizes = Sizes(tuple(options.min_sizes or base.min_sizes), options.max_size or base.max_size, options.test_size or base.test_size)
    model = _c4_model() if sched.arch == "c4" else _fpn_model()
    if sched.data == "voc":
        train, test = list(VOC_SETS)[:2], list(VOC_SETS)[2:]
    else:
        train, test = [f"{DATASET_PREFIX}coco_{train_split}"], [f"{DATASET_PREFIX}coco_{val_split}"]
    model["RESNETS"].update({"DEPTH": 50, "STRIDE_IN_1X1": False})  # torchvision puts the stride in the 3x3 (docs/protocols.md §7.1, *_moco.yaml)
    model["ROI_HEADS"].update({"NUM_CLASSES": 20 if sched.data == "voc" else num_classes, "BATCH_SIZE_PER_IMAGE": options.roi_batch_size})
    if options.proposals is not None:
        model["RPN"]["POST_NMS_TOPK_TEST"] = options.proposals
    return {
        "VERSION": 2,
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "DEVICE": device,
            "WEIGHTS": str(weights),
            "MASK_ON": sched.data == "coco",  # Mask R-CNN on COCO, Faster R-CNN on VOC (``docs/protocols.md`` §7.1)
            # torchvision RGB statistics on the 0-255 scale (docs/protocols.md §7.1, coco_R_50_C4_2x_moco.yaml)
            "PIXEL_MEAN": [123.675, 116.280, 103.530],
            "PIXEL_STD": [58.395, 57.120, 57.375],
            **model,
        },
        "INPUT": {"FORMAT": "RGB", "MASK_FORMAT": masks, "MIN_SIZE_TRAIN": list(sizes.min_sizes), "MIN_SIZE_TEST": sizes.test_size,
                  "MAX_SIZE_TRAIN": sizes.max_size, "MAX_SIZE_TEST": sizes.max_size},
        "DATASETS": {"TRAIN": train, "TEST": test},
        "DATALOADER": {"NUM_WORKERS": options.num_workers},
        "SOLVER": _solver(sched, options),
        # docs/protocols.md §7.1, Base-RCNN-C4-BN.yaml: precise BN
        "TEST": {"EVAL_PERIOD": options.eval_period, "DETECTIONS_PER_IMAGE": options.detections,
                 "PRECISE_BN": {"ENABLED": options.precise_bn_iterations > 0, "NUM_ITER": max(options.precise_bn_iterations, 1)}},
        "OUTPUT_DIR": str(output_dir),
        "SEED": options.seed,
    }


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    """Write ``cfg`` as a detectron2 YAML config (what ``get_cfg().merge_from_file`` reads) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


