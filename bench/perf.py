"""``ssl-bench perf``: throughput of the data path, the training step and the evaluations.

Every ratio is measured side by side in one process on the current device, so the figures compare
like with like on whatever machine runs it. Results are printed and written as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TypeVar

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from bench.config.run import RunConfig, resolve_run_config
from bench.data.base import ImageSet
from bench.data.loader import epoch_permutation, iter_batches
from bench.data.registry import DatasetConfig, load_dataset
from bench.data.views import ViewMaker, build_recipe, torchvision_pipeline
from bench.eval.knn import knn_eval
from bench.eval.linear import LinearConfig, linear_probe
from bench.methods import all_methods
from bench.train.engine import build_method, pick_device, train
from bench.train.optim import build_optimizer

T = TypeVar("T")


def _timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Wall-clock seconds of one call of ``fn`` (device work included) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, result


def _rate(fn: Callable[[], int], device: torch.device) -> float:
    """Items per second of ``fn``, which returns how many items it processed."""
    seconds, n = _timed(fn, device)
    return n / seconds


class _PilImages(Dataset):
    """The classic pipeline: PIL images through torchvision's per-sample transforms, two views each."""

    def __init__(self, images: torch.Tensor, transforms: list):
        arrays = images.permute(0, 2, 3, 1).numpy()
        self.images = [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arrays]
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return [t(self.images[i]) for t in self.transforms]


def bench_augmentation(data: ImageSet, device: torch.device, batch_size: int, n_images: int) -> dict[str, float]:
    specs = build_recipe("simclr")
    maker = ViewMaker(specs, data.mean, data.std, data.image_size, clean=False)
    on_device = data.to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def ours() -> int:
        seen = 0
        order = epoch_permutation(len(on_device), 0, 0)[:n_images]
        for images, labels, index in iter_batches(on_device, batch_size, device, order=order, drop_last=True):
            maker(images, labels, index, gen)
            seen += images.shape[0]
        return seen

    pil = _PilImages(data.images[:n_images], [torchvision_pipeline(s, data.mean, data.std, data.image_size) for s in specs])
    workers = os.cpu_count() or 1
    loader = DataLoader(pil, batch_size=batch_size, num_workers=workers, drop_last=True, persistent_workers=False)

    def classic() -> int:
        seen = 0
        for views in loader:
            for v in views:
                v.to(device, non_blocking=True)
            seen += views[0].shape[0]
        return seen

    ours()  # warm-up
    ours_ips = max(_rate(ours, device) for _ in range(3))
    classic_ips = max(_rate(classic, device) for _ in range(2))
    return {"aug.ours_images_per_s": ours_ips, "aug.classic_images_per_s": classic_ips,
            "aug.workers": workers, "aug.speedup": ours_ips / classic_ips}


def _perf_config(method: str, quick: bool, device: torch.device) -> RunConfig:
    small = {"simclr": {"projector": "256-64"}, "byol": {"projector": "256-64", "predictor": "256-64"},
             "simsiam": {"projector": "256-256", "predictor": "64-256"}, "barlow_twins": {"projector": "256-256"},
             "vicreg": {"projector": "256-256"}}
    overrides = small.get(method, {}) if quick else {}
    return resolve_run_config({
        "method": {"name": method, **overrides},
        "dataset": {"name": "shapes", "n_train": 2048 if quick else 8192, "n_test": 256},
        "backbone": {"name": "small_cnn" if quick else "resnet18", "cifar_stem": True},
        "batch_size": 128 if quick else 512,
        "epochs": 1,
        "optimizer": {"name": "adamw", "lr": 1e-3, "lr_scaling": "none"},
        "train": {"device": device.type, "checkpoint_every": 0, "progress": False, "log_every": 50},
    })


def bench_engine_overhead(cfg: RunConfig, device: torch.device, out_dir: Path, repeats: int) -> dict[str, float]:
    """Our engine against a bare PyTorch loop: same model, data, augmentation and optimizer."""
    splits = load_dataset(cfg.dataset)
    pretrain = splits.pretrain.to(device)

    def bare() -> float:
        method = build_method(cfg, splits).to(device)
        optimizer = build_optimizer(method, cfg.optimizer, cfg.batch_size)
        maker = ViewMaker(build_recipe(cfg.augment), pretrain.mean, pretrain.std, pretrain.image_size, clean=method.needs_clean_view)
        gen = torch.Generator(device=device).manual_seed(0)
        order = epoch_permutation(len(pretrain), cfg.seed, 0)
        seen, total = 0, len(pretrain) // cfg.batch_size
        t0 = time.perf_counter()
        for step, (images, labels, index) in enumerate(iter_batches(pretrain, cfg.batch_size, device, order=order, drop_last=True)):
            loss = method(maker(images, labels, index, gen), step, total)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            method.on_step_end(step, total)
            seen += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - t0)

    def engine(i: int) -> float:
        run_dir = out_dir / f"overhead-{i}"
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        return train(cfg, run_dir, splits=splits).history[-1]["images_per_s"]

    bare()  # warm-up
    bare_ips, engine_ips = [], []
    for i in range(repeats):  # interleaved, so drifting machine load hits both alike
        bare_ips.append(bare())
        engine_ips.append(engine(i))
    b, e = statistics.median(bare_ips), statistics.median(engine_ips)
    return {"engine.bare_images_per_s": b, "engine.images_per_s": e, "engine.overhead": b / e}


