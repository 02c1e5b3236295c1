"""The leaderboard: a static site, readable straight from disk (file://), over the results of several suites.

``<out>/index.html`` holds one table across suites that reads like a paper's: one row per configuration (the cells
that differ only by seed: method, dataset, backbone, epochs, batch size and the suite's other settings), the
baselines (``labels.Baseline``) under the methods of their suite, and one column per evaluation protocol (kNN,
linear, label fractions, fine-tuning, detection: the lead number of every test-split protocol, ``MetricKey.is_lead``)
with mean ± sample std over the seeds, the 95 % t-interval and n, and the published number closest to the row's
protocol (``reference.group_reference``), marked † or ‡ where its protocol record is not ours, the differing
fields on hover; the best of each suite, dataset and protocol in bold (never a baseline). It is sortable (click a
header) and filterable (type words). A row also counts its cells that did not complete and links their MLflow
runs. A search suite contributes its best complete trial. Each suite also gets ``<out>/<suite>/index.html`` with
its pivot tables (``table.to_html``) and plots (``plots.suite_plots``). The script and stylesheet come from the
package's ``site/`` folder, copied to ``<out>/static``.
"""

from __future__ import annotations

import argparse
import html
import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from rich.console import Console

import bench
from bench.core.states import CellStatus
from bench.config.baselines import KEPT
from bench.config.search import SearchConfig
from bench.suite.suite import Suite
from bench.errors import ConfigError
from bench.methods.baselines import Baseline
from bench.report.labels import EMPTY, format_value, is_baseline, label_text, method_label
from bench.report.metric_key import Family, MetricKey, parse_metric
from bench.report.pivot import pivot
from bench.report.protocol import MatchKind
from bench.report.reference import PaperMatch, group_reference
from bench.report.plots import Plot, fill_missing, headline_metrics, metric_columns, suite_axes, suite_plots, varying
from bench.report.runs import STATUSES, shown_report_suite, suite_runs
from bench.report.stats import CONFIDENCE, Summary, summarize
from bench.report.table import to_html
from bench.tracking.mlflow_runs import retry_locked, tracking_uri

#: leaderboard column -> the ``suite_runs`` column it shows; the cells of one row differ in nothing else but seed
GROUP_COLUMNS = {"method": "method", "dataset": "dataset", "backbone": "backbone.name", "epochs": "epochs",
                 "batch size": "batch_size"}
#: axes shown in their own leaderboard column (or in none: the seed), so left out of its "setting" text
OWN_COLUMN_AXES = frozenset({"method", "dataset", "backbone", "epochs", "batch_size", "seed"})
#: the columns that describe a row's configuration, before the protocols; its status and runs come after them
CONFIG_HEADERS = ("suite", "method", "dataset", "setting", "backbone", "epochs", "batch size")
TAIL_HEADERS = ("not complete", "MLflow runs")
#: what a run cost (``bench.core.cost``): wall-clock hours times the devices it held (GPUs; a CPU run its one process)
COST = "cost.gpu_hours"
#: the columns of ``leaderboard_rows`` besides one per protocol
ROW_COLUMNS = ("suite", *GROUP_COLUMNS, "setting", "not complete", "runs", "paper", COST)
#: configuration columns sorted as numbers (their cells carry data-sort)
NUMERIC = frozenset({"epochs", "batch size"})
#: how a protocol column is headed (kNN k and label fractions are added)
FAMILY_TITLES = {Family.KNN: "kNN", Family.LINEAR: "linear", Family.LOGREG: "logreg", Family.LINEAR_AUG: "linear (aug.)",
                 Family.FINETUNE: "fine-tune", Family.DETECTION: "detection"}


