"""Fingerprints across runs (``bench.tracking.fingerprint``): what differs between a few runs (``compare``), and
whether the cells of one table ran on the same torch, CUDA and data (``table``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from bench.core.states import CellStatus
from bench.tracking.fingerprint import ID_TAG, TAG_PREFIX

#: fingerprint fields that the cells of one table should share: a mix is warned about
SHARED = {"torch version": f"{TAG_PREFIX}packages.torch", "CUDA version": f"{TAG_PREFIX}packages.cuda"}
DATA, DATA_CONFIG, DATASET = (f"{TAG_PREFIX}data.sha256", f"{TAG_PREFIX}data.config_sha256", f"{TAG_PREFIX}data.dataset")
SHORT = 12


def fingerprint_columns(tags: Mapping[str, str]) -> dict[str, str]:
    """The fingerprint tags among a run's tags (its id and ``fingerprint.*``)."""
    return {k: v for k, v in tags.items() if k == ID_TAG or k.startswith(TAG_PREFIX)}


def fingerprint_differences(tags: Sequence[Mapping[str, str]]) -> list[tuple[str, list[str | None]]]:
    """``(tag, value per run)``: the fingerprint id (first 12 hex digits) always, then every fingerprint field whose
    value differs between the runs (None where a run has no such tag, e.g. one that ran before fingerprints)."""
    ids = [t.get(ID_TAG) for t in tags]
    rows: list[tuple[str, list[str | None]]] = [(ID_TAG, [i[:SHORT] if i else None for i in ids])]
    keys = sorted({k for t in tags for k in t if k.startswith(TAG_PREFIX)})
    return rows + [(k, [t.get(k) for t in tags]) for k in keys if len({t.get(k) for t in tags}) > 1]


def environment_warnings(runs: pd.DataFrame) -> list[str]:
    """Why the complete cells of a table may not compare: different torch or CUDA versions, or one dataset config
    read as different data (the files changed between runs). ``runs`` has a ``status`` column and the fingerprint
    tags as columns (``fingerprint.packages.torch``)."""
    done = runs[runs["status"] == CellStatus.COMPLETE]
    lines = []
    for what, column in SHARED.items():
        if column in done and done[column].nunique() > 1:
            lines.append(f"the cells ran under different {what}s ({_counts(done[column])}); compare them with care")
    if DATA in done and DATA_CONFIG in done:
        for _, group in done.dropna(subset=[DATA, DATA_CONFIG]).groupby(DATA_CONFIG):
            if group[DATA].nunique() > 1:
                name = group[DATASET].iloc[0] if DATASET in group else "?"
                lines.append(f"dataset {name}: one config read different data (content sha256 "
                             f"{_counts(group[DATA].str[:SHORT])}); its files changed between runs")
    return lines


def _counts(values: pd.Series) -> str:
    return ", ".join(f"{value}: {n} cell{'s' * (n > 1)}" for value, n in values.value_counts().sort_index().items())
