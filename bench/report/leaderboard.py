"""The leaderboard: a static site, readable straight from disk (file://), over the results of several suites.

``<out>/index.html`` holds one table across suites, sortable (click a header) and filterable (type words): one row
per group of cells that differ only by seed and per evaluation protocol (kNN, linear, label fractions, fine-tuning,
detection: every final metric but ``diag.*`` and ``train.*``), with mean ± sample std over the seeds, n, the cells
that did not complete, and the MLflow runs. A search suite contributes its best complete trial. Each suite also
gets ``<out>/<suite>/index.html`` with its pivot tables (``table.to_html``) and plots (``plots.suite_plots``).
The script and stylesheet come from the package's ``site/`` folder, copied to ``<out>/static``.
"""

from __future__ import annotations

import argparse
import html
import math
from collections import Counter
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from rich.console import Console

import bench
from bench.config.search import SearchConfig
from bench.config.suite import Suite, load_suite
from bench.errors import ConfigError
from bench.report.plots import Plot, fill_missing, headline_metrics, protocol_metrics, suite_axes, suite_plots, varying
from bench.report.runs import STATUSES, suite_runs
from bench.report.table import EMPTY, format_value, is_accuracy, label_text, pivot, to_html
from bench.tracking.mlflow_runs import retry_locked, tracking_uri

#: leaderboard column -> the ``suite_runs`` column it shows; the cells of one row differ in nothing else but seed
GROUP_COLUMNS = {"method": "method", "dataset": "dataset", "backbone": "backbone.name", "epochs": "epochs",
                 "batch size": "batch_size"}
#: axes shown in their own leaderboard column (or in none: the seed), so left out of its "setting" text
OWN_COLUMN_AXES = frozenset({"method", "dataset", "backbone", "epochs", "batch_size", "seed"})
HEADERS = ("suite", "method", "dataset", "setting", "backbone", "epochs", "batch size", "protocol", "mean ± std", "n",
           "not complete", "MLflow runs")
#: the columns of ``leaderboard_rows``
ROW_COLUMNS = ("suite", *GROUP_COLUMNS, "setting", "not complete", "protocol", "mean", "n", "std", "runs")
#: leaderboard columns sorted as numbers (their cells carry data-sort)
NUMERIC = frozenset({"epochs", "batch size", "mean ± std", "n"})


