"""Named benchmark scenarios: method x backbone x image size x batch size x precision x compile.

A scenario is measured three ways in one process (see ``bench.perf.references``); its name is derived from
its settings, so ``--scenario NAME`` and the JSON keys always say what was measured. Scenarios marked
``quick`` are sized for a CPU and make up ``ssl-bench perf --quick``; the others are the GPU benchmark, and
some carry the acceptance targets of their ratios.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bench.config.run import RunConfig, resolve_run_config
from bench.data.views import ViewSpec, build_recipe
from bench.errors import ConfigError
from bench.methods import method_class
from bench.models.backbones import BackboneConfig

SHORT_BACKBONE = {"resnet18": "r18", "resnet34": "r34", "resnet50": "r50", "small_cnn": "cnn"}


class Scenario(BaseModel):
    """One training configuration whose images/s the benchmark measures (on the shapes data set)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    backbone: BackboneConfig
    image_size: int = Field(ge=8, description="side of the (square) training images and of the global views")
    batch_size: int = Field(ge=2)
    precision: Literal["fp32", "bf16"]
    compile: bool = Field(False, description="torch.compile the backbone (the engine's train.compile)")
    steps: int = Field(ge=1, description="training steps per timed repetition (one epoch of the engine)")
    repeats: int = Field(3, ge=1, description="timed repetitions after one warm-up; the median is reported")
    quick: bool = Field(False, description="CPU-sized: part of `ssl-bench perf --quick`")
    min_vs_classic: float | None = Field(None, gt=0, description="target: ours / classic images/s at least this (on CUDA)")
    min_vs_compute: float | None = Field(None, gt=0, description="target: ours / compute bound at least this (on CUDA)")

    @field_validator("method")
    @classmethod
    def _augmenting_method(cls, v: str) -> str:
        if method_class(v).needs_clean_view:
            raise ValueError(f"{v} needs the clean view, which the classic reference does not make; pick another method")
        return v

    @property
    def name(self) -> str:
        """e.g. ``simclr-r18-32-b512-bf16`` (``-compile`` appended when compiled)."""
        name = f"{self.method}-{SHORT_BACKBONE[self.backbone.name]}-{self.image_size}-b{self.batch_size}-{self.precision}"
        return name + ("-compile" if self.compile else "")

    def run_config(self, device: torch.device, *, compute_bound: bool = False) -> RunConfig:
        """The engine's config: one warm-up epoch plus ``repeats`` timed epochs of ``steps`` steps.

        ``compute_bound`` swaps the method's views for un-augmented ones of the same sizes: global views
        are the images themselves, local views the whole image resized (one resampling, no randomness).
        """
        data = {
            "method": {"name": self.method},
            "dataset": {"name": "shapes", "n_train": self.batch_size * self.steps, "n_test": 10, "image_size": self.image_size},
            "backbone": self.backbone.model_dump(),
            "batch_size": self.batch_size,
            "epochs": 1 + self.repeats,
            "train": {"device": device.type, "precision": self.precision, "compile": self.compile,
                      "checkpoint_every": 0, "progress": False},
        }
        cfg = resolve_run_config(data)
        if not compute_bound:
            return cfg
        identity = [unaugmented(spec.crop_size(self.image_size)) for spec in build_recipe(cfg.augment)]
        return resolve_run_config({**data, "augment": [spec.model_dump() for spec in identity]})


def unaugmented(size: int) -> ViewSpec:
    """A view of ``size`` pixels that only resizes the whole image (identity at the image's own size)."""
    return ViewSpec(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)


def _registry(*scenarios: Scenario) -> dict[str, Scenario]:
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate scenario names in {names}")
    return {s.name: s for s in scenarios}


R18_CIFAR = BackboneConfig(name="resnet18", cifar_stem=True)

#: every scenario by name; the acceptance targets sit on the two SimCLR bf16 scenarios
SCENARIOS: dict[str, Scenario] = _registry(
    Scenario(method="simclr", backbone=R18_CIFAR, image_size=32, batch_size=512, precision="bf16", steps=20, repeats=5,
             min_vs_classic=3.0, min_vs_compute=0.8),
    Scenario(method="simclr", backbone=R18_CIFAR, image_size=32, batch_size=512, precision="bf16", compile=True, steps=20, repeats=5),
    Scenario(method="simclr", backbone=R18_CIFAR, image_size=32, batch_size=512, precision="fp32", steps=20, repeats=5),
    Scenario(method="simclr", backbone=BackboneConfig(name="resnet50"), image_size=96, batch_size=256, precision="bf16",
             steps=10, repeats=5, min_vs_compute=0.8),
    Scenario(method="byol", backbone=R18_CIFAR, image_size=32, batch_size=512, precision="bf16", steps=20, repeats=5),
    Scenario(method="vicreg", backbone=R18_CIFAR, image_size=32, batch_size=512, precision="bf16", steps=20, repeats=5),
    Scenario(method="simclr", backbone=BackboneConfig(name="small_cnn"), image_size=32, batch_size=64, precision="fp32",
             steps=4, quick=True),
    Scenario(method="simclr", backbone=R18_CIFAR, image_size=32, batch_size=8, precision="fp32", steps=2, quick=True),
)


def select_scenarios(names: list[str] | None, quick: bool) -> list[Scenario]:
    """The named scenarios, else every quick one (``quick``) or every full one."""
    if not names:
        return [s for s in SCENARIOS.values() if s.quick == quick]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario {', '.join(unknown)}; choose from `ssl-bench perf --list`: {', '.join(SCENARIOS)}")
    return [SCENARIOS[n] for n in names]
