"""Plots of a suite's results: ablations with error bars over seeds, training and kNN curves from MLflow metric
histories, and a search's optimization history and parameter importances (matplotlib, Agg, PNG and SVG).

Every plot function returns a ``Plot``: the files written, the data drawn (one row per point or bar) and the
matplotlib ``Figure`` (a plain Figure with an Agg canvas, not held by pyplot), so callers can check what was drawn.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator
from mlflow import MlflowClient
from optuna.trial import TrialState

from bench.core.states import CellStatus
from bench.suite.suite import Suite, expand_suite
from bench.errors import ConfigError
from bench.orchestrate.launch import load_study, storage_url
from bench.report.labels import EMPTY, label_text, method_label
from bench.report.metric_key import parse_metric
from bench.report.pivot import pivot
from bench.report.runs import CONFIG_COLUMN, METHOD_TAG, SELECTION_COLUMN, STATUSES, flatten_config, resolve_key, suite_runs
from bench.stores import sqlite_file
from bench.tracking.mlflow_runs import retry_locked, tracking_uri
from bench.train.records import MONITOR

#: the columns of ``suite_runs`` that describe a cell rather than its config or its metrics
CELL_COLUMNS = ("cell_id", "run_id", "status", "fail_reason", CONFIG_COLUMN, SELECTION_COLUMN)
#: a numeric axis whose largest value is this many times its smallest is drawn on a log scale
LOG_RATIO = 10
#: the width over which the points of one category are spread, so their error bars do not overlap
DODGE = 0.4
LINE_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Plot:
    """One plot: its PNG and SVG files, the data drawn and the figure drawn."""

    name: str
    paths: tuple[Path, Path]
    data: pd.DataFrame
    figure: Figure


def suite_axes(suite: Suite) -> list[str]:
    """The suite's axis keys as cells name them (matrix, zip, then ablations); seeds and search keys excluded."""
    keys = list(suite.matrix) + [key for entry in suite.zip for key in entry] + list(suite.ablations)
    return list(dict.fromkeys(keys))


def metric_columns(suite: Suite, df: pd.DataFrame) -> list[str]:
    """The final-metric columns of ``suite_runs``' frame: the columns that are no cell field, axis or config key."""
    known = set(CELL_COLUMNS) | set(suite_axes(suite)) | {"seed"}
    for cell in expand_suite(suite):
        known.update(cell.axes)
        known.update(flatten_config(cell.config.model_dump(mode="json")))
    if suite.search is not None:
        known.update(suite.search.space)
    return [c for c in df.columns if c not in known and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()]


def headline_metrics(suite: Suite, df: pd.DataFrame) -> list[str]:
    """The metrics worth a plot or a table: test-split evaluations (no ``val.``, ``diag.``, ``train.``), no top-5."""
    return sorted(c for c in metric_columns(suite, df) if parse_metric(c).is_headline)


