"""Statistics across seeds: mean, sample std, a 95 % t-interval and n per group; t-tests against a baseline.

``summarize`` gives a group's ``Summary``: the interval is ``mean ± t(0.975, n−1) · s/√n`` (the t-distribution
with n − 1 degrees of freedom; ``scipy.stats.t.interval``), none below two values; equal values give the point
``[mean, mean]`` (where ``t.interval`` answers NaN for a zero scale). ``compare_arms`` tests one
group against the baseline's with a two-sided t-test: paired by seed (``scipy.stats.ttest_rel``) when the
arms pair, else Welch's (``scipy.stats.ttest_ind(equal_var=False)``). ``adjust`` gives the Benjamini–Hochberg
q-values of a table's tests (``scipy.stats.false_discovery_control``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import stats

#: the confidence level of the intervals
CONFIDENCE = 0.95
#: the significance level of the tests (on the Benjamini–Hochberg q-values)
ALPHA = 0.05


class TTest(StrEnum):
    """The t-test of one group against the baseline's."""

    WELCH = "Welch"
    PAIRED = "paired"


@dataclass(frozen=True)
class Summary:
    """One group's values: ``n``, ``mean``, sample ``std`` (ddof=1) and the 95 % t-interval (NaN below n = 2)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """One group against the baseline's: the test used and its two-sided p-value (NaN when no test applies)."""

    test: TTest
    p: float


def summarize(values: Sequence[float]) -> Summary:
    """``Summary`` of ``values``; the interval uses the t-distribution with n − 1 degrees of freedom."""
    n = len(values)
    if n < 2:
        return Summary(n, float(values[0]) if n else math.nan, math.nan, math.nan, math.nan)
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def pairs(arm: dict[int, list[float]], baseline: dict[int, list[float]], same_method: bool) -> bool:
    """The pairing rule: the arms pair when they are one method (they differ in one of its hyper-parameters) and
    ran the same seeds, each seed once per arm, at least two; a seed then drives both arms' randomness alike."""
    once = all(len(values) == 1 for values in (*arm.values(), *baseline.values()))
    return same_method and once and len(arm) >= 2 and arm.keys() == baseline.keys()


def compare_arms(arm: dict[int, list[float]], baseline: dict[int, list[float]], same_method: bool) -> Comparison:
    """Two-sided t-test of ``arm`` against ``baseline`` (seed -> values): paired by seed when ``pairs``, else
    Welch's; p is NaN when an arm has fewer than two values."""
    if pairs(arm, baseline, same_method):
        seeds = sorted(arm)
        return Comparison(TTest.PAIRED, _p(stats.ttest_rel, [arm[s][0] for s in seeds], [baseline[s][0] for s in seeds]))
    a = [v for values in arm.values() for v in values]
    b = [v for values in baseline.values() for v in values]
    if len(a) < 2 or len(b) < 2:
        return Comparison(TTest.WELCH, math.nan)
    return Comparison(TTest.WELCH, _p(stats.ttest_ind, a, b, equal_var=False))


def adjust(p: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg q-values of the finite p-values (NaN stays NaN)."""
    finite = [i for i, value in enumerate(p) if not math.isnan(value)]
    q = [math.nan] * len(p)
    if finite:
        for i, value in zip(finite, stats.false_discovery_control([p[i] for i in finite], method="bh")):
            q[i] = float(value)
    return q


def _p(test, *args, **kwargs) -> float:
    with warnings.catch_warnings():  # nearly equal values: SciPy warns of precision loss and still answers
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(test(*args, **kwargs).pvalue)
