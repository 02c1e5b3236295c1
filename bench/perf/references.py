"""A scenario's images/s three ways, side by side in one process on one device.

- ours: the engine itself (``train``): uint8 data on the device, views made there by ``ViewMaker``;
- compute bound: the same engine with un-augmented views, i.e. the training step on tensors already on
  the device;
- classic: the same model and optimizer fed by torchvision's per-sample transforms on PIL images in a
  DataLoader with every CPU core (persistent workers, pinned memory), as solo-learn and lightly do
  without DALI.

Each engine run is one warm-up epoch plus ``repeats`` timed epochs (the engine times every epoch and
waits for the device at its end); the median epoch is reported. Peak CUDA memory is that of ours.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from bench.config.run import RunConfig
from bench.data.base import ImageSet
from bench.data.registry import DatasetSplits, load_dataset
from bench.data.views import Views, build_recipe, torchvision_pipeline
from bench.perf.scenarios import Scenario
from bench.train.checkpoint import CHECKPOINT
from bench.train.engine import TrainResult, autocast, build_method, cell_scope, pick_device, train
from bench.train.optim import build_optimizer

GIB = 2**30


class PilViews(Dataset):
    """RGB images as PIL, each item the views of one image made by torchvision's transforms, its label and index."""

    def __init__(self, split: ImageSet, transforms: list):
        self.images = [Image.fromarray(a) for a in split.images.permute(0, 2, 3, 1).numpy()]
        self.labels = split.labels.tolist()
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int, int]:
        return [t(self.images[i]) for t in self.transforms], self.labels[i], i


def train_fresh(cfg: RunConfig, run_dir: Path, splits: DatasetSplits | None = None) -> TrainResult:
    """``train`` from step 0: a checkpoint a former measurement left in ``run_dir`` is removed first."""
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return train(cfg, run_dir, splits=splits)


def engine_images_per_s(cfg: RunConfig, splits: DatasetSplits, run_dir: Path) -> float:
    """Median images/s of the engine's timed epochs (the first epoch is the warm-up)."""
    history = train_fresh(cfg, run_dir, splits).history
    return statistics.median(record["images_per_s"] for record in history[1:])


def classic_images_per_s(cfg: RunConfig, splits: DatasetSplits) -> tuple[float, int]:
    """Median images/s of the engine's step fed by the classic pipeline, and its number of workers.

    The model is set up as ``train`` does it (channels_last on CUDA, optional compile); the step is the
    engine's: autocast forward, backward, optimizer step, the method's step hook, the loss summed on the device.
    """
    with cell_scope(cfg):
        return _classic_images_per_s(cfg, splits, pick_device(cfg.train.device))


def _classic_images_per_s(cfg: RunConfig, splits: DatasetSplits, device: torch.device) -> tuple[float, int]:
    pretrain = splits.pretrain
    method = build_method(cfg, splits).to(device)
    channels_last = device.type == "cuda" and cfg.train.channels_last
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        method.backbone.compile()
    optimizer = build_optimizer(method, cfg.optimizer, cfg.batch_size)
    transforms = [torchvision_pipeline(s, pretrain.mean, pretrain.std, pretrain.image_size) for s in build_recipe(cfg.augment)]
    workers = os.cpu_count() or 1
    loader = DataLoader(PilViews(pretrain, transforms), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=True, pin_memory=device.type == "cuda")
    total = len(loader) * cfg.epochs
    rates = []
    method.train()
    for epoch in range(cfg.epochs):
        loss_sum = torch.zeros((), device=device)
        t0, seen = time.perf_counter(), 0
        for b, (crops, labels, index) in enumerate(loader):
            crops = [c.to(device, non_blocking=True) for c in crops]
            if channels_last:
                crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
            views = Views(crops, None, labels.to(device, non_blocking=True), index.to(device, non_blocking=True))
            step = epoch * len(loader) + b
            with autocast(cfg, device):
                loss = method(views, step, total)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.on_step_end(step, total)
            loss_sum += loss.detach().float()
            seen += labels.shape[0]
        float(loss_sum)  # waits for the device
        rates.append(seen / (time.perf_counter() - t0))
    return statistics.median(rates[1:]), workers


def measure_scenario(scenario: Scenario, device: torch.device, scratch: Path) -> dict[str, float]:
    """ours, classic and compute-bound images/s of one scenario, their ratios, and ours' peak CUDA memory."""
    cfg = scenario.run_config(device)
    splits = load_dataset(cfg.dataset)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ours = engine_images_per_s(cfg, splits, scratch / f"{scenario.name}-ours")
    figures = {"ours_images_per_s": ours}
    if cuda:
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / GIB
    release(device)
    figures["compute_bound_images_per_s"] = engine_images_per_s(
        scenario.run_config(device, compute_bound=True), splits, scratch / f"{scenario.name}-compute")
    release(device)
    figures["classic_images_per_s"], figures["classic_workers"] = classic_images_per_s(cfg, splits)
    release(device)
    figures["ours_vs_classic"] = ours / figures["classic_images_per_s"]
    figures["ours_vs_compute_bound"] = ours / figures["compute_bound_images_per_s"]
    return figures


def release(device: torch.device) -> None:
    """Free what the last measurement left behind, so the next one starts from the same memory state."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
