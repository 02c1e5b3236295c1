"""The baselines every table compares against (``docs/protocols.md`` §3): methods that learn nothing.

- ``random_init``: the backbone as initialised for the cell's seed, evaluated frozen in eval mode (batch norm at its
  initial statistics), one cell per seed;
- ``raw_pixels``: the normalised pixels flattened (``bench.models.pixels``), downsampled to ``pixels_size`` when the
  images are larger; deterministic, so one cell (seed 0). It has no backbone: the runner evaluates the pixels
  (``bench.eval.protocols.evaluate_pixels``) and writes no model file.

Both have ``epochs: 0`` (random init: no optimizer step, the model file is still written) and go through every
evaluation of their cell like any method. A suite's ``baselines`` key makes their cells (bench/config/baselines.py);
the reports show them as rows "random init" and "raw pixels" under the methods, never marked best.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from bench.data.views import Views
from bench.methods.base import Method, MethodParams, StepOutput


class Baseline(StrEnum):
    """The baselines by method name; ``label`` is how a row names it."""

    RANDOM_INIT = "random_init"
    RAW_PIXELS = "raw_pixels"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


class _Untrained(Method):
    """A baseline: nothing to train, so ``epochs`` must be 0 (bench/config/run.py) and ``forward`` is never called."""

    baseline: ClassVar[bool] = True

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        raise RuntimeError(f"{self.name} is a baseline and trains nothing; its cells have epochs: 0")


class RandomInitParams(MethodParams):
    name: Literal["random_init"] = "random_init"


class RandomInit(_Untrained):
    name: ClassVar[str] = Baseline.RANDOM_INIT.value
    Params: ClassVar[type[MethodParams]] = RandomInitParams


class RawPixelsParams(MethodParams):
    name: Literal["raw_pixels"] = "raw_pixels"
    pixels_size: int | None = Field(None, ge=1, description="average-pool larger images to this side before flattening "
                                    "(null: every pixel); a suite's baselines set 32 for images over 64 px")


class RawPixels(_Untrained):
    """Its params only: the runner builds no model for it and evaluates the pixels themselves (``evaluate_pixels``)."""

    name: ClassVar[str] = Baseline.RAW_PIXELS.value
    Params: ClassVar[type[MethodParams]] = RawPixelsParams
