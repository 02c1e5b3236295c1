"""detectron2 backend of detection transfer: fine-tune and evaluate with detectron2's DefaultTrainer.

``detectron2_transfer`` is the stage's entry: it converts the checkpoint, writes the protocol's config for the
data (sizes, mask format; bench/transfer/detectron2.py), checks that an iteration fits the device's memory and
trains. Preemption follows bench/transfer/interrupt.py: SIGTERM drops the running iteration's forward and
backward at once and stops an evaluation at once; elsewhere (the optimizer step, the hooks: LR schedule,
periodic checkpoint, and precise BN after the last iteration, which runs ``precise_bn_iterations`` forward
passes to its end first) it is honoured when the iteration's hooks are done. A checkpoint of the iterations
done is written (``model_preempted.pth``) and the next call resumes from it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.core.cost import stage
from bench.core.torch_state import torch_scope
from bench.errors import ConfigError, DataError, DetectionDiverged
from bench.core.device import pick_device
from bench.core.signals import Preempted
from bench.transfer.coco import CocoConfig, load_coco
from bench.transfer.detectron2 import (DATASET_PREFIX, EXTRA_NORM_HEAD, VOC_SETS, Detectron2Config, convert_checkpoint,
                                       detection_config, mask_format, protocol_arch, protocol_sizes,
                                       write_config)
from bench.transfer.evaluate import METRICS, coco_evaluate
from bench.transfer.interrupt import SigtermStop
from bench.transfer.memory import require_fit
from bench.transfer.sizes import largest_input, resolve_sizes

#: the preemption checkpoint (detectron2's last_checkpoint file points at it until a later one is written)
PREEMPTED = "model_preempted"


def detectron2_transfer(options: Detectron2Config, source: Path | None, coco: CocoConfig, run_dir: Path) -> dict[str, float]:
    """Fine-tune and evaluate the coco_* protocol of ``options`` from ``source`` (a ``model.pt``) on ``coco``.

    Returns ``bbox.AP``, ``bbox.AP50``, ... and ``segm.*`` as fractions. ConfigError for a missing source, a
    missing detectron2, the VOC protocol (it reads a VOCdevkit, not a COCO-format set: use ``train_detectron2``)
    or an iteration that does not fit the device's memory.
    """
    if source is None:
        raise ConfigError("the detectron2 backend starts from a pre-trained checkpoint; give one, or use backend: torchvision")
    if options.protocol.startswith("voc"):
        raise ConfigError(f"protocol {options.protocol} reads a Pascal VOC devkit, not the COCO-format set of the detection "
                          "stage: choose a coco_* protocol, or call bench.transfer.detectron2_train.train_detectron2")
    splits = load_coco(coco)
    sizes = resolve_sizes(protocol_sizes(options.protocol), splits.train.coco, splits.val.coco,
                          min_sizes=options.min_sizes, max_size=options.max_size, test_size=options.test_size)
    device = pick_device(options.device)
    require_fit(f"detectron2_{protocol_arch(options.protocol)}", options.ims_per_batch, largest_input(splits.train.coco, sizes),
                options.roi_batch_size, device, "lower detectron2.ims_per_batch, detectron2.roi_batch_size or the training "
                "sizes (detectron2.min_sizes, detectron2.max_size)")
    _require_detectron2()
    weights = run_dir / "backbone.pkl"
    convert_checkpoint(source, weights)
    cfg = detection_config(options, weights, output_dir=run_dir, train_split=coco.train_split, val_split=coco.val_split,
                           num_classes=len(splits.train.classes), masks=mask_format(splits.train.coco), sizes=sizes,
                           device=device.type)
    Console(stderr=True).print(
        f"fine-tuning detectron2 {options.protocol} from {source}: {cfg['SOLVER']['MAX_ITER']} iterations of "
        f"{options.ims_per_batch} images, shorter side {list(sizes.min_sizes)} px (test {sizes.test_size}), longer side <= "
        f"{sizes.max_size}, {cfg['INPUT']['MASK_FORMAT']} masks, on {device.type} -> {run_dir}", markup=False, highlight=False)
    return train_detectron2(cfg, dataset_root=coco.root)


def _require_detectron2() -> None:
    if importlib.util.find_spec("detectron2") is None:
        raise ConfigError("detectron2 is not installed: use the GPU worker image (docker/), which builds it from source, "
                          "install it as .ci/run does, or run detection transfer with backend: torchvision")


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
    """detectron2's evaluator output ``{"bbox": {"AP": 40.1, ...}, "segm": ...}`` (percent) as ``{"bbox.AP": 0.401, ...}``:
    fractions like bench.transfer.evaluate, summary metrics only, and, as there, no metric that the data leaves
    undefined (detectron2's NaN for an area range without ground-truth objects)."""
    return {f"{task}.{k}": float(v) / 100 for task, values in results.items() for k, v in values.items()
            if k in METRICS and math.isfinite(v)}


def train_detectron2(cfg: dict[str, Any], *, dataset_root: Path, num_gpus: int = 1) -> dict[str, float]:
    """Fine-tune and evaluate with detectron2's DefaultTrainer; return ``bbox.AP``, ``bbox.AP50``, ... (and ``segm.*``).

    Registers the datasets of ``cfg`` found under ``dataset_root``, writes ``cfg`` to
    ``OUTPUT_DIR/config.yaml`` (the exact config trained), trains on ``num_gpus`` GPUs of this machine (or the
    CPU, with MODEL.DEVICE cpu), resuming from OUTPUT_DIR's last detectron2 checkpoint when there is one, and
    evaluates with COCOEvaluator (Pascal VOC's evaluator for the VOC protocol, as MoCo). A model without
    predictions scores AP 0 (with a NoPredictionsWarning). Raises ConfigError when detectron2 is not installed,
    DataError when a dataset file is missing, and Preempted on SIGTERM (after writing a checkpoint).
    """
    _require_detectron2()
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
    # detectron2 draws the heads' initialisation and its sampler's seed from the global generators: seeded here
    with torch_scope(seed=cfg.SEED if cfg.SEED >= 0 else None), SigtermStop() as stop, _quiet_preemption():
        trainer = _trainer_class(stop)(cfg)
        stop.watch_backward(trainer.model)
        trainer.resume_or_load(resume=True)
        try:
            with stage("train"):
                trainer.train()
        except Preempted:
            raise Preempted(_save_preempted(trainer)) from None
        except FloatingPointError:  # detectron2's check of the iteration's losses, before its optimizer step
            raise DetectionDiverged(trainer.iter + 1, "NaN or infinite", "lower the learning rate (it scales with "
                                    "detectron2.ims_per_batch) or use a pre-trained backbone") from None
    if comm.is_main_process():  # DefaultTrainer's evaluation hook keeps the results of its final evaluation here
        metrics_file.write_text(json.dumps(detectron2_metrics(trainer._last_eval_results), indent=2))


def _trainer_class(stop: SigtermStop) -> type:
    """DefaultTrainer with our evaluators, SIGTERM regions (forward and backward, evaluation) and a preemption hook."""
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultTrainer, HookBase
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    class Evaluator(COCOEvaluator):
        def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
            if coco_eval is None:  # no prediction at all: detectron2 reports NaN for every metric; it is AP 0
                return {k.split(".", 1)[1]: 100 * v for k, v in coco_evaluate(self._coco_api, [], (iou_type,)).items()}
            return super()._derive_coco_results(coco_eval, iou_type, class_names)

    class EndRegion(HookBase):
        """Hook of the inner SimpleTrainer: the optimizer step after backward is not to be interrupted."""

        def after_backward(self):
            self.trainer.outer.end_region()

    class Preemption(HookBase):
        """Last hook: records the iterations done and honours a SIGTERM that came outside a region."""

        def before_train(self):
            self.trainer.done = self.trainer.start_iter - 1

        def after_step(self):
            self.trainer.done = self.trainer.iter
            if stop.raised:
                raise Preempted("SIGTERM")

    class Trainer(DefaultTrainer):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.done, self.end_region = -1, lambda: None
            self._trainer.outer = self
            self._trainer.register_hooks([EndRegion()])
            self.register_hooks([Preemption()])

        def run_step(self):
            with stop.abortable(self.model) as self.end_region:
                super().run_step()

        @classmethod
        def build_evaluator(cls, cfg, dataset_name):
            if MetadataCatalog.get(dataset_name).evaluator_type == "pascal_voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            return Evaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"))

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            with stop.abortable(), stage("eval", carve=True):
                return super().test(cfg, model, evaluators)

    return Trainer


