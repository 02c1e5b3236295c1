"""Learning-rate schedule: linear warm-up then cosine decay, a pure function of the step.

Being a function of the global step, the schedule needs no state of its own: a resumed run that
restores its step restores its learning rate.
"""

from __future__ import annotations

import math

from bench.config.optim import ScheduleConfig


def lr_factor(cfg: ScheduleConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak lr at ``step`` (0-based) of ``total_steps``."""
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total_steps)
    if step < warmup:
        return cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warmup
    if cfg.name == "constant":
        return 1.0
    span = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return cfg.final_lr + (1.0 - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_value(start: float, end: float, step: int, total_steps: int) -> float:
    """Half a cosine from ``start`` at step 0 towards ``end`` at ``total_steps`` (DINO's ``cosine_scheduler``)."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
