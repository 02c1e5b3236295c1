"""MV-MR's training step with its representations cached on disk against recomputing them every step."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.config.run import resolve_run_config
from bench.perf.references import train_fresh


def mvmr_cache(device: torch.device, scratch: Path, quick: bool) -> dict[str, float]:
    """Images/s of MV-MR with ``method.cache`` on and off (same data, model and representations)."""
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
        out[f"mvmr.{'cached' if cache else 'recomputed'}_images_per_s"] = train_fresh(cfg, run_dir).history[-1].images_per_s
    out["mvmr.cache_speedup"] = out["mvmr.cached_images_per_s"] / out["mvmr.recomputed_images_per_s"]
    return out