def varying(df: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys (columns of ``df``) that take more than one value in ``df``, ignoring cells without a value."""
    return [key for key in keys if key in df.columns and df[key].nunique() > 1]


def fill_missing(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``df`` with an empty mark where a cell has no value for one of ``keys`` (a VICReg key on a SimCLR cell)."""
    return df.assign(**{key: df[key].astype(object).where(df[key].notna(), EMPTY) for key in keys})


def ablation_plot(df: pd.DataFrame, axis: str, metric: str, out_dir: Path, *, hue: str = "method",
                  by: list[str] | tuple[str, ...] = ()) -> Plot:
    """``metric`` against the values of ``axis``: mean ± sample std over seeds, one line per ``hue`` value.

    ``df`` is ``suite_runs``' frame. Keys in ``by`` (other axes of the suite) split the lines further where they
    take several values among the complete runs. Numeric axes are drawn as lines at their values (log scale over a
    decade or more), categorical axes as points evenly spaced (the lines side by side), both in the suite's order;
    the title counts the cells not shown.
    """
    x_key, hue_key, metric = resolve_key(df, axis), resolve_key(df, hue), resolve_key(df, metric)
    cells = df[df[x_key].notna()]
    done = cells[(cells["status"] == CellStatus.COMPLETE) & cells[metric].notna()]
    if done.empty:
        raise ConfigError(f"no complete run has {metric} and a value of {axis}; run the suite first "
                          "(ssl-bench run SUITE) or pick a metric and an axis of its complete runs")
    split = varying(done, [key for key in (resolve_key(df, k) for k in by) if key not in (x_key, hue_key)])
    table = pivot(fill_missing(cells, split), [hue_key, *split], [x_key], metric)
    values = list(table.mean.columns)
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
    positions = [float(v) for v in values] if numeric else list(range(len(values)))

    lines = [i for i in range(len(table.mean.index)) if table.n.iloc[i].sum() > 0]
    fig, ax = _figure()
    points = []
    for k, i in enumerate(lines):
        label = table.mean.index[i]
        keys = label if isinstance(label, tuple) else (label,)
        first = method_label(keys[0]) if hue_key == "method" else label_text(keys[0])
        name = " · ".join([first] + [f"{key}={label_text(v)}" for key, v in zip(split, keys[1:]) if v != EMPTY])
        shift = 0.0 if numeric else DODGE * (k - (len(lines) - 1) / 2) / len(lines)
        drawn = [j for j in range(len(values)) if table.n.iat[i, j] > 0]
        xs = [positions[j] + shift for j in drawn]
        means = [table.mean.iat[i, j] for j in drawn]
        stds = [table.std.iat[i, j] for j in drawn]
        ax.errorbar(xs, means, yerr=[0.0 if math.isnan(s) else s for s in stds], marker="o", capsize=4,
                    linestyle="-" if numeric else "none", label=name)
        points += [{"line": name, hue_key: keys[0], **dict(zip(split, keys[1:])), x_key: values[j], "x": x,
                    "mean": m, "std": s, "n": int(table.n.iat[i, j])} for j, x, m, s in zip(drawn, xs, means, stds)]
    if numeric and min(positions) > 0 and max(positions) >= LOG_RATIO * min(positions):
        ax.set_xscale("log")
    ax.set_xticks(positions, labels=[label_text(v) for v in values])
    ax.xaxis.set_minor_locator(NullLocator())
    hidden = Counter(cells["status"][cells["status"] != CellStatus.COMPLETE])
    note = ", ".join(f"{hidden[s]} {s}" for s in STATUSES if hidden[s])
    ax.set_title(f"{metric} vs {axis}" + (f"\n(not shown: {note})" if note else ""))
    ax.set_xlabel(axis)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.legend(fontsize="small")
    return _save(fig, out_dir, f"ablation_{_slug(axis)}_{_slug(metric)}", pd.DataFrame(points))


def training_curves(uri: str, run_ids: list[str], out_dir: Path, *, metric: str = "train/loss") -> Plot:
    """One line per run of a per-epoch MLflow metric (``step`` = epoch), coloured by method, styled by dataset.

    Each line's gid is its run id; a step logged twice (a resumed run) keeps its latest value.
    """
    client = MlflowClient(tracking_uri=uri)
    fig, ax = _figure()
    colours: dict[str, str] = {}
    styles: dict[str, str] = {}
    named: set[tuple[str, str]] = set()
    frames = []
    for run_id in run_ids:
        tags = retry_locked(client.get_run, run_id).data.tags
        history = sorted(retry_locked(client.get_metric_history, run_id, metric), key=lambda m: (m.step, m.timestamp))
        if not history:
            continue
        curve = pd.DataFrame({"step": [m.step for m in history], "value": [m.value for m in history]})
        curve = curve.drop_duplicates("step", keep="last").reset_index(drop=True)
        method, dataset = tags.get(METHOD_TAG, "?"), tags.get("ssl_bench.dataset", "?")
        colour = colours.setdefault(method, f"C{len(colours) % 10}")
        style = styles.setdefault(dataset, LINE_STYLES[len(styles) % len(LINE_STYLES)])
        label = f"{method} · {dataset}" if (method, dataset) not in named else "_nolegend_"
        named.add((method, dataset))
        ax.plot(curve["step"], curve["value"], color=colour, linestyle=style, marker=".", label=label, gid=run_id)
        frames.append(curve.assign(run_id=run_id, method=method, dataset=dataset))
    if not frames:
        raise ConfigError(f"none of the {len(run_ids)} runs logged the per-epoch metric {metric} in {uri}; "
                          f"per-epoch metrics are train/<field> and {MONITOR} (which needs train.knn_every > 0)")
    values = pd.concat(frames, ignore_index=True)["value"]
    if values.min() > 0 and values.max() > 20 * values.min():  # losses of different methods differ by orders of magnitude
        ax.set_yscale("log")
    ax.set_title(f"{metric} per epoch ({len(frames)} runs)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return _save(fig, out_dir, f"curves_{_slug(metric)}", pd.concat(frames, ignore_index=True))


def knn_curves(uri: str, run_ids: list[str], out_dir: Path) -> Plot:
    """The online kNN top-1 accuracy on the validation split (``val/knn20.top1``) of each run over the epochs."""
    return training_curves(uri, run_ids, out_dir, metric=MONITOR)


def search_plots(study: optuna.Study, out_dir: Path, *, metric: str = "objective") -> list[Plot]:
    """A search's optimization history (once a trial completed) and parameter importances (from two trials).

    The history shows each complete trial's value, each pruned trial's last reported value, and the best value so
    far; importances are Optuna's default evaluator's, one bar per searched parameter.
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return []
    better = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    rows, best = [], math.nan
    for t in trials:
        if t.state == TrialState.COMPLETE:
            best = t.value if math.isnan(best) else better(best, t.value)
        if t.value is not None:
            rows.append({"number": t.number, "value": t.value, "state": t.state.name.lower(), "best": best})
    history = pd.DataFrame(rows)
    fig, ax = _figure()
    for state, marker in ((CellStatus.COMPLETE, "o"), (CellStatus.PRUNED, "x")):
        part = history[history["state"] == state]
        if not part.empty:
            ax.scatter(part["number"], part["value"], marker=marker, label=f"{state} trials", gid=state)
    so_far = history.dropna(subset="best")
    ax.step(so_far["number"], so_far["best"], where="post", color="black", label="best so far", gid="best")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"optimization history of {study.study_name}")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    plots = [_save(fig, out_dir, "search_history", history)]
    if len(complete) >= 2:
        importances = optuna.importance.get_param_importances(study)
        data = pd.DataFrame({"param": list(importances), "importance": [float(v) for v in importances.values()]})
        fig, ax = _figure()
        ax.barh(data["param"][::-1], data["importance"][::-1])
        ax.set_title(f"parameter importances for {metric} ({len(complete)} complete trials)")
        ax.set_xlabel("importance (Optuna's default evaluator)")
        plots.append(_save(fig, out_dir, "search_importances", data))
    return plots


def suite_plots(suite: Suite, out_dir: Path, *, uri: str | None = None, storage: str | None = None,
                runs: pd.DataFrame | None = None) -> list[Plot]:
    """Every plot that applies to ``suite``, written to ``out_dir``.

    An ablation plot per headline metric and per axis with more than one value (``method`` is the hue), the
    loss curves and, when the online kNN was on, the kNN curves of its complete and pruned runs, and the search
    plots of a search suite (its study read from ``storage``, default the suite's). ``runs`` is ``suite_runs``'
    frame when the caller has it already.
    """
    uri = uri or tracking_uri(suite.tracking.mlflow_uri)
    df = suite_runs(suite, uri=uri) if runs is None else runs
    if df.empty:  # a search that has not started a trial yet
        return []
    plots = []
    done = df[df["status"] == CellStatus.COMPLETE]
    axes = [key for key in suite_axes(suite) if key != "method" and df[key].nunique() > 1]
    for metric in headline_metrics(suite, df):
        for axis in axes:
            if done.loc[done[axis].notna(), metric].notna().any():
                plots.append(ablation_plot(df, axis, metric, out_dir, by=[key for key in axes if key != axis]))
    run_ids = df.loc[df["status"].isin([CellStatus.COMPLETE, CellStatus.PRUNED]), "run_id"].dropna().tolist()
    if run_ids:
        plots.append(training_curves(uri, run_ids, out_dir))
        if (df["train.knn_every"] > 0).any():
            plots.append(knn_curves(uri, run_ids, out_dir))
    if suite.search is not None:
        plots += search_plots(suite_study(suite, storage), out_dir, metric=suite.search.metric)
    return plots


def suite_study(suite: Suite, storage: str | None = None) -> optuna.Study:
    """The suite's Optuna study in ``storage`` (default: the suite's, else ``results/optuna.db``)."""
    url = storage_url(suite, storage)
    if (store := sqlite_file(url)) is not None and not store.is_file():
        raise ConfigError(f"no Optuna storage at {url}: run the suite first (ssl-bench run SUITE), or give the storage "
                          "it ran with (--storage or the suite's storage.url)")
    study = load_study(suite, url)
    if study is None:
        raise ConfigError(f"no study '{suite.name}' in {url}: run the suite first (ssl-bench run SUITE), or give the "
                          "storage it ran with (--storage or the suite's storage.url)")
    return study


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, out_dir: Path, name: str, data: pd.DataFrame) -> Plot:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    fig.savefig(png, dpi=120)
    fig.savefig(svg, metadata={"Date": None})
    return Plot(name, (png, svg), data, fig)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
