"""Atomic checkpoints holding everything a resumed run needs to end where an uninterrupted one would.

``save_state`` and ``restore_state`` are the pair every training loop uses (the engine and the detection
fine-tuning loop): weights, optimizer, generators, the loop's position, seconds and history, and an identity
that a resumed run must match.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.core.cost import timed
from bench.core.files import atomic_path
from bench.errors import ConfigError

CHECKPOINT = "checkpoint.pt"


@timed("checkpoint", carve=True)
def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` whole or not at all (``bench.core.files.atomic_path``)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": _python_state_to_lists(random.getstate()),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _python_state_to_lists(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run's checkpoint on the CPU, or None: RNG states must stay CPU byte tensors, and
    ``load_state_dict`` copies weights and optimizer state onto their parameters' device.

    The temporary files of :func:`atomic_save` that a killed run left half-written are removed first: the run
    resumes from its last complete checkpoint."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def save_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, position: dict[str, int],
               seconds: float, history: list[dict], identity: dict[str, Any], rng: dict[str, Any] | None = None,
               **extra: Any) -> None:
    """Write ``run_dir/checkpoint.pt`` atomically: the weights, the optimizer, the generators (``rng``: a state taken
    earlier; None: now), the loop's ``position`` entries (e.g. ``epoch`` and ``batch``), its training ``seconds`` and
    ``history``, the ``identity`` entries that :func:`restore_state` checks, and the loop's ``extra`` entries."""
    atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "rng": rng_state() if rng is None else rng, **position, "seconds": seconds, "history": history,
                 **identity, **extra}, run_dir / CHECKPOINT)


def restore_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                  same: Callable[[dict[str, Any]], bool], mismatch: str) -> dict[str, Any] | None:
    """Load ``run_dir``'s checkpoint (:func:`save_state`) into ``model``, ``optimizer`` and the generators and return
    it (the caller reads its position, seconds, history and extra entries), or None when there is none.

    A checkpoint of another run (``same(checkpoint)`` false) raises ConfigError(``mismatch``) before anything is
    loaded."""
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        return None
    if not same(ckpt):
        raise ConfigError(mismatch)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return ckpt
