"""The optimizer and the learning-rate schedule of a run (``optimizer``, ``schedule``): schemas only; the training
room builds them (``bench.train.optim``, ``bench.train.schedule``)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from bench.schema import FROM_YAML, ConfigModel


class OptimizerConfig(ConfigModel):
    name: Literal["sgd", "lars", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0, description="base learning rate at reference_batch")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="lr = base * rule(batch / reference_batch), batch the global batch over all processes"
    )
    reference_batch: int = Field(256, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: Annotated[tuple[float, float], FROM_YAML] = (0.9, 0.999)
    exclude_bias_bn: bool = Field(True, description="no weight decay (and no LARS adaptation) on biases and norm parameters")
    exclude_tokens: bool = Field(True, description="no weight decay on a ViT's position embedding and class/mask tokens "
                                 "(timm's no_weight_decay; the DINO and MAE pre-training code decays them)")
    weight_decay_end: float | None = Field(None, ge=0, description="cosine schedule of the weight decay from weight_decay "
                                           "to this value over the run, per step (DINO: 0.04 -> 0.4); null: constant")
    lars_eta: float = Field(0.001, gt=0, description="LARS trust coefficient")

    @model_validator(mode="after")
    def _schedule_needs_decay(self) -> OptimizerConfig:
        if self.weight_decay_end is not None and self.weight_decay == 0:
            raise ValueError("weight_decay_end schedules the decayed groups, but weight_decay is 0; set weight_decay")
        return self

    def scaled_lr(self, batch_size: int) -> float:
        """The peak lr for the global ``batch_size`` (summed over all processes of a distributed run)."""
        ratio = batch_size / self.reference_batch
        factor = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[self.lr_scaling]
        return self.lr * factor


class ScheduleConfig(ConfigModel):
    name: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(10.0, ge=0, description="linear warm-up length (clipped to the run's length)")
    warmup_start: float = Field(0.0, ge=0, le=1, description="lr at step 0, as a fraction of the peak lr")
    final_lr: float = Field(0.0, ge=0, le=1, description="lr at the last step, as a fraction of the peak lr")