def _save_preempted(trainer) -> str:
    """Write the checkpoint a preempted ``trainer`` resumes from (none after training: model_final is there); the message."""
    if trainer.iter >= trainer.max_iter:
        return "SIGTERM while evaluating the fine-tuned detector; its final checkpoint is kept"
    trainer.iter = trainer.done  # detectron2 resumes at the iteration after the checkpoint's
    trainer.checkpointer.save(PREEMPTED)
    return (f"SIGTERM at detectron2 iteration {trainer.done + 2}; checkpoint of the {trainer.done + 1} iterations done "
            f"written to {Path(trainer.cfg.OUTPUT_DIR) / PREEMPTED}.pth")


@contextlib.contextmanager
def _quiet_preemption() -> Iterator[None]:
    """Leave out the traceback detectron2's training loop logs for every exception when it is our Preempted."""
    logger = logging.getLogger("detectron2.engine.train_loop")

    def keep(record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Preempted))

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _register_extra_norm_head() -> None:
    """Register MoCo's C4 ROI head (``docs/protocols.md`` §7.1): detectron2's Res5ROIHeads with a norm layer after res5."""
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    if EXTRA_NORM_HEAD in ROI_HEADS_REGISTRY:
        return

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        def __init__(self, cfg, input_shape):
            super().__init__(cfg, input_shape)
            self.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, self.res5[-1].out_channels))

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
