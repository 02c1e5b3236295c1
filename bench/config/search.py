"""The ``search:`` block of a suite: a space over dotted run-config keys, the sampler, the pruner and the metric."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, ValidatorFunctionWrapHandler, WrapValidator, field_validator, model_validator

from bench.schema import ConfigModel

#: the split prefix of validation metrics: every selection reads them (``val.knn20.top1``)
VAL_PREFIX = "val."
DEFAULT_SEARCH_METRIC = "val.knn20.top1"


def metric_split(metric: str) -> str:
    """The split a final metric reads: ``val`` for ``val.*`` (validation), else ``test``."""
    return "val" if metric.startswith(VAL_PREFIX) else "test"


def _int_or_float(value: Any, handler: ValidatorFunctionWrapHandler) -> int | float:
    return value if type(value) is int else handler(value)


#: a bound of a search range: an int stays an int (an int parameter's), anything else is a finite float
Number = Annotated[float, WrapValidator(_int_or_float)]


class SearchParam(ConfigModel):
    """One dimension of the search space: a float or int range, or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: Number | None = Field(None, description="lower bound of a range (inclusive)")
    high: Number | None = Field(None, description="upper bound of a range (inclusive)")
    step: Number | None = Field(None, gt=0, description="discretisation step of a range")
    log: bool = Field(False, description="sample a range on a log scale")
    choices: list[Any] | None = Field(None, description="the values of a categorical parameter")

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError("a categorical parameter takes choices only (no low, high, step or log)")
            return self
        if self.low is None or self.high is None or self.choices is not None:
            raise ValueError(f"a {self.type} parameter needs low and high (choices are for type: categorical)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step exclude each other; drop one")
        if self.type == "int" and not all(isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None):
            raise ValueError("an int parameter takes integer low, high and step")
        return self

    def grid(self) -> list[Any] | None:
        """The values a grid search tries: the choices or the stepped int range; None for any other range."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int" and self.step is not None:
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        return None


class SearchConfig(ConfigModel):
    """Hyper-parameter search over the suite's one base cell."""

    space: dict[str, SearchParam] = Field(min_length=1, description="dotted run-config key -> its range or choices")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="grid needs categorical or int-with-step parameters")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="prunes on the online kNN (train.knn_every > 0)")
    metric: str = Field(DEFAULT_SEARCH_METRIC, min_length=1, description="final validation metric (val.*) of a run that the "
                        "search optimizes; the test split is never an objective")
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: int | None = Field(None, ge=1, description="trials to run (null: the grid size for grid, else 20)")
    seed: int = Field(0, description="sampler seed")
    n_startup_trials: int = Field(5, ge=0, description="trials before the sampler and the median pruner act")
    n_warmup_steps: int = Field(1, ge=0, description="median pruner: kNN reports of a trial before it may be pruned")

    @field_validator("metric")
    @classmethod
    def _validation_metric(cls, v: str) -> str:
        if not v.startswith(VAL_PREFIX):
            raise ValueError(f"{v!r} is a test-split metric; a search optimizes a validation metric: use "
                             f"{VAL_PREFIX}{v} (test numbers are read once, after every choice)")
        return v

    @model_validator(mode="after")
    def _trials(self) -> SearchConfig:
        grids = {key: p.grid() for key, p in self.space.items()}
        if self.sampler == "grid":
            ranges = [key for key, grid in grids.items() if grid is None]
            if ranges:
                raise ValueError(f"the grid sampler needs categorical or int-with-step parameters; {', '.join(ranges)} "
                                 "is a continuous range (give choices, a step, or use sampler: tpe)")
        if self.n_trials is None:
            self.n_trials = math.prod(len(grid or []) for grid in grids.values()) if self.sampler == "grid" else 20
        return self
