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
from torchvision.transforms import functional as TF

from bench.config.run import RunConfig
from bench.data.base import ImageSet
from bench.data.registry import DatasetSplits, load_dataset
from bench.data.views import Views, build_recipe, torchvision_pipeline
from bench.perf.scenarios import Scenario
from bench.train.checkpoint import CHECKPOINT
from bench.core.device import pick_device
from bench.train.engine import Loop, TrainResult, cell_scope, setup, train, train_step

GIB = 2**30


class PilViews(Dataset):
    """RGB images as PIL, each item the views of one image made by torchvision's transforms, its label and index;
    with ``clean``, the normalised image itself after the views (for methods that read it, e.g. MV-MR)."""

    def __init__(self, split: ImageSet, transforms: list, clean: bool = False):
        self.images = [Image.fromarray(a) for a in split.images.permute(0, 2, 3, 1).numpy()]
        self.labels = split.labels.tolist()
        self.transforms = transforms
        self.normalize = (split.mean, split.std) if clean else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int, int]:
        views = [t(self.images[i]) for t in self.transforms]
        if self.normalize is not None:
            views.append(TF.normalize(TF.to_tensor(self.images[i]), *self.normalize))
        return views, self.labels[i], i


def train_fresh(cfg: RunConfig, run_dir: Path, splits: DatasetSplits | None = None) -> TrainResult:
    """``train`` from step 0: a checkpoint a former measurement left in ``run_dir`` is removed first."""
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return train(cfg, run_dir, splits=splits)


def engine_images_per_s(cfg: RunConfig, splits: DatasetSplits, run_dir: Path) -> float:
    """Median images/s of the engine's timed epochs (the first epoch is the warm-up)."""
    history = train_fresh(cfg, run_dir, splits).history
    return statistics.median(record.images_per_s for record in history[1:])


def classic_images_per_s(cfg: RunConfig, splits: DatasetSplits, run_dir: Path) -> tuple[float, int]:
    """Median images/s of the engine's training step fed by the classic pipeline, and its number of workers.

    The loop is the engine's (``bench.train.engine``): ``setup`` builds the method as a cell does (SyncBN,
    channels_last, compile, ``method.prepare``, the optimizer's parameter groups) and ``train_step`` is a cell's step
    (lr schedule, autocast forward, backward, clipping, optimizer step, the method's step hook); only the views come
    from the DataLoader instead of the device.
    """
    with cell_scope(cfg):
        device = pick_device(cfg.train.device)
        loop = setup(cfg, run_dir, splits, device)
        pretrain = splits.pretrain
        transforms = [torchvision_pipeline(s, pretrain.mean, pretrain.std, pretrain.image_size) for s in build_recipe(cfg.augment)]
        workers = os.cpu_count() or 1
        loader = DataLoader(PilViews(pretrain, transforms, clean=loop.method.needs_clean_view), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, persistent_workers=True, pin_memory=device.type == "cuda")
        return _classic_rates(loop, loader), workers


def _classic_rates(loop: Loop, loader: DataLoader) -> float:
    """The median images/s of the epochs after the first (the warm-up)."""
    rates = []
    loop.method.train()
    for epoch in range(loop.cfg.epochs):
        loss_sum = torch.zeros((), device=loop.device)
        t0, seen = time.perf_counter(), 0
        for b, (crops, labels, index) in enumerate(loader):
            crops = [c.to(loop.device, non_blocking=True) for c in crops]
            clean = crops.pop() if loop.method.needs_clean_view else None
            views = Views(crops, clean, labels.to(loop.device, non_blocking=True), index.to(loop.device, non_blocking=True))
            loss_sum += train_step(loop, views, epoch * len(loader) + b).loss.detach().float()
            seen += labels.shape[0]
        float(loss_sum)  # waits for the device
        rates.append(seen / (time.perf_counter() - t0))
    return statistics.median(rates[1:])


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
    figures["classic_images_per_s"], figures["classic_workers"] = classic_images_per_s(cfg, splits, scratch / f"{scenario.name}-classic")
    release(device)
    figures["ours_vs_classic"] = ours / figures["classic_images_per_s"]
    figures["ours_vs_compute_bound"] = ours / figures["compute_bound_images_per_s"]
    return figures


def release(device: torch.device) -> None:
    """Free what the last measurement left behind, so the next one starts from the same memory state."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
