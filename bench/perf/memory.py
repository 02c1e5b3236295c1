"""The largest batch of a scenario that fits in the GPU's memory: doubling, then bisection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bench.data.base import ImageSet
from bench.data.registry import DatasetSplits
from bench.perf.references import release, train_fresh
from bench.perf.scenarios import Scenario

MAX_BATCH = 2**17


def largest_batch(fits: Callable[[int], bool], start: int, limit: int = MAX_BATCH, tolerance: float = 1 / 16) -> int:
    """The largest batch ``b <= limit`` with ``fits(b)``, assuming every smaller batch fits too; 0 if none does.

    Doubles from ``start`` until a batch fails, then bisects between the last fit and the first failure
    until their gap is at most ``tolerance`` of the fit, so the answer is within that fraction of the true one.
    """
    fit, fail = 0, limit + 1
    batch = start
    while batch <= limit:
        if not fits(batch):
            fail = batch
            break
        fit, batch = batch, batch * 2
    while fail - fit > max(1, int(fit * tolerance)):
        mid = (fit + fail) // 2
        if fits(mid):
            fit = mid
        else:
            fail = mid
    return fit


def fits_on_device(scenario: Scenario, batch: int, device: torch.device, run_dir: Path) -> bool:
    """Whether two training steps of ``scenario`` at ``batch`` run without a CUDA out-of-memory error."""
    try:
        _train_on_noise(scenario, batch, device, run_dir)
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        release(device)
    return True


def _train_on_noise(scenario: Scenario, batch: int, device: torch.device, run_dir: Path) -> None:
    """Two engine steps on random images made on the device (their content does not change memory use)."""
    cfg = scenario.run_config(device).model_copy(update={"batch_size": batch, "epochs": 1})
    shape = (2 * batch, 3, scenario.image_size, scenario.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    split = ImageSet("noise", images, torch.zeros(shape[0], dtype=torch.long, device=device), ["noise"], (0.5,) * 3, (0.25,) * 3)
    train_fresh(cfg, run_dir, DatasetSplits(pretrain=split, train=split, test=split))


def max_batch(scenario: Scenario, device: torch.device, scratch: Path) -> int:
    """The largest batch of ``scenario`` that trains on this CUDA device (within 1/16)."""
    return largest_batch(lambda b: fits_on_device(scenario, b, device, scratch / f"{scenario.name}-max-batch"), start=scenario.batch_size)