def bench_methods(quick: bool, device: torch.device, out_dir: Path) -> dict[str, float]:
    out = {}
    for name in sorted(all_methods()):
        cfg = _perf_config(name, quick, device)
        run_dir = out_dir / f"method-{name}"
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        out[f"train.{name}.images_per_s"] = train(cfg, run_dir).history[-1]["images_per_s"]
    return out


def bench_mvmr_cache(device: torch.device, scratch: Path, quick: bool) -> dict[str, float]:
    """MV-MR's training step with the cached representations against recomputing them every step."""
    out = {}
    for cache in (True, False):
        cfg = resolve_run_config({
            "method": {"name": "mvmr", "projector": "256-256", "representations": ["raw", "scattering", "hog", "lsd"], "cache": cache},
            "dataset": {"name": "shapes", "n_train": 512 if quick else 4096, "n_test": 64},
            "backbone": {"name": "small_cnn" if quick else "resnet18", "cifar_stem": True},
            "batch_size": 128, "epochs": 1,
            "train": {"device": device.type, "checkpoint_every": 0, "progress": False, "cache_dir": str(scratch / "cache")},
        })
        run_dir = scratch / f"mvmr-cache-{cache}"
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        out[f"mvmr.{'cached' if cache else 'recomputed'}_images_per_s"] = train(cfg, run_dir).history[-1]["images_per_s"]
    out["mvmr.cache_speedup"] = out["mvmr.cached_images_per_s"] / out["mvmr.recomputed_images_per_s"]
    return out


def bench_eval(device: torch.device, n_train: int, n_test: int, dim: int, classes: int) -> dict[str, float]:
    g = torch.Generator(device="cpu").manual_seed(0)
    train_y = torch.randint(classes, (n_train,), generator=g).to(device)
    test_y = torch.randint(classes, (n_test,), generator=g).to(device)
    centers = torch.randn(classes, dim, generator=g).to(device)
    train_f = centers[train_y] + 2 * torch.randn(n_train, dim, generator=g).to(device)
    test_f = centers[test_y] + 2 * torch.randn(n_test, dim, generator=g).to(device)

    knn_s, knn = _timed(lambda: knn_eval(train_f, train_y, test_f, test_y, classes, ks=(20, 200)), device)
    lin_s, lin = _timed(lambda: linear_probe(train_f, train_y, test_f, test_y, classes, LinearConfig(epochs=100)), device)
    return {"eval.knn_seconds": knn_s, "eval.linear_seconds": lin_s, "eval.knn20_top1": knn["knn20.top1"],
            "eval.linear_top1": lin["linear.top1"], "eval.n_train": n_train, "eval.n_test": n_test, "eval.dim": dim}


def _measure(quick: bool, device: torch.device, scratch: Path, console: Console) -> dict:
    """Every measurement, in order; run directories go to ``scratch``."""
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "quick": quick, "torch": torch.__version__}
    data = load_dataset(DatasetConfig(name="shapes", n_train=4096, n_test=256)).pretrain
    n_aug = 2048 if quick else 4096
    console.print("measuring the data path ...")
    results.update(bench_augmentation(data, device, batch_size=256, n_images=n_aug))
    console.print("measuring the engine against a bare loop ...")
    results.update(bench_engine_overhead(_perf_config("simclr", quick, device), device, scratch, repeats=3 if quick else 5))
    console.print("measuring training throughput per method ...")
    results.update(bench_methods(quick, device, scratch))
    console.print("measuring MV-MR with cached against recomputed representations ...")
    results.update(bench_mvmr_cache(device, scratch, quick))
    console.print("measuring evaluation ...")
    sizes = (5000, 1000, 512, 10) if quick or device.type == "cpu" else (50000, 10000, 512, 100)
    results.update(bench_eval(device, *sizes))
    return results


def perf(quick: bool, out_dir: Path, console: Console) -> dict:
    """Measure, print a table, and write the figures as JSON under ``out_dir``."""
    device = pick_device("auto")
    if device.type == "cpu":
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ssl-bench-perf-") as scratch:
        results = _measure(quick, device, Path(scratch), console)
    table = Table("measure", "value", title=f"ssl-bench perf on {results['device']}")
    for key, value in results.items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"perf-{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    console.print(f"written {path}")
    return results