def leaderboard_rows(suite: Suite, df: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard rows of one suite from ``suite_runs``' frame, one per configuration (group of seeds).

    Columns are ``ROW_COLUMNS`` and one per protocol metric that some complete run has (``MetricKey.is_lead``),
    holding the group's ``stats.Summary`` (n = 0 where no complete run has it). ``setting`` is the text of the
    suite's other axes, ``not complete`` counts the group's cells by status, ``runs`` is the tuple of its complete
    runs, ``paper`` maps each protocol metric to its published number (``reference.PaperMatch``, None where none),
    ``cost.gpu_hours`` summarises its complete runs' GPU-hours. Failed and missing configurations are rows too; baselines come after the suite's methods.
    """
    metrics = [m for m in metric_columns(suite, df) if parse_metric(m).is_lead] if not df.empty else []
    if df.empty:  # a search that has not started a trial yet
        return pd.DataFrame(columns=[*ROW_COLUMNS, *metrics])
    prefix = ""
    if suite.search is not None:
        prefix = f"best of {len(df)} trials: "
        df, setting = _best_trial(suite.search, df), list(suite.search.space)
    else:
        setting = varying(df, [key for key in suite_axes(suite) if key not in OWN_COLUMN_AXES])
    rows = []
    for _, group in fill_missing(df, setting).groupby([*GROUP_COLUMNS.values(), *setting], sort=False, dropna=False):
        first = group.iloc[0]
        counts = Counter(group["status"])
        complete = group[group["status"] == CellStatus.COMPLETE]
        rows.append({"suite": suite.name, **{name: _group_value(first, column) for name, column in GROUP_COLUMNS.items()},
                     "setting": prefix + " ".join(f"{key}={label_text(first[key])}" for key in setting if first[key] != EMPTY),
                     "not complete": ", ".join(f"{counts[s]} {s}" for s in STATUSES if s != CellStatus.COMPLETE and counts[s]),
                     "runs": tuple(complete["run_id"]), "paper": {metric: group_reference(group, metric) for metric in metrics},
                     COST: summarize(complete[COST].dropna().tolist() if COST in complete else []),
                     **{metric: summarize(complete[metric].dropna().tolist()) for metric in metrics}})
    rows.sort(key=lambda row: is_baseline(row["method"]))  # stable: the suite's order, baselines last
    return pd.DataFrame(rows, columns=[*ROW_COLUMNS, *metrics])


def _group_value(row: pd.Series, column: str) -> Any:
    """A configuration column of a row; a baseline row shows only what its cells keep (``config.baselines.KEPT``) and
    its 0 epochs: no batch size (it trains nothing), and raw pixels no backbone."""
    method = row["method"]
    if is_baseline(method) and column.split(".")[0] not in {"method", "dataset", "epochs", *KEPT[Baseline(method)]}:
        return EMPTY
    return row[column]


def protocol_order(metric: str) -> tuple:
    """The order of protocol columns: own set before ``eval.datasets``, then kNN, probes (all labels first), fine-tuning,
    detection."""
    key = parse_metric(metric)
    fraction = float(key.labels.rstrip("%")) if key.labels else 100.0
    return key.dataset or "", list(Family).index(key.family), key.k or 0, -fraction, key.protocol, key.name


def protocol_title(key: MetricKey) -> str:
    """A protocol column's header: ``kNN k=20``, ``linear 1%``, ``detection bbox AP``, ``cifar10: linear``."""
    words = [FAMILY_TITLES[key.family]]
    if key.k is not None:
        words.append(f"k={key.k}")
    if key.labels:
        words.append(key.labels)
    if key.family == Family.DETECTION:
        words += [key.protocol.split(".")[-1], key.name]
    title = " ".join(words)
    return f"{key.dataset}: {title}" if key.dataset else title


def build_leaderboard(suites: list[Suite], out: Path, *, uri: str | None = None, storage: str | None = None,
                      variants: Sequence[str] = ()) -> Path:
    """Write the leaderboard site of ``suites`` under ``out``; returns the path of its ``index.html``.

    ``uri`` is the MLflow tracking URI of every suite (default: each suite's, else ``$MLFLOW_TRACKING_URI``, else
    ``results/mlflow.db``); ``storage`` the Optuna storage of search suites (default: the suite's). Runs link to
    the MLflow web UI when the URI is http(s); otherwise their ids are shown with a note on how to browse them.
    ``variants`` says, per suite, which variant of it is shown (``as_run.Shown.line``).
    """
    names = [suite.name for suite in suites]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if not suites or repeated:
        raise ConfigError(f"leaderboard: give each suite once (repeated: {', '.join(repeated)})" if repeated else
                          "leaderboard: give at least one suite file, e.g. ssl-bench leaderboard suites/quickstart.yaml")
    out.mkdir(parents=True, exist_ok=True)
    _copy_static(out / "static")
    variants = list(variants) or [""] * len(suites)
    tables, notes = [], [html.escape(f"{suite.name}: {line}.") for suite, line in zip(suites, variants) if line]
    for suite, variant in zip(suites, variants):
        suite_uri = uri or tracking_uri(suite.tracking.mlflow_uri)
        df = suite_runs(suite, uri=suite_uri)
        rows, run_url = leaderboard_rows(suite, df), _run_url(suite, suite_uri)
        tables.append(rows.assign(links=[_run_links(runs, run_url) for runs in rows["runs"]]))
        folder = out / suite.name
        plots = suite_plots(suite, folder / "plots", uri=suite_uri, storage=storage, runs=df)
        folder.mkdir(exist_ok=True)
        (folder / "index.html").write_text(_suite_page(suite, df, plots, suite_uri, variant))
        if not _is_web(suite_uri):
            where = html.escape(suite_uri)
            notes.append(f"Runs of {suite.name} are in {where}, which has no web address, so their ids are shown as "
                         f"text: browse them with <code>mlflow ui --backend-store-uri {where}</code>.")
    index = out / "index.html"
    index.write_text(_index_page(suites, pd.concat(tables, ignore_index=True), notes))
    return index


def cmd_leaderboard(args: argparse.Namespace, console: Console) -> int:
    """``ssl-bench leaderboard SUITE... --out DIR``: write the site (the variant of each suite run last, or the
    files as they are with ``--as-file``) and print the address of its index."""
    shown = [shown_report_suite(path, [], as_run=None, as_file=args.as_file, tracking=args.tracking) for path in args.suites]
    for item in shown:
        console.print(f"{item.suite.name}: {item.line}", markup=False, highlight=False)
    index = build_leaderboard([item.suite for item in shown], args.out, uri=tracking_uri(args.tracking) if args.tracking else None,
                              storage=args.storage, variants=[item.line for item in shown])
    console.print(f"wrote {index}; open {index.resolve().as_uri()}", markup=False, highlight=False)
    return 0


def _best_trial(search: SearchConfig, df: pd.DataFrame) -> pd.DataFrame:
    """The complete trial with the best search metric; every trial when none completed."""
    done = df[(df["status"] == CellStatus.COMPLETE) & df[search.metric].notna()] if search.metric in df.columns else df.iloc[:0]
    if done.empty:
        return df.assign(**{key: EMPTY for key in search.space})
    best = done[search.metric].idxmax() if search.direction == "maximize" else done[search.metric].idxmin()
    return df.loc[[best]]


def _is_web(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _run_url(suite: Suite, uri: str) -> str | None:
    """``<server>/#/experiments/<id>/runs/`` of the suite's experiment on an http(s) tracking server, else None."""
    if not _is_web(uri):
        return None
    experiment = retry_locked(MlflowClient(tracking_uri=uri).get_experiment_by_name, suite.tracking.experiment or suite.name)
    return f"{uri.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs/"


def _run_links(runs: tuple[str, ...], base: str | None) -> str:
    if base is None:
        return " ".join(f'<code title="{run}">{run[:8]}</code>' for run in runs)
    return " ".join(f'<a href="{html.escape(base + run)}" title="{run}">{run[:8]}</a>' for run in runs)


def _copy_static(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for item in resources.files("bench.report").joinpath("site").iterdir():
        (folder / item.name).write_bytes(item.read_bytes())


def _cell(column: str, value: Any) -> str:
    """One configuration ``<td>`` of the leaderboard; numeric columns carry their value in data-sort."""
    if column == "suite":
        return f'<td><a href="{html.escape(value)}/index.html">{html.escape(value)}</a></td>'
    if column == "method":
        return f"<td>{html.escape(method_label(value))}</td>"
    if column in NUMERIC:  # a baseline's batch size is EMPTY: sorted last
        return f'<td class="num" data-sort="{"" if value == EMPTY else value}">{html.escape(label_text(value))}</td>'
    css = ' class="status"' if column == "not complete" and value else ""
    return f"<td{css}>{html.escape(label_text(value))}</td>"


def _protocol_cell(metric: str, summary: Any, best: bool, match: PaperMatch | None = None) -> str:
    """One protocol ``<td>``: ``mean ± std`` over ``[ci_low, ci_high] n=N`` (``n=1, no interval``), and the published
    number; data-* hold the unrounded numbers, data-sort the mean (empty where the row has none)."""
    paper = paper_span(metric, match)
    if not isinstance(summary, Summary) or summary.n == 0:  # not in this suite, or no complete run has it
        return f'<td class="num" data-metric="{metric}" data-sort="" data-n="0">{paper}</td>'
    text = format_value(metric, summary.mean)
    if summary.n > 1:
        text += f" ± {format_value(metric, summary.std)}"
        ci = f"[{format_value(metric, summary.ci_low)}, {format_value(metric, summary.ci_high)}] n={summary.n}"
    else:
        ci = "n=1, no interval"
    data = " ".join(f'data-{name.replace("_", "-")}="{getattr(summary, name)!r}"' for name in ("mean", "std", "ci_low", "ci_high"))
    mean = f"<strong>{text}</strong>" if best else text
    return (f'<td class="num{" best" * best}" data-metric="{metric}" data-sort="{summary.mean!r}" data-n="{summary.n}" {data}>'
            f'<span class="mean">{mean}</span><span class="ci">{ci}</span>{paper}</td>')


def _cost_headers(headline: str | None) -> str:
    """The GPU-hours column and, where the page has an accuracy on the pre-training set, that accuracy per GPU-hour."""
    hours = ('<th scope="col" data-metric="cost.gpu_hours" title="cost.gpu_hours: wall-clock hours of a run (training '
             'and evaluation) times the devices it held (GPUs; a CPU run counts its one process), mean over the runs">'
             "GPU-h</th>")
    if headline is None:
        return hours
    title = f"{headline} ({protocol_title(parse_metric(headline))} top-1, %) divided by the mean GPU-hours of the row's runs"
    return hours + (f'<th scope="col" data-metric="{headline}/gpu_hour" title="{html.escape(title)}">'
                    "top-1 per GPU-h</th>")


def _cost_cells(hours: Summary, accuracy: Summary | None) -> list[str]:
    """The row's mean GPU-hours and its headline accuracy (in points) per GPU-hour; empty where it has none."""
    if hours.n == 0:
        return ['<td class="num" data-sort=""></td>'] * (1 if accuracy is None else 2)
    cells = [f'<td class="num" data-sort="{hours.mean!r}">{hours.mean:.3g}</td>']
    if accuracy is None:
        return cells
    if not isinstance(accuracy, Summary) or accuracy.n == 0 or hours.mean <= 0:
        return [*cells, '<td class="num" data-sort=""></td>']
    rate = 100 * accuracy.mean / hours.mean
    return [*cells, f'<td class="num" data-sort="{rate!r}">{rate:.4g}</td>']


def paper_span(metric: str, match: PaperMatch | None) -> str:
    """``paper 92.6†`` with its source and the protocol fields that differ (``field: theirs vs ours``) on hover."""
    if match is None:
        return ""
    value = format_value(metric, match.reference.fraction())
    note = match.comparison.note() if match.kind != MatchKind.EXACT else "the same protocol"
    title = f"published {value}: {match.reference.citation()}; {note}"
    return (f'<span class="paper {match.kind.value}" data-paper="{match.reference.fraction()!r}" title="{html.escape(title)}">'
            f"paper {value}{match.kind.mark}</span>")


def _best_cells(rows: pd.DataFrame, metrics: list[str]) -> set[tuple[int, str]]:
    """(row, metric) of each suite's, dataset's and protocol's best mean (max, or min for a loss), baselines never."""
    best = set()
    methods = rows[~rows["method"].map(is_baseline)]
    for metric in metrics:
        means = methods[metric].map(lambda s: s.mean if isinstance(s, Summary) and s.n else math.nan)
        for _, group in means.groupby([methods["suite"], methods["dataset"]], sort=False):
            pick = group.min() if parse_metric(metric).lower_is_better else group.max()
            best.update((i, metric) for i in group.index[group == pick])
    return best


def _index_page(suites: list[Suite], rows: pd.DataFrame, notes: list[str]) -> str:
    metrics = sorted((c for c in rows.columns if c not in (*ROW_COLUMNS, "links")), key=protocol_order)
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in CONFIG_HEADERS)
    head += "".join(f'<th scope="col" title="{m}" data-metric="{m}">{html.escape(protocol_title(parse_metric(m)))}</th>'
                    for m in metrics)
    headline = next((m for m in metrics if parse_metric(m).is_accuracy and parse_metric(m).dataset is None), None)
    head += _cost_headers(headline)
    head += "".join(f'<th scope="col">{html.escape(h)}</th>' for h in TAIL_HEADERS)
    best = _best_cells(rows, metrics)
    lines = []
    for i, row in rows.iterrows():
        cells = [_cell(h, row[h]) for h in CONFIG_HEADERS]
        cells += [_protocol_cell(m, row[m], (i, m) in best, row["paper"].get(m)) for m in metrics]
        cells += _cost_cells(row[COST], row[headline] if headline else None)
        cells += [_cell("not complete", row["not complete"]), f'<td data-runs="{" ".join(row["runs"])}">{row["links"]}</td>']
        lines.append("<tr>" + "".join(cells) + "</tr>")
    pages = ", ".join(f'<a href="{html.escape(s.name)}/index.html">{html.escape(s.name)}</a>' for s in suites)
    accuracy = any(parse_metric(m).is_accuracy for m in metrics)
    level = f"{CONFIDENCE:.0%}".replace("%", " %")
    content = f"""<h1>ssl-bench leaderboard</h1>
<p>Suites: {pages}. Each row is one configuration (method, dataset, backbone, epochs, batch size and the suite's
other settings), each protocol column its number on the test split{" (top-1 accuracy in %)" if accuracy else ""}:
mean ± sample std over seeds, under it the {level} confidence interval (t-distribution with n-1 degrees of freedom)
and n, the complete runs averaged (one run: no interval). Bold: the best of each suite, dataset and protocol
(baseline rows never). Under it the published number closest to the row's protocol: plain where its protocol
record is ours, † where some must-match field differs, ‡ where its source does not state some; hover it for the
source and the fields (theirs vs ours). GPU-h: the mean wall-clock hours of the row's runs (training and
evaluation) times the devices each held (a CPU run counts its one process); the column after it divides the
first top-1 accuracy by them. Hover a header for the metric's name.</p>
{"".join(f'<p class="note">{note}</p>' for note in notes)}
<div class="filter"><label>Filter <input type="search" id="filter" data-filter="leaderboard"
placeholder="words to match, e.g. vicreg digits"></label><span data-count-for="leaderboard"></span></div>
<table id="leaderboard" class="sortable">
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(lines)}
</tbody>
</table>"""
    return _page("ssl-bench leaderboard", content, "static")


def _suite_page(suite: Suite, df: pd.DataFrame, plots: list[Plot], uri: str, variant: str) -> str:
    counts = Counter(df["status"])
    status = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])
    keys = varying(df, [key for key in suite_axes(suite) + list(suite.search.space if suite.search else [])
                        if key not in ("method", "dataset", "seed")])
    filled = fill_missing(df, keys)
    tables = "\n".join(to_html(pivot(filled, ["method", *keys], ["dataset"], metric)) for metric in headline_metrics(suite, df))
    figures = "\n".join(f'<figure><a href="plots/{p.paths[1].name}"><img src="plots/{p.paths[0].name}" alt="{html.escape(p.name)}">'
                        f"</a><figcaption>{html.escape(p.name)} (click for SVG)</figcaption></figure>" for p in plots)
    content = f"""<p><a href="../index.html">← leaderboard</a></p>
<h1>suite {html.escape(suite.name)}</h1>
<p>{html.escape(suite.description)}</p>
{f'<p class="note">{html.escape(variant)}.</p>' if variant else ""}
<p>{len(df)} {"trials" if suite.search else "cells"}: {status}. Runs in <code>{html.escape(uri)}</code>.</p>
<h2>Tables</h2>
{tables or "<p>No complete run has an evaluation metric yet.</p>"}
<h2>Plots</h2>
<div class="plots">
{figures or "<p>No plot applies yet.</p>"}
</div>"""
    return _page(f"{suite.name} — ssl-bench", content, "../static")


def _page(title: str, content: str, static: str) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{static}/site.css">
<script src="{static}/table.js" defer></script>
</head>
<body>
{content}
<footer class="note">Written by ssl-bench {bench.__version__} on {now}.</footer>
</body>
</html>
"""
