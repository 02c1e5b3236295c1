"""Pivot tables of a suite's results: mean ± std over seeds for each (rows × cols) group, as md, csv, LaTeX or HTML.

``pivot`` aggregates the frame of ``suite_runs`` into a ``Pivot``: the numbers (``mean``, ``std``, ``n``), the
status counts of every group (``cells``), the best row of each column, and optionally the difference to a baseline
row and published numbers (``reference.paper_column``). Every renderer reads the same Pivot. Accuracy metrics
(``*.top1``, ``*.top5``: fractions in MLflow) are shown in percent with one decimal, any other metric with three
significant digits; the csv keeps the unrounded numbers.
"""

from __future__ import annotations

import argparse
import html
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from bench.config.suite import load_suite
from bench.errors import ConfigError
from bench.report.provenance import environment_warnings
from bench.report.reference import paper_column
from bench.report.runs import STATUSES, resolve_key, suite_runs
from bench.tracking.mlflow_runs import tracking_uri

#: the last part of an accuracy metric's name (``knn20.top1``, ``linear.top5``)
ACCURACY = re.compile(r"top\d+|acc\w*")
#: metrics whose name holds one of these words are better when lower
LOWER_IS_BETTER = ("loss", "error")
#: the text of a table cell that has no number
EMPTY = "–"
TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$", "Δ": r"$\Delta$",
               "–": "--"}


@dataclass(frozen=True)
class Pivot:
    """One metric aggregated over the runs of each group (rows × cols keys).

    ``mean``, ``std`` (sample std, NaN below two runs) and ``n`` (complete runs with a value) have the row keys as
    index and the column keys as columns. ``cells`` has one row per group present in the suite (index: row keys then
    column keys) and one count per status. ``best`` marks each column's best mean; ``delta`` is the mean minus the
    mean of the ``baseline`` row (the row whose first key is the baseline and whose other keys are equal);
    ``paper`` holds published values in the metric's unit, named in ``sources``. ``left_out`` counts the cells
    that have no value for some key (a VICReg ablation key on a SimCLR cell) and so belong to no group.
    """

    metric: str
    rows: list[str]
    cols: list[str]
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    cells: pd.DataFrame
    best: pd.DataFrame
    baseline: str | None = None
    delta: pd.DataFrame | None = None
    left_out: int = 0
    paper: pd.DataFrame | None = None
    sources: tuple[str, ...] = ()

    def status_counts(self, i: int, j: int) -> dict[str, int]:
        """Cells of each status in table cell (row ``i``, column ``j``); empty when the suite has no such cell."""
        key = _tuple(self.mean.index[i]) + _tuple(self.mean.columns[j])
        return self.cells.loc[key].to_dict() if key in self.cells.index else {}

    def note(self, i: int, j: int) -> str:
        """What a table cell says besides its number: '' when all ran, else e.g. 'missing', 'failed (1/2)', 'running'."""
        counts = self.status_counts(i, j)
        total = sum(counts.values())
        return ", ".join(status if counts[status] == total else f"{status} ({counts[status]}/{total})"
                         for status in STATUSES if status != "complete" and counts.get(status))


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
    values: dict[tuple, list[float]] = defaultdict(list)
    counts: dict[tuple, Counter] = defaultdict(Counter)
    for r, c, status, value in zip(row_of, col_of, kept["status"], kept[metric]):
        counts[r, c][status] += 1
        if status == "complete" and not math.isnan(value):
            values[r, c].append(float(value))
    row_labels, col_labels = list(dict.fromkeys(row_of)), list(dict.fromkeys(col_of))
    index, columns = _index(row_labels, rows), _index(col_labels, cols)

    def grid(stat: Callable[[list[float]], float]) -> pd.DataFrame:
        return pd.DataFrame([[stat(values.get((r, c), [])) for c in col_labels] for r in row_labels], index=index, columns=columns)

    mean = grid(lambda v: float(np.mean(v)) if v else math.nan)
    cells = pd.DataFrame([[counts[group][s] for s in STATUSES] for group in counts], columns=list(STATUSES),
                         index=pd.MultiIndex.from_tuples([r + c for r, c in counts], names=keys))
    return Pivot(
        metric=metric, rows=rows, cols=cols, mean=mean,
        std=grid(lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan),
        n=grid(len).astype(int), cells=cells, best=_best(mean, metric), baseline=baseline,
        delta=None if baseline is None else _delta(mean, rows[0], baseline), left_out=len(df) - len(kept),
    )


def is_accuracy(metric: str) -> bool:
    """True for accuracy metrics (``*.top1``, ``*.top5``), which are fractions shown in percent."""
    return ACCURACY.fullmatch(metric.rsplit(".", 1)[-1]) is not None


