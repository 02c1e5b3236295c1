"""detectron2 backend of detection transfer, following MoCo's protocol (specs/anchors-others.md §C).

Three steps: convert a pre-trained ResNet-50 backbone (``model.pt``) to a detectron2 weight pickle,
write the detectron2 config of one protocol (R50-C4 or R50-FPN on COCO, R50-C4 on VOC07+12), and train
and evaluate it with detectron2's DefaultTrainer. Only the last step needs detectron2, which has no wheel:
the GPU worker image (docker/) builds it; everything else runs without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torchvision import models

from bench.errors import ConfigError, DataError
from bench.transfer.source import read_pretrained

Protocol = Literal["coco_r50_c4_1x", "coco_r50_c4_2x", "coco_r50_fpn_1x", "coco_r50_fpn_2x", "voc_r50_c4_24k"]

#: the ROI head MoCo registers for C4: detectron2's Res5ROIHeads plus a norm layer after res5 (§C.2)
EXTRA_NORM_HEAD = "Res5ROIHeadsExtraNorm"
#: prefix of the dataset names this module registers in detectron2's DatasetCatalog
DATASET_PREFIX = "ssl_bench_"
#: Pascal VOC sets of MoCo's VOC protocol (§C.2), the two training sets first:
#: dataset name -> (devkit folder, image-set split, year)
VOC_SETS = {
    "ssl_bench_voc_2007_trainval": ("VOC2007", "trainval", 2007),
    "ssl_bench_voc_2012_trainval": ("VOC2012", "trainval", 2012),
    "ssl_bench_voc_2007_test": ("VOC2007", "test", 2007),
}
#: the summary metrics detectron2's COCO and Pascal VOC evaluators report per task (per-class APs are left out)
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

_BLOCK_LAYERS = {"bn1": "conv1.norm", "bn2": "conv2.norm", "bn3": "conv3.norm",
                 "downsample.0": "shortcut", "downsample.1": "shortcut.norm"}


# ----------------------------------------------------------------------------------------- weights


def detectron2_name(name: str) -> str:
    """detectron2's name of a torchvision ResNet trunk tensor (§C.1's renaming).

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
    methods with two). Tensor names are renamed as MoCo's convert-pretrain-to-detectron2.py does (§C.1);
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
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(payload, f)
    os.replace(tmp, dst)
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
# left at detectron2's default 1000 (§C.2: coco_R_50_C4_2x.yaml and its 1x note; detectron2 Base-RCNN-C4/FPN.yaml).
# VOC: 24k iterations, steps 18k/22k, warm-up 100, train sizes 480..800 step 32 (§C.2: pascal_voc_R_50_C4_24k.yaml).
_COCO_SIZES = tuple(range(640, 801, 32))
_PROTOCOLS: dict[str, _Schedule] = {
    "coco_r50_c4_1x": _Schedule("c4", "coco", 90_000, (60_000, 80_000), 1000, _COCO_SIZES),
    "coco_r50_c4_2x": _Schedule("c4", "coco", 180_000, (120_000, 160_000), 1000, _COCO_SIZES),
    "coco_r50_fpn_1x": _Schedule("fpn", "coco", 90_000, (60_000, 80_000), 1000, _COCO_SIZES),
    "coco_r50_fpn_2x": _Schedule("fpn", "coco", 180_000, (120_000, 160_000), 1000, _COCO_SIZES),
    "voc_r50_c4_24k": _Schedule("c4", "voc", 24_000, (18_000, 22_000), 100, tuple(range(480, 801, 32))),
}
_BASE_BATCH, _BASE_LR = 16, 0.02  # §C.2 Base-RCNN-C4-BN.yaml: SOLVER.IMS_PER_BATCH 16, BASE_LR 0.02


def _c4_model() -> dict[str, Any]:
    """MoCo's Base-RCNN-C4-BN.yaml (§C.2; corinfomax.md §4.4 uses the same)."""
    return {
        "BACKBONE": {"NAME": "build_resnet_backbone", "FREEZE_AT": 0},  # nothing frozen
        # MoCo's config uses naiveSyncBN, commenting that "SyncBN seems to cause larger variance"
        "RESNETS": {"NORM": "naiveSyncBN"},
        "RPN": {"PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": 1000},
        "ROI_HEADS": {"NAME": EXTRA_NORM_HEAD},
    }