def leaderboard_rows(suite: Suite, df: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard rows of one suite from ``suite_runs``' frame, one per (group of seeds, protocol metric).

    Columns are ``ROW_COLUMNS``: ``setting`` is the text of the suite's other axes, ``not complete`` counts the
    group's cells by status, ``runs`` is the tuple of the complete runs averaged. A group with no complete run gets
    one row without a protocol, so failed and missing cells are shown, never dropped.
    """
    if df.empty:  # a search that has not started a trial yet
        return pd.DataFrame(columns=ROW_COLUMNS)
    metrics = protocol_metrics(suite, df)
    prefix = ""
    if suite.search is not None:
        prefix = f"best of {len(df)} trials: "
        df, setting = _best_trial(suite.search, df), list(suite.search.space)
    else:
        setting = varying(df, [key for key in suite_axes(suite) if key not in OWN_COLUMN_AXES])
    rows = []
    for _, group in fill_missing(df, setting).groupby([*GROUP_COLUMNS.values(), *setting], sort=False, dropna=False):
        first = group.iloc[0]
        fields = {"suite": suite.name, **{name: first[column] for name, column in GROUP_COLUMNS.items()},
                  "setting": prefix + " ".join(f"{key}={label_text(first[key])}" for key in setting if first[key] != EMPTY)}
        counts = Counter(group["status"])
        fields["not complete"] = ", ".join(f"{counts[s]} {s}" for s in STATUSES if s != "complete" and counts[s])
        complete = group[group["status"] == "complete"]
        found = [(metric, complete[metric].dropna()) for metric in metrics]
        found = [(metric, values) for metric, values in found if len(values)]
        for metric, values in found:
            rows.append({**fields, "protocol": metric, "mean": float(values.mean()), "n": len(values),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                         "runs": tuple(complete.loc[values.index, "run_id"])})
        if not found:
            rows.append({**fields, "protocol": EMPTY, "mean": math.nan, "std": math.nan, "n": 0, "runs": ()})
    return pd.DataFrame(rows, columns=ROW_COLUMNS)


def build_leaderboard(suites: list[Suite], out: Path, *, uri: str | None = None, storage: str | None = None) -> Path:
    """Write the leaderboard site of ``suites`` under ``out``; returns the path of its ``index.html``.

    ``uri`` is the MLflow tracking URI of every suite (default: each suite's, else ``$MLFLOW_TRACKING_URI``, else
    ``results/mlflow.db``); ``storage`` the Optuna storage of search suites (default: the suite's). Runs link to
    the MLflow web UI when the URI is http(s); otherwise their ids are shown with a note on how to browse them.
    """
    names = [suite.name for suite in suites]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if not suites or repeated:
        raise ConfigError(f"leaderboard: give each suite once (repeated: {', '.join(repeated)})" if repeated else
                          "leaderboard: give at least one suite file, e.g. ssl-bench leaderboard suites/quickstart.yaml")
    out.mkdir(parents=True, exist_ok=True)
    _copy_static(out / "static")
    tables, notes = [], []
    for suite in suites:
        suite_uri = uri or tracking_uri(suite.tracking.mlflow_uri)
        df = suite_runs(suite, uri=suite_uri)
        rows, run_url = leaderboard_rows(suite, df), _run_url(suite, suite_uri)
        tables.append(rows.assign(links=[_run_links(runs, run_url) for runs in rows["runs"]]))
        folder = out / suite.name
        plots = suite_plots(suite, folder / "plots", uri=suite_uri, storage=storage, runs=df)
        folder.mkdir(exist_ok=True)
        (folder / "index.html").write_text(_suite_page(suite, df, plots, suite_uri))
        if not _is_web(suite_uri):
            where = html.escape(suite_uri)
            notes.append(f"Runs of {suite.name} are in {where}, which has no web address, so their ids are shown as "
                         f"text: browse them with <code>mlflow ui --backend-store-uri {where}</code>.")
    index = out / "index.html"
    index.write_text(_index_page(suites, pd.concat(tables, ignore_index=True), notes))
    return index


def cmd_leaderboard(args: argparse.Namespace, console: Console) -> int:
    """``ssl-bench leaderboard SUITE... --out DIR``: write the site and print the address of its index."""
    suites = [load_suite(path) for path in args.suites]
    index = build_leaderboard(suites, args.out, uri=tracking_uri(args.tracking) if args.tracking else None,
                              storage=args.storage)
    console.print(f"wrote {index}; open {index.resolve().as_uri()}", markup=False, highlight=False)
    return 0


def _best_trial(search: SearchConfig, df: pd.DataFrame) -> pd.DataFrame:
    """The complete trial with the best search metric; every trial when none completed."""
    done = df[(df["status"] == "complete") & df[search.metric].notna()] if search.metric in df.columns else df.iloc[:0]
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


def _cell(column: str, value: Any, row: pd.Series) -> str:
    """One ``<td>`` of the leaderboard; numeric columns carry their unrounded value in data-sort."""
    if column == "suite":
        return f'<td><a href="{html.escape(value)}/index.html">{html.escape(value)}</a></td>'
    if column == "mean ± std":
        text = format_value(row["protocol"], row["mean"])
        if row["n"] > 1:
            text += f" ± {format_value(row['protocol'], row['std'])}"
        sort = "" if math.isnan(row["mean"]) else repr(row["mean"])
        return f'<td class="num" data-sort="{sort}" data-std="{row["std"]!r}">{text}</td>'
    if column == "MLflow runs":
        return f'<td data-runs="{" ".join(row["runs"])}">{row["links"]}</td>'
    if column in NUMERIC:
        return f'<td class="num" data-sort="{value}">{html.escape(label_text(value))}</td>'
    css = ' class="status"' if column == "not complete" and value else ""
    return f"<td{css}>{html.escape(label_text(value))}</td>"


def _index_page(suites: list[Suite], rows: pd.DataFrame, notes: list[str]) -> str:
    head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in HEADERS)
    body = "\n".join("<tr>" + "".join(_cell(h, row.get(h), row) for h in HEADERS) + "</tr>" for _, row in rows.iterrows())
    pages = ", ".join(f'<a href="{html.escape(s.name)}/index.html">{html.escape(s.name)}</a>' for s in suites)
    accuracy = any(is_accuracy(metric) for metric in rows["protocol"])
    content = f"""<h1>ssl-bench leaderboard</h1>
<p>Suites: {pages}. Each row is one configuration and one evaluation protocol: mean ± sample std over seeds
(± omitted for one run){", accuracies in %" if accuracy else ""}; n counts the complete runs averaged.</p>
{"".join(f'<p class="note">{note}</p>' for note in notes)}
<div class="filter"><label>Filter <input type="search" id="filter" data-filter="leaderboard"
placeholder="words to match, e.g. vicreg digits linear"></label><span data-count-for="leaderboard"></span></div>
<table id="leaderboard" class="sortable">
<thead><tr>{head}</tr></thead>
<tbody>
{body}
</tbody>
</table>"""
    return _page("ssl-bench leaderboard", content, "static")


def _suite_page(suite: Suite, df: pd.DataFrame, plots: list[Plot], uri: str) -> str:
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