def lower_is_better(metric: str) -> bool:
    """True when the metric's name says loss or error."""
    return any(word in metric for word in LOWER_IS_BETTER)


def format_value(metric: str, value: float, *, signed: bool = False) -> str:
    """A number of ``metric`` as shown: percent with one decimal for accuracies, else 3 significant digits."""
    if math.isnan(value):
        return EMPTY
    sign = "+" if signed else ""
    return f"{value * 100:{sign}.1f}" if is_accuracy(metric) else f"{value:{sign}.3g}"


def label_text(value: Any) -> str:
    """A key value as shown in a header or a row label (``0.001``, ``16-16``, ``simclr``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def caption(table: Pivot) -> str:
    """The line above a table: the metric and its unit, what the numbers are, and any notes."""
    unit = " (%; accuracy × 100)" if is_accuracy(table.metric) else ""
    parts = [f"{table.metric}{unit}: mean ± sample std over runs (± omitted for one run); best per column in bold"]
    if table.delta is not None:
        points = " in percentage points" if is_accuracy(table.metric) else ""
        parts.append(f"Δ: difference to {table.rows[0]} = {table.baseline}{points}")
    if table.left_out:
        parts.append(f"{table.left_out} cells without a value for {', '.join(table.rows + table.cols)} left out")
    if table.sources:
        parts.append("paper: " + "; ".join(table.sources))
    return ". ".join(parts) + "."


def to_markdown(table: Pivot) -> str:
    """A GitHub-flavoured markdown table under its caption line."""
    header, body = _grid(table)

    def cell(entry: _Entry) -> str:
        text = entry.text.replace("|", r"\|")
        return f"**{text}**" if entry.best else text

    align = ["---"] * len(table.rows) + ["---:"] * (len(header) - len(table.rows))
    lines = [caption(table), "", _md_row(h.replace("|", r"\|") for h in header), _md_row(align)]
    lines += [_md_row(cell(entry) for entry in line) for line in body]
    return "\n".join(lines) + "\n"


def to_latex(table: Pivot) -> str:
    """A booktabs ``table`` environment (``\\toprule``, ``\\midrule``, ``\\bottomrule``), best values in ``\\textbf``."""
    header, body = _grid(table)

    def cell(entry: _Entry) -> str:
        text = _tex(entry.text)
        return rf"\textbf{{{text}}}" if entry.best else text

    spec = "l" * len(table.rows) + "r" * (len(header) - len(table.rows))
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(caption(table))}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(entry) for entry in line) + r" \\" for line in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(table: Pivot) -> str:
    """A plain ``<table class="ssl-bench-table">``; cells carry classes (key, value, best, delta, paper, missing, ...)."""
    header, body = _grid(table)
    lines = ['<table class="ssl-bench-table">', f"<caption>{html.escape(caption(table))}</caption>", "<thead>",
             "<tr>" + "".join(f'<th scope="col">{html.escape(h)}</th>' for h in header) + "</tr>", "</thead>", "<tbody>"]
    for line in body:
        cells = []
        for entry in line:
            text = html.escape(entry.text)
            classes = entry.kind + " best" * entry.best
            if entry.kind == "key":
                cells.append(f'<th scope="row" class="{classes}">{text}</th>')
            else:
                cells.append(f'<td class="{classes}">' + (f"<strong>{text}</strong>" if entry.best else text) + "</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines) + "\n"


def to_csv(table: Pivot) -> str:
    """The unrounded numbers: the row keys, then per column ``<col> mean``, ``std``, ``n`` (``delta``, ``paper``), ``status``."""
    data: dict[str, Any] = {key: [_tuple(label)[k] for label in table.mean.index] for k, key in enumerate(table.rows)}
    for j, column in enumerate(table.mean.columns):
        name = _column_text(column)
        data[f"{name} mean"] = table.mean.iloc[:, j].to_numpy()
        data[f"{name} std"] = table.std.iloc[:, j].to_numpy()
        data[f"{name} n"] = table.n.iloc[:, j].to_numpy()
        if table.delta is not None:
            data[f"{name} delta"] = table.delta.iloc[:, j].to_numpy()
        if table.paper is not None:
            data[f"{name} paper"] = table.paper.iloc[:, j].to_numpy()
        data[f"{name} status"] = [table.note(i, j) or ("complete" if table.status_counts(i, j) else "none")
                                  for i in range(len(table.mean.index))]
    return pd.DataFrame(data).to_csv(index=False)


#: --format name -> renderer; the name is also the file extension
RENDERERS: dict[str, Callable[[Pivot], str]] = {"md": to_markdown, "csv": to_csv, "tex": to_latex, "html": to_html}


def table_path(out: Path, suite_name: str, table: Pivot, fmt: str) -> Path:
    """``out`` when it names a file; for a directory ``<out>/<suite>/tables/<metric>_<rows>_by_<cols>.<fmt>``."""
    if out.suffix and not out.is_dir():
        return out
    return out / suite_name / "tables" / f"{table.metric}_{'-'.join(table.rows)}_by_{'-'.join(table.cols)}.{fmt}"


def cmd_table(args: argparse.Namespace, console: Console) -> int:
    """``ssl-bench table SUITE --rows ... --cols ... --metric ...``: print the table, or write it with ``--out``."""
    suite = load_suite(args.suite, args.set)
    df = suite_runs(suite, uri=tracking_uri(args.tracking) if args.tracking else None)
    table = pivot(df, args.rows, args.cols, args.metric, baseline=args.baseline)
    for line in environment_warnings(df):
        Console(stderr=True).print(f"warning: {line}", style="yellow", markup=False, highlight=False)
    if args.paper:
        table = paper_column(table)
    suffix = args.out.suffix.lstrip(".") if args.out else ""
    fmt = args.format or (suffix if suffix in RENDERERS else "md")
    text = RENDERERS[fmt](table)
    if args.out is None:
        console.out(text, highlight=False, end="")
        return 0
    path = table_path(args.out, suite.name, table, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    console.print(f"wrote {path}", markup=False, highlight=False)
    return 0


@dataclass(frozen=True)
class _Entry:
    """One rendered cell: its text, its kind (key, value, delta, paper, or the status of a cell without a value)."""

    text: str
    kind: str
    best: bool = False


def _grid(table: Pivot) -> tuple[list[str], list[list[_Entry]]]:
    """The header and the rows of text that every renderer but csv lays out."""
    header = list(table.rows)
    for column in table.mean.columns:
        name = _column_text(column)
        header += [name] + [f"{name} Δ {table.baseline}"] * (table.delta is not None) + [f"{name} (paper)"] * (table.paper is not None)
    body = []
    for i, label in enumerate(table.mean.index):
        line = [_Entry(label_text(value), "key") for value in _tuple(label)]
        for j in range(len(table.mean.columns)):
            line.append(_value_entry(table, i, j))
            if table.delta is not None:
                line.append(_Entry(format_value(table.metric, table.delta.iat[i, j], signed=True), "delta"))
            if table.paper is not None:
                line.append(_Entry(format_value(table.metric, table.paper.iat[i, j]), "paper"))
        body.append(line)
    return header, body


def _value_entry(table: Pivot, i: int, j: int) -> _Entry:
    """``mean ± std`` with the cell's status note, e.g. ``71.2 ± 0.4, failed (1/3)``, or ``missing``."""
    n = table.n.iat[i, j]
    value = ""
    if n:
        value = format_value(table.metric, table.mean.iat[i, j])
        if n > 1:
            value += f" ± {format_value(table.metric, table.std.iat[i, j])}"
    counts = table.status_counts(i, j)
    kind = "value" if n else next((s for s in STATUSES if counts.get(s)), "empty")
    text = ", ".join(part for part in (value, table.note(i, j)) if part) or EMPTY
    return _Entry(text, kind, bool(table.best.iat[i, j]))


