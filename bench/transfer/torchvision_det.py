"""torchvision backend of detection transfer: Faster / Mask R-CNN with an FPN on a pre-trained ResNet.

Follows MoCo's protocol where torchvision allows (``docs/protocols.md`` §7.3): every layer trainable
with BatchNorm, multi-scale training sizes, horizontal flips, SGD at lr 0.02 for 16 images per batch with
linear warmup and steps at 2/3 and 8/9 of the schedule. The C4 head (res5 as ROI head) is the detectron2
backend's; this one builds FPN detectors only.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from rich.console import Console
from torch import nn
from torchvision import models
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d

from bench.data.loader import epoch_permutation
from bench.core.cost import stage
from bench.core.device import pick_device
from bench.core.files import write_json
from bench.core.torch_state import torch_scope
from bench.errors import ConfigError, DetectionDiverged
from bench.schema import ConfigModel
from bench.train.checkpoint import CHECKPOINT, restore_state, rng_state, save_state
from bench.train.optim import optimisation_step
from bench.train.progress import progress_bar
from bench.core.signals import Preempted
from bench.transfer.coco import CocoConfig, CocoDetection, CocoSplits, load_coco
from bench.transfer.evaluate import coco_evaluate, to_coco_results
from bench.transfer.interrupt import SigtermStop
from bench.transfer.memory import require_fit
from bench.transfer.sizes import Sizes, largest_input, resolve_sizes
from bench.transfer.source import read_pretrained

Arch = Literal["resnet18", "resnet34", "resnet50"]
ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
REFERENCE_BATCH = 16
REFERENCE_LR = 0.02
SCHEDULE_ITERATIONS = {"1x": 90_000, "2x": 180_000}  # at REFERENCE_BATCH images per iteration
RESULTS = "detection.json"
PROTOCOL_SIZES = Sizes(tuple(range(640, 801, 32)), 1333, 800)  # MoCo's COCO protocol (``docs/protocols.md`` §7.1)


class DetectionConfig(ConfigModel):
    """One detection fine-tuning protocol; the defaults are MoCo's Mask R-CNN R50-FPN 1x on COCO (SyncBN -> BN)."""

    detector: Literal["faster_rcnn", "mask_rcnn"] = "mask_rcnn"
    neck: Literal["fpn", "c4"] = "fpn"
    arch: Arch = Field("resnet50", description="ResNet of a random-init run (no source); a pre-trained source brings its own")
    schedule: Literal["1x", "2x"] = Field("1x", description="1x = 90k iterations at 16 images per batch, 2x = 180k")
    iterations: int | None = Field(None, ge=1, description="explicit number of iterations (replaces the schedule)")
    batch_size: int = Field(16, ge=1, description="images per iteration; schedule and lr scale from 16")
    lr: float = Field(REFERENCE_LR, gt=0, description="learning rate at 16 images per batch (scaled linearly)")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iterations: int = Field(1000, ge=0, description="linear warmup from lr/1000 (cut to the schedule's length)")
    min_sizes: list[int] | None = Field(None, min_length=1, description="shorter-side training sizes, one picked per "
                                        "batch; None: 640..800 step 32, or the images' own when far smaller (sizes.py)")
    max_size: int | None = Field(None, ge=1, description="longer-side cap of the resized images; None: 1333 or the images'")
    test_size: int | None = Field(None, ge=1, description="shorter-side size at evaluation; None: 800 or the images'")
    anchor_sizes: list[int] = Field(default_factory=lambda: [32, 64, 128, 256, 512], min_length=5, max_length=5,
                                    description="RPN anchor size of each FPN level (P2..P6)")
    fpn_channels: int = Field(256, ge=1, description="channels of the FPN levels (and so of the RPN and ROI heads' input)")
    proposals: int = Field(1000, ge=1, description="RPN proposals kept per image after NMS at test time")
    rpn_batch_size: int = Field(256, ge=1, description="anchors sampled per image for the RPN loss")
    roi_batch_size: int = Field(512, ge=1, description="proposals sampled per image for the box (and mask) head loss")
    norm: Literal["bn", "syncbn", "frozen_bn"] = Field("bn", description="backbone norm layers (MoCo: trainable (Sync)BN)")
    trainable_layers: int = Field(5, ge=0, le=5, description="trainable ResNet stages counted from layer4 (5 = all)")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm (None: no clipping, MoCo's)")
    amp: bool = Field(True, description="bf16 autocast (CUDA only; ignored on CPU)")
    checkpoint_every: int = Field(1000, ge=1, description="write run_dir/checkpoint.pt every N iterations")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    progress: bool = Field(True, description="rich progress bar (shown only on a terminal)")

    @model_validator(mode="after")
    def _supported(self) -> "DetectionConfig":
        if self.neck == "c4":
            raise ConfigError("detection neck=c4 (res5 as ROI head, MoCo's R50-C4) is not built by the torchvision "
                              "backend; use neck=fpn here or the detectron2 backend (bench.transfer.detectron2) for C4")
        return self

    @property
    def total_iterations(self) -> int:
        """Iterations of the run: ``iterations`` or the schedule's, scaled by 16 / batch_size."""
        if self.iterations is not None:
            return self.iterations
        return max(1, round(SCHEDULE_ITERATIONS[self.schedule] * REFERENCE_BATCH / self.batch_size))

    @property
    def base_lr(self) -> float:
        """Peak learning rate: ``lr`` scaled linearly from 16 images per batch."""
        return self.lr * self.batch_size / REFERENCE_BATCH


def lr_at(cfg: DetectionConfig, iteration: int) -> float:
    """Learning rate of ``iteration`` (0-based): linear warmup, then x0.1 at 2/3 and 8/9 of the schedule."""
    total = cfg.total_iterations
    warmup = min(cfg.warmup_iterations, total)
    factor = 1.0
    if iteration < warmup:
        alpha = iteration / warmup
        factor = 0.001 * (1 - alpha) + alpha
    steps = (round(total * 2 / 3), round(total * 8 / 9))
    return cfg.base_lr * factor * 0.1 ** sum(iteration >= s for s in steps)


def _norm_layer(norm: str) -> type[nn.Module]:
    return FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d


def _trunk_shapes(arch: str) -> dict[str, torch.Size]:
    """Parameter and buffer shapes of torchvision's ResNet trunk ``arch`` (no fc, no BN counters), on the meta device."""
    with torch.device("meta"):
        net = getattr(models, arch)()
    return {k: v.shape for k, v in net.state_dict().items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _state_arch(state: dict[str, torch.Tensor]) -> str:
    """The ResNet whose trunk ``state`` is, or a description of what it holds when it is none of ARCHS."""
    for arch in ARCHS:
        shapes = _trunk_shapes(arch)
        counted = {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}
        if counted == shapes:
            return arch
    return f"a network of {len(state)} tensors that is no 3-channel torchvision {'/'.join(ARCHS)} trunk"


def build_detector(cfg: DetectionConfig, backbone_state: dict[str, torch.Tensor] | None, arch: str, num_classes: int) -> nn.Module:
    """A torchvision Faster/Mask R-CNN with an FPN on ResNet ``arch`` for ``num_classes`` object categories.

    ``backbone_state`` is the ``backbone`` state_dict of an ssl-bench ``model.pt`` (keys ``net.conv1.weight``, ...)
    or a plain torchvision trunk state_dict; it is loaded strictly (the fc is not part of it). None leaves the
    backbone randomly initialised. Weights of another architecture raise a ConfigError naming both.
    """
    if arch not in ARCHS:
        raise ConfigError(f"detection backbone {arch!r} is not a torchvision ResNet; pre-train one of {', '.join(ARCHS)}")
    net = getattr(models, arch)(weights=None, norm_layer=_norm_layer(cfg.norm))
    net.fc = nn.Identity()
    if backbone_state is not None:
        state = {k.removeprefix("net."): v for k, v in backbone_state.items()}
        found = _state_arch(state)
        if found != arch:
            raise ConfigError(f"the pre-trained backbone weights are of {found}, but the detector was asked for a {arch}; "
                              f"pass arch={found} or the model.pt of a {arch} run")
        net.load_state_dict(state, strict=True)
    trained = ("layer4", "layer3", "layer2", "layer1", "conv1")[: cfg.trainable_layers] + (("bn1",) if cfg.trainable_layers == 5 else ())
    for name, param in net.named_parameters():
        param.requires_grad_(name.startswith(trained))
    widths = [net.inplanes // 8 * 2**i for i in range(4)]
    fpn = BackboneWithFPN(net, {f"layer{i + 1}": str(i) for i in range(4)}, widths, cfg.fpn_channels)
    if cfg.norm == "syncbn":
        fpn = nn.SyncBatchNorm.convert_sync_batchnorm(fpn)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in cfg.anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    detector = MaskRCNN if cfg.detector == "mask_rcnn" else FasterRCNN
    return detector(
        fpn, num_classes=num_classes + 1, min_size=tuple(cfg.min_sizes or PROTOCOL_SIZES.min_sizes),
        max_size=cfg.max_size or PROTOCOL_SIZES.max_size,
        rpn_anchor_generator=anchors, rpn_batch_size_per_image=cfg.rpn_batch_size,
        box_batch_size_per_image=cfg.roi_batch_size, rpn_post_nms_top_n_test=cfg.proposals,
    )


def _batches(data: CocoDetection, cfg: DetectionConfig, start: int) -> Iterator[tuple[int, list[int]]]:
    """(iteration, dataset indices) from ``start`` on; the order of each pass is a pure function of (seed, pass)."""
    per_pass = len(data) // cfg.batch_size
    if per_pass == 0:
        raise ConfigError(f"detection batch_size={cfg.batch_size} is larger than the {len(data)} annotated training "
                          f"images of {data.annotation_file}; lower batch_size")
    order, order_pass = None, -1
    for iteration in range(start, cfg.total_iterations):
        pass_, position = divmod(iteration, per_pass)
        if pass_ != order_pass:  # one shuffle per pass, not per iteration
            order, order_pass = epoch_permutation(len(data), cfg.seed, pass_), pass_
        yield iteration, order[position * cfg.batch_size:(position + 1) * cfg.batch_size].tolist()


def _train_sample(data: CocoDetection, index: int, masks: bool, device: torch.device) -> tuple[torch.Tensor, dict]:
    """Image (float in [0, 1]) and target of one training sample, flipped horizontally with probability 1/2."""
    image, target = data[index]
    image = image.to(device).float() / 255
    kept = {"boxes": target["boxes"].to(device), "labels": target["labels"].to(device)}
    if masks:
        kept["masks"] = target["masks"].to(device)
    if float(torch.rand(())) < 0.5:
        width = image.shape[-1]
        image = image.flip(-1)
        kept["boxes"] = torch.stack([width - kept["boxes"][:, 2], kept["boxes"][:, 1], width - kept["boxes"][:, 0], kept["boxes"][:, 3]], 1)
        if masks:
            kept["masks"] = kept["masks"].flip(-1)
    return image, kept


def _autocast(cfg: DetectionConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_detector(model: nn.Module, data: CocoDetection, cfg: DetectionConfig, device: torch.device) -> dict[str, float]:
    """COCO box (and, for Mask R-CNN, mask) metrics of ``model`` on every image of ``data`` at ``test_size``."""
    model.eval()
    train_sizes = model.transform.min_size
    model.transform.min_size = (cfg.test_size or PROTOCOL_SIZES.test_size,)
    predictions = []
    try:
        for start in range(0, len(data), cfg.batch_size):
            ids = list(range(start, min(start + cfg.batch_size, len(data))))
            images = [data[i][0].to(device).float() / 255 for i in ids]
            with _autocast(cfg, device):
                outputs = model(images)
            outputs = [{k: v.float() if v.is_floating_point() else v for k, v in out.items()} for out in outputs]
            predictions += to_coco_results(outputs, [data.ids[i] for i in ids], data.category_ids)
    finally:
        model.transform.min_size = train_sizes
    iou_types = ("bbox", "segm") if cfg.detector == "mask_rcnn" else ("bbox",)
    return coco_evaluate(data.coco, predictions, iou_types)


def with_sizes(cfg: DetectionConfig, splits: CocoSplits) -> DetectionConfig:
    """``cfg`` with every size it leaves unset resolved: the protocol's, or the images' own (bench/transfer/sizes.py)."""
    sizes = resolve_sizes(PROTOCOL_SIZES, splits.train.coco, splits.val.coco, min_sizes=cfg.min_sizes,
                          max_size=cfg.max_size, test_size=cfg.test_size)
    return cfg.model_copy(update={"min_sizes": list(sizes.min_sizes), "max_size": sizes.max_size, "test_size": sizes.test_size})


def detection_transfer(cfg: DetectionConfig, source: Path | None, coco: CocoConfig, run_dir: Path,
                       console: Console | None = None) -> dict[str, float]:
    """Fine-tune a detector from the backbone of ``source`` (a ``model.pt``; None: random init) and evaluate it.

    Trains on ``coco.train_split`` at the sizes of ``with_sizes``, after checking that an iteration fits the
    device's memory (bench/transfer/memory.py; ConfigError with the numbers otherwise). Writes
    ``run_dir/checkpoint.pt`` atomically every ``checkpoint_every`` iterations and at the end, and resumes from it
    when present (a checkpoint of another config or source raises a ConfigError). SIGTERM stops it within
    seconds, also inside an iteration (bench/transfer/interrupt.py): it writes a checkpoint of the iterations done
    and raises Preempted. Returns every COCO metric of :func:`bench.transfer.evaluate.coco_evaluate` on
    ``coco.val_split`` (``bbox.AP``, ``bbox.AP50``, ..., ``segm.AP``, ... for Mask R-CNN) plus ``train.iterations``
    and ``train.seconds``, also written to ``run_dir/detection.json``.
    """
    device = pick_device(cfg.device)
    state, arch = read_pretrained(source, ARCHS, "the detector's FPN and heads") if source is not None else (None, cfg.arch)
    splits = load_coco(coco)
    cfg = with_sizes(cfg, splits)
    pixels = largest_input(splits.train.coco, Sizes(tuple(cfg.min_sizes), cfg.max_size, cfg.test_size))
    require_fit(arch, cfg.batch_size, pixels, cfg.roi_batch_size, device,
                "lower detector.batch_size or the training sizes (detector.min_sizes, detector.max_size)")
    identity = {"config": cfg.model_dump(mode="json"), "source": None if source is None else str(source), "arch": arch}
    console = console or Console(stderr=True)
    console.print(f"fine-tuning {cfg.detector} {arch}-FPN from {source or 'random init'}: {cfg.total_iterations} iterations of "
                  f"{cfg.batch_size} images, shorter side {cfg.min_sizes} px (test {cfg.test_size}), longer side <= {cfg.max_size} "
                  f"-> {run_dir}", markup=False, highlight=False)
    # the heads' initialisation and the flips draw from torch's generator: seeded here, restored on return
    with torch_scope(seed=cfg.seed), SigtermStop() as stop:
        model = build_detector(cfg, state, arch, len(splits.train.classes)).to(device)
        stop.watch_backward(model)
        with stage("train"):
            seconds = _fine_tune(cfg, model, splits.train, identity, run_dir, stop, console)
        try:
            with stop.abortable(), stage("eval"):
                metrics = evaluate_detector(model, splits.val, cfg, device)
        except Preempted:
            raise Preempted(f"SIGTERM while evaluating the fine-tuned detector; its checkpoint {run_dir / CHECKPOINT} is kept") from None
    metrics.update({"train.iterations": float(cfg.total_iterations), "train.seconds": seconds})
    write_json(metrics, run_dir / RESULTS)
    return metrics


def _fine_tune(cfg: DetectionConfig, model: nn.Module, data: CocoDetection, identity: dict, run_dir: Path,
               stop: SigtermStop, console: Console) -> float:
    """Train ``model`` to ``cfg.total_iterations``, resuming from ``run_dir``'s checkpoint; return the training seconds.

    The step, the checkpoint pair and the progress bar are the engine's (bench/train)."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ckpt = restore_state(run_dir, model, optimizer, same=lambda ckpt: ckpt["identity"] == identity,
                         mismatch=f"{run_dir} holds a detection checkpoint of another config or source; choose another "
                                  "run directory or delete its checkpoint.pt to start over")
    start, seconds, history = (0, 0.0, []) if ckpt is None else (ckpt["iteration"], ckpt["seconds"], list(ckpt["history"]))

    def save(iteration: int, rng: dict | None = None) -> None:
        save_state(run_dir, model, optimizer, position={"iteration": iteration}, seconds=seconds, history=history,
                   identity={"identity": identity}, rng=rng)

    total = cfg.total_iterations
    masks = cfg.detector == "mask_rcnn"
    model.train()
    with progress_bar(console, cfg.progress) as progress:
        task = progress.add_task(f"{cfg.detector} {identity['arch']}", total=total, completed=start, info="")
        t0 = time.perf_counter()
        for iteration, indices in _batches(data, cfg, start):
            rng = rng_state()  # what a resumed run needs to redo this iteration exactly
            try:
                with stop.abortable(model) as end:  # SIGTERM drops this iteration's data, forward and backward
                    value = _step(model, optimizer, params, [_train_sample(data, i, masks, device) for i in indices],
                                  cfg, iteration, end)
            except Preempted:
                seconds += time.perf_counter() - t0
                save(iteration, rng)
                raise Preempted(f"SIGTERM in detection iteration {iteration + 1}; checkpoint of the {iteration} iterations "
                                f"done written to {run_dir / CHECKPOINT}") from None
            history.append({"iteration": iteration + 1, "loss": value})
            progress.update(task, completed=iteration + 1, info=f"loss {value:.3f}")
            done = iteration + 1
            if done == total or done % cfg.checkpoint_every == 0 or stop.raised:
                seconds, t0 = seconds + time.perf_counter() - t0, time.perf_counter()
                save(done)
            if stop.raised and done < total:
                raise Preempted(f"SIGTERM at detection iteration {done}; checkpoint written to {run_dir / CHECKPOINT}")
    return seconds


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
          samples: list[tuple[torch.Tensor, dict]], cfg: DetectionConfig, iteration: int,
          before_update: Callable[[], None]) -> float:
    """One iteration on ``samples``: its learning rate, its loss (DetectionDiverged if not finite, before any update)
    and the shared optimisation step (bench.train.optim); returns the loss.

    The loss is read on the host every iteration, unlike the engine's: torchvision's R-CNN waits for the device
    several times inside its forward anyway (proposal filtering and box sampling select with ``torch.where``), so the
    check costs no extra wait, and a non-finite loss never reaches the weights or a checkpoint."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(cfg, iteration)
    images, targets = zip(*samples)
    with _autocast(cfg, images[0].device):
        losses = model(list(images), list(targets))
    loss = sum(losses.values())
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DetectionDiverged(iteration + 1, value, f"lower detector.lr (now {cfg.lr} at 16 images per batch) or raise "
                                "detector.warmup_iterations")
    optimisation_step(loss, optimizer, params, clip=cfg.grad_clip, clip_mode="global", world=1, before_update=before_update)
    return value
