"""Disk cache of deterministic representations of a whole pre-training split.

One .npy per (dataset identity, representation name, params, image shape) under
``cache_dir/<dataset>-<representation>-<sha1>.npy``. It is computed once, in chunks, under an
exclusive ``fcntl.flock`` on ``<key>.lock`` (concurrent workers wait, then read the finished file),
written to a temporary file and renamed into place (a partial file is never visible), and read back
memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from bench.data.base import ImageSet
from bench.core.files import atomic_path, file_lock
from bench.errors import ConfigError

CacheDtype = Literal["float16", "float32"]

#: at most this many image bytes are hashed for the dataset identity (a strided sample)
_HASHED_BYTES = 1 << 22


def dataset_identity(split: ImageSet) -> dict[str, Any]:
    """Name, length, shape and the sha1 of a strided sample of the images' bytes plus the statistics."""
    flat = split.images.reshape(-1)
    stride = max(1, flat.numel() // _HASHED_BYTES)
    digest = hashlib.sha1(flat[::stride].contiguous().cpu().numpy().tobytes())
    digest.update(repr((tuple(split.images.shape), split.mean, split.std)).encode())
    return {"name": split.name, "len": len(split), "shape": list(split.images.shape), "sha1": digest.hexdigest()}


def cache_path(cache_dir: Path, identity: dict[str, Any], representation: str, params: dict[str, Any], dtype: CacheDtype) -> Path:
    """``cache_dir/<dataset>-<representation>-<sha1 of the canonical JSON of everything>.npy``."""
    fields = {"dataset": identity, "representation": representation, "params": params, "dtype": dtype}
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{identity['name']}-{representation}")
    return Path(cache_dir) / f"{prefix}-{digest}.npy"


def _normalized(images: torch.Tensor, split: ImageSet) -> torch.Tensor:
    mean = torch.tensor(split.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(split.std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def _compute_into(path: Path, split: ImageSet, compute: Callable[[torch.Tensor], torch.Tensor], dtype: CacheDtype, chunk: int) -> None:
    """Fill a temporary .npy chunk by chunk, then rename it to ``path`` (``atomic_path``); the temporary goes on failure."""
    console = Console(stderr=True)
    progress = Progress(TextColumn(f"[bold]caching {path.name}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, disable=not console.is_terminal, transient=True)
    with atomic_path(path) as tmp, progress, torch.no_grad():
        out = None
        task = progress.add_task("cache", total=len(split))
        for start in range(0, len(split), chunk):
            values = compute(_normalized(split.images[start : start + chunk], split)).float().cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(split), values.shape[1]))
            out[start : start + len(values)] = values
            if not np.isfinite(out[start : start + len(values)]).all():
                raise ConfigError(f"{path.name}: values overflow {dtype} (or are not finite); set method.cache_dtype=float32")
            progress.advance(task, len(values))
        out.flush()
        del out


def cached_representation(
    split: ImageSet,
    representation: str,
    params: dict[str, Any],
    compute: Callable[[torch.Tensor], torch.Tensor],
    cache_dir: Path,
    *,
    dtype: CacheDtype = "float16",
    chunk: int = 256,
) -> np.ndarray:
    """The (N, D) values of ``compute`` on every normalised image of ``split``, memory-mapped read-only.

    ``compute`` maps a normalised float chunk (b, C, H, W) to (b, D); it runs only when no file for
    this key exists, and at most once across processes sharing ``cache_dir``.
    """
    path = cache_path(cache_dir, dataset_identity(split), representation, params, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        if not path.exists():
            _compute_into(path, split, compute, dtype, chunk)
    return np.load(path, mmap_mode="r")