def _best(mean: pd.DataFrame, metric: str) -> pd.DataFrame:
    """True where a mean is its column's best (max, or min for a loss or an error)."""
    pick = mean.min() if lower_is_better(metric) else mean.max()
    return mean.eq(pick, axis="columns")


def _delta(mean: pd.DataFrame, key: str, baseline: str) -> pd.DataFrame:
    """Each mean minus the mean of the row whose first key is ``baseline`` and whose other keys are the same."""
    firsts = list(dict.fromkeys(_tuple(label)[0] for label in mean.index))
    match = [value for value in firsts if label_text(value) == baseline]
    if not match:
        raise ConfigError(f"baseline '{baseline}' is not a value of {key} (its values: "
                          f"{', '.join(label_text(v) for v in firsts)}); give one of them")
    by_label = {_tuple(label): row for label, row in zip(mean.index, mean.to_numpy())}
    missing = np.full(len(mean.columns), math.nan)
    reference = [by_label.get((match[0], *_tuple(label)[1:]), missing) for label in mean.index]
    return pd.DataFrame(mean.to_numpy() - np.array(reference), index=mean.index, columns=mean.columns)


def _index(labels: list[tuple], names: list[str]) -> pd.Index:
    if len(names) == 1:
        return pd.Index([label[0] for label in labels], name=names[0], dtype=object)
    return pd.MultiIndex.from_tuples(labels, names=names)


def _tuple(label: Any) -> tuple:
    return label if isinstance(label, tuple) else (label,)


def _column_text(label: Any) -> str:
    return " / ".join(label_text(value) for value in _tuple(label))


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _tex(text: str) -> str:
    return "".join(TEX_ESCAPES.get(ch, ch) for ch in text)