def _fpn_model() -> dict[str, Any]:
    """R50-FPN as in detectron2's Base-RCNN-FPN.yaml with SyncBN in the backbone, FPN and heads.

    mveb.md §4.4: Mask R-CNN R50-FPN with MoCo's hyper-parameters, "SyncBN in the backbone and FPN"; MoCo
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


def detection_config(protocol: Protocol, weights: Path, *, output_dir: Path, train_split: str = "train2017",
                     val_split: str = "val2017", num_classes: int = 80, ims_per_batch: int = 16,
                     eval_period: int = 0) -> dict[str, Any]:
    """The full detectron2 config of one transfer protocol, as a nested dict (YAML-ready, no ``_BASE_``).

    ``weights`` is the pickle ``convert_checkpoint`` wrote. The coco_* protocols read a COCO-format set
    (``<dataset_root>/annotations/instances_<split>.json`` and ``<dataset_root>/<split>/``, the root given to
    ``train_detectron2``) with ``num_classes`` categories; voc_r50_c4_24k reads VOC2007+2012 trainval and tests
    on VOC2007 test, so its splits and classes are fixed. Off 16 images per batch, the schedule follows the
    linear scaling rule (as detectron2's DefaultTrainer.auto_scale_workers): lr x k, iterations, steps and
    warm-up / k with k = ims_per_batch / 16. ``eval_period`` is in iterations; 0 evaluates once, at the end.
    """
    sched = _PROTOCOLS[protocol]
    if sched.data == "voc" and (train_split, val_split, num_classes) != ("train2017", "val2017", 80):
        raise ConfigError(f"protocol {protocol} trains on VOC2007+2012 trainval and tests on VOC2007 test (20 classes); "
                          "train_split, val_split and num_classes apply to the coco_* protocols only: leave them unset")
    if ims_per_batch < 1 or num_classes < 1 or eval_period < 0:
        raise ConfigError(f"detectron2 transfer: ims_per_batch ({ims_per_batch}) and num_classes ({num_classes}) must be "
                          f">= 1 and eval_period ({eval_period}) >= 0")
    scale = ims_per_batch / _BASE_BATCH
    model = _c4_model() if sched.arch == "c4" else _fpn_model()
    if sched.data == "voc":
        train, test = list(VOC_SETS)[:2], list(VOC_SETS)[2:]
    else:
        train, test = [f"{DATASET_PREFIX}coco_{train_split}"], [f"{DATASET_PREFIX}coco_{val_split}"]
    model["RESNETS"].update({"DEPTH": 50, "STRIDE_IN_1X1": False})  # torchvision puts the stride in the 3x3 (§C.2 *_moco.yaml)
    model["ROI_HEADS"]["NUM_CLASSES"] = 20 if sched.data == "voc" else num_classes
    return {
        "VERSION": 2,
        "MODEL": {
            "META_ARCHITECTURE": "GeneralizedRCNN",
            "WEIGHTS": str(weights),
            "MASK_ON": sched.data == "coco",  # Mask R-CNN on COCO, Faster R-CNN on VOC (§C.2)
            # torchvision RGB statistics on the 0-255 scale (§C.2 coco_R_50_C4_2x_moco.yaml)
            "PIXEL_MEAN": [123.675, 116.280, 103.530],
            "PIXEL_STD": [58.395, 57.120, 57.375],
            **model,
        },
        "INPUT": {"FORMAT": "RGB", "MIN_SIZE_TRAIN": list(sched.min_size_train), "MIN_SIZE_TEST": 800,
                  "MAX_SIZE_TRAIN": 1333, "MAX_SIZE_TEST": 1333},
        "DATASETS": {"TRAIN": train, "TEST": test},
        "SOLVER": {
            "IMS_PER_BATCH": ims_per_batch,
            "BASE_LR": _BASE_LR * scale,
            "STEPS": [round(s / scale) for s in sched.steps],
            "MAX_ITER": round(sched.max_iter / scale),
            "WARMUP_ITERS": round(sched.warmup_iters / scale),
            "WARMUP_FACTOR": 0.001,
            "WARMUP_METHOD": "linear",
        },
        "TEST": {"EVAL_PERIOD": eval_period, "PRECISE_BN": {"ENABLED": True}},  # §C.2 Base-RCNN-C4-BN.yaml
        "OUTPUT_DIR": str(output_dir),
    }


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    """Write ``cfg`` as a detectron2 YAML config (what ``get_cfg().merge_from_file`` reads) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------- train


@dataclass(frozen=True)
class CocoSource:
    """A COCO-format set registered with detectron2's register_coco_instances."""

    name: str
    json_file: Path
    image_root: Path


@dataclass(frozen=True)
class VocSource:
    """A Pascal VOC set (VOCdevkit layout) registered with detectron2's register_pascal_voc."""

    name: str
    dirname: Path
    split: str
    year: int


def dataset_sources(cfg: dict[str, Any], dataset_root: Path) -> list[CocoSource | VocSource]:
    """Where the datasets named in ``cfg["DATASETS"]`` live under ``dataset_root``; DataError when files are missing.

    Names not made by ``detection_config`` are left to detectron2's own catalog.
    """
    sources: list[CocoSource | VocSource] = []
    for name in dict.fromkeys([*cfg["DATASETS"]["TRAIN"], *cfg["DATASETS"]["TEST"]]):
        source: CocoSource | VocSource
        if name in VOC_SETS:
            folder, split, year = VOC_SETS[name]
            source = VocSource(name, dataset_root / folder, split, year)
            needed = [source.dirname / "ImageSets" / "Main" / f"{split}.txt", source.dirname / "JPEGImages"]
            fix = (f"put the VOCdevkit folders VOC2007 (trainval and test) and VOC2012 (trainval) from "
                   f"http://host.robots.ox.ac.uk/pascal/VOC/ under {dataset_root}")
        elif name.startswith(f"{DATASET_PREFIX}coco_"):
            split = name.removeprefix(f"{DATASET_PREFIX}coco_")
            source = CocoSource(name, dataset_root / "annotations" / f"instances_{split}.json", dataset_root / split)
            needed = [source.json_file, source.image_root]
            fix = (f"expected the COCO layout annotations/instances_{split}.json + {split}/ under {dataset_root} "
                   "(COCO 2017 from https://cocodataset.org/#download, or the synthetic set of bench.transfer.synthetic)")
        else:
            continue
        for path in needed:
            if not path.exists():
                raise DataError(f"{path} is missing: {fix}")
        sources.append(source)
    return sources


def detectron2_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """detectron2's evaluator output ``{"bbox": {"AP": 40.1, ...}, "segm": ...}`` (percent) as
    ``{"bbox.AP": 0.401, ...}``: fractions like bench.transfer.evaluate, summary metrics only."""
    return {f"{task}.{k}": float(v) / 100 for task, values in results.items() for k, v in values.items() if k in SUMMARY_METRICS}


def train_detectron2(cfg: dict[str, Any], *, dataset_root: Path, num_gpus: int = 1) -> dict[str, float]:
    """Fine-tune and evaluate with detectron2's DefaultTrainer; return ``bbox.AP``, ``bbox.AP50``, ... (and ``segm.*``).

    Registers the datasets of ``cfg`` found under ``dataset_root``, writes ``cfg`` to
    ``OUTPUT_DIR/config.yaml`` (the exact config trained), trains on ``num_gpus`` GPUs of this machine
    (resuming from OUTPUT_DIR's last detectron2 checkpoint when there is one) and evaluates with
    COCOEvaluator (Pascal VOC's evaluator for the VOC protocol, as MoCo). Raises ConfigError when
    detectron2 is not installed and DataError when a dataset file is missing.
    """
    if importlib.util.find_spec("detectron2") is None:
        raise ConfigError("detectron2 is not installed: use the GPU worker image (docker/), which builds it from source, "
                          "or run detection transfer with backend: torchvision")
    if num_gpus < 1 or cfg["SOLVER"]["IMS_PER_BATCH"] % num_gpus:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH={cfg['SOLVER']['IMS_PER_BATCH']} must split evenly over num_gpus={num_gpus}")
    sources = dataset_sources(cfg, dataset_root)
    output_dir = Path(cfg["OUTPUT_DIR"])
    config_file = write_config(cfg, output_dir / "config.yaml")
    metrics_file = output_dir / "metrics.json"
    metrics_file.unlink(missing_ok=True)
    from detectron2.engine import launch

    launch(_train_worker, num_gpus, dist_url="auto", args=(config_file, sources, metrics_file))
    return json.loads(metrics_file.read_text())


def _train_worker(config_file: Path, sources: list[CocoSource | VocSource], metrics_file: Path) -> None:
    """One training process (``launch`` runs one per GPU); the main one writes the metrics to ``metrics_file``."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances, register_pascal_voc
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    from detectron2.utils import comm

    cfg = get_cfg()
    cfg.merge_from_file(str(config_file))
    cfg.freeze()
    for source in sources:
        if source.name in DatasetCatalog.list():  # an earlier call in this process may have used another root
            DatasetCatalog.remove(source.name)
            MetadataCatalog.remove(source.name)
        if isinstance(source, VocSource):
            register_pascal_voc(source.name, str(source.dirname), source.split, source.year)
        else:
            register_coco_instances(source.name, {}, str(source.json_file), str(source.image_root))
    _register_extra_norm_head()

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name):
            if MetadataCatalog.get(dataset_name).evaluator_type == "pascal_voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"))

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    if comm.is_main_process():  # DefaultTrainer's evaluation hook keeps the results of its final evaluation here
        metrics_file.write_text(json.dumps(detectron2_metrics(trainer._last_eval_results), indent=2))


def _register_extra_norm_head() -> None:
    """Register MoCo's C4 ROI head (§C.2): detectron2's Res5ROIHeads with a norm layer after res5."""
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    if EXTRA_NORM_HEAD in ROI_HEADS_REGISTRY:
        return

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        def __init__(self, cfg, input_shape):
            super().__init__(cfg, input_shape)
            self.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, self.res5[-1].out_channels))

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
