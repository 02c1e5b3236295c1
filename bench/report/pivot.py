"""One metric of a suite's runs aggregated over seeds per (rows × cols) group: the ``Pivot`` every table renders.

``pivot`` groups the frame of ``suite_runs``: per group the numbers across its complete runs (``stats.Summary``:
mean, sample std, 95 % t-interval, n), the status counts of its cells, the best row of each column (baseline rows
never), and, against a baseline row, the difference of means and a two-sided t-test (``stats.compare_arms``)
with Benjamini–Hochberg q-values over the table's tests.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from bench.core.states import CellStatus
from bench.errors import ConfigError
from bench.report.labels import is_baseline, label_text
from bench.report.metric_key import parse_metric
from bench.report.runs import STATUSES, resolve_key
from bench.report.stats import ALPHA, Comparison, Summary, adjust, compare_arms, summarize

#: one group's complete values by seed (None: a run without a seed column)
Seeds = dict[Any, list[float]]


@dataclass(frozen=True)
class Pivot:
    """One metric aggregated over the runs of each group (rows × cols keys).

    ``mean``, ``std`` (sample std, NaN below two runs), ``ci_low``/``ci_high`` (95 % t-interval, NaN below two
    runs) and ``n`` (complete runs with a value) have the row keys as index and the column keys as columns.
    ``cells`` has one row per group present in the suite (index: row keys then column keys) and one count per
    status. ``best`` marks each column's best mean among the rows that are no baseline (``labels.Baseline``).
    Against the ``baseline`` row (the row whose first key is the baseline and whose other keys are equal):
    ``delta`` is the mean minus its mean, ``test`` the t-test used (empty: none), ``p`` its two-sided p-value,
    ``q`` the Benjamini–Hochberg q-value over the table's ``tests`` tests (NaN where no test applies).
    ``paper`` holds published values in the metric's unit, named in ``sources``, and ``matches`` how each compares
    with the cells' protocol (``reference.PaperMatch``, None where no value). ``left_out`` counts the cells
    that have no value for some key (a VICReg ablation key on a SimCLR cell) and so belong to no group.
    """

    metric: str
    rows: list[str]
    cols: list[str]
    mean: pd.DataFrame
    std: pd.DataFrame
    ci_low: pd.DataFrame
    ci_high: pd.DataFrame
    n: pd.DataFrame
    cells: pd.DataFrame
    best: pd.DataFrame
    baseline: str | None = None
    delta: pd.DataFrame | None = None
    test: pd.DataFrame | None = None
    p: pd.DataFrame | None = None
    q: pd.DataFrame | None = None
    left_out: int = 0
    paper: pd.DataFrame | None = None
    matches: pd.DataFrame | None = None
    sources: tuple[str, ...] = ()
    proxy: str = ""  #: how well a label-free proxy orders the suite's cells by this metric (``proxy.ProxyAgreement.line``)

    @property
    def tests(self) -> int:
        """How many t-tests the table holds (the m of its Benjamini–Hochberg adjustment)."""
        return 0 if self.p is None else int(self.p.notna().to_numpy().sum())

    def significant(self, i: int, j: int) -> bool | None:
        """Whether table cell (``i``, ``j``) differs from the baseline at q < ``ALPHA``; None without a test."""
        if self.q is None or math.isnan(self.q.iat[i, j]):
            return None
        return bool(self.q.iat[i, j] < ALPHA)

    def status_counts(self, i: int, j: int) -> dict[str, int]:
        """Cells of each status in table cell (row ``i``, column ``j``); empty when the suite has no such cell."""
        key = as_tuple(self.mean.index[i]) + as_tuple(self.mean.columns[j])
        return self.cells.loc[key].to_dict() if key in self.cells.index else {}

    def note(self, i: int, j: int) -> str:
        """What a table cell says besides its number: '' when all ran, else e.g. 'missing', 'failed (1/2)', 'running'."""
        counts = self.status_counts(i, j)
        total = sum(counts.values())
        return ", ".join(status if counts[status] == total else f"{status} ({counts[status]}/{total})"
                         for status in STATUSES if status != CellStatus.COMPLETE and counts.get(status))


def pivot(df: pd.DataFrame, rows: list[str], cols: list[str], metric: str, *, baseline: str | None = None) -> Pivot:
    """Aggregate ``metric`` over the complete runs of each (rows × cols) group of ``suite_runs``' frame.

    Keys are resolved with ``resolve_key`` (``projector`` finds ``method.projector``). Rows and columns keep the
    order in which the suite lists their values. ``baseline`` is a value of the first row key (e.g. ``simclr``).
    """
    rows = [resolve_key(df, key) for key in rows]
    cols = [resolve_key(df, key) for key in cols]
    metric = resolve_key(df, metric)
    keys = rows + cols
    if not rows or not cols or len(set(keys)) < len(keys):
        raise ConfigError(f"rows {rows} and cols {cols}: give at least one key each, and no key twice")
    if not pd.api.types.is_numeric_dtype(df[metric]):
        raise ConfigError(f"{metric} is not a metric (its values are not numbers); give a final metric such as knn20.top1")
    kept = df.dropna(subset=keys)
    if kept.empty:
        raise ConfigError(f"no cell of the suite has a value for every key of {keys}; pick keys that apply to its cells")
    row_of = list(zip(*(kept[k] for k in rows)))
    col_of = list(zip(*(kept[k] for k in cols)))
    seeds = kept["seed"] if "seed" in kept else pd.Series(None, index=kept.index, dtype=object)
    groups: dict[tuple, Seeds] = defaultdict(lambda: defaultdict(list))
    methods: dict[tuple, set] = defaultdict(set)
    counts: dict[tuple, Counter] = defaultdict(Counter)
    for r, c, status, value, seed, method in zip(row_of, col_of, kept["status"], kept[metric], seeds, kept["method"]):
        counts[r, c][status] += 1
        if status == CellStatus.COMPLETE and not math.isnan(value):
            groups[r, c][None if pd.isna(seed) else seed].append(float(value))
            methods[r, c].add(method)
    row_labels, col_labels = list(dict.fromkeys(row_of)), list(dict.fromkeys(col_of))
    index, columns = _index(row_labels, rows), _index(col_labels, cols)

    def grid(value: Callable[[tuple, tuple], Any]) -> pd.DataFrame:
        return pd.DataFrame([[value(r, c) for c in col_labels] for r in row_labels], index=index, columns=columns)

    summary = {(r, c): summarize([v for values in groups[r, c].values() for v in values]) for r in row_labels for c in col_labels}
    field = {name: grid(lambda r, c, name=name: getattr(summary[r, c], name)) for name in Summary.__dataclass_fields__}
    cells = pd.DataFrame([[counts[group][s] for s in STATUSES] for group in counts], columns=list(STATUSES),
                         index=pd.MultiIndex.from_tuples([r + c for r, c in counts], names=keys))
    excluded = [("method" in rows and is_baseline(r[rows.index("method")])) for r in row_labels]
    table = Pivot(metric=metric, rows=rows, cols=cols, mean=field["mean"], std=field["std"], ci_low=field["ci_low"],
                  ci_high=field["ci_high"], n=field["n"].astype(int), cells=cells,
                  best=_best(field["mean"], metric, excluded), left_out=len(df) - len(kept))
    if baseline is None:
        return table
    reference = _reference_rows(row_labels, rows[0], baseline)
    tested = {(r, c): compare_arms(groups[r, c], groups[reference[r], c], methods[r, c] == methods[reference[r], c]
                                   and len(methods[r, c]) == 1)
              for r in row_labels for c in col_labels if reference[r] not in (None, r)}
    p = grid(lambda r, c: tested[r, c].p if (r, c) in tested else math.nan)
    q = pd.DataFrame(np.reshape(adjust(p.to_numpy().ravel().tolist()), p.shape), index=index, columns=columns)
    delta = grid(lambda r, c: math.nan if reference[r] is None else summary[r, c].mean - summary[reference[r], c].mean)
    test = grid(lambda r, c: _test_name(tested.get((r, c))))
    return replace(table, baseline=baseline, delta=delta, test=test, p=p, q=q)


def _test_name(comparison: Comparison | None) -> str:
    return "" if comparison is None or math.isnan(comparison.p) else comparison.test.value


def _reference_rows(labels: list[tuple], key: str, baseline: str) -> dict[tuple, tuple | None]:
    """Each row label -> the label of its baseline row (first key ``baseline``, other keys equal), None if absent."""
    firsts = list(dict.fromkeys(label[0] for label in labels))
    match = [value for value in firsts if label_text(value) == baseline]
    if not match:
        raise ConfigError(f"baseline '{baseline}' is not a value of {key} (its values: "
                          f"{', '.join(label_text(v) for v in firsts)}); give one of them")
    known = set(labels)
    return {label: ref if (ref := (match[0], *label[1:])) in known else None for label in labels}


def _best(mean: pd.DataFrame, metric: str, excluded: list[bool]) -> pd.DataFrame:
    """True where a mean is its column's best (max, or min for a loss or an error) among the rows not excluded."""
    ranked = mean.mask(np.repeat(np.array(excluded, dtype=bool)[:, None], mean.shape[1], axis=1))
    pick = ranked.min() if parse_metric(metric).lower_is_better else ranked.max()
    return ranked.eq(pick, axis="columns")


def _index(labels: list[tuple], names: list[str]) -> pd.Index:
    if len(names) == 1:
        return pd.Index([label[0] for label in labels], name=names[0], dtype=object)
    return pd.MultiIndex.from_tuples(labels, names=names)


def as_tuple(label: Any) -> tuple:
    """A row or column label of a pivot as the tuple of its key values."""
    return label if isinstance(label, tuple) else (label,)
