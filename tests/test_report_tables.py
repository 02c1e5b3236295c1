"""Report tables: a real ablation suite's MLflow runs -> pandas -> pivot tables (md, csv, LaTeX, HTML), the
published reference numbers, and run comparisons. Every number is checked against a direct recomputation from
``mlflow.search_runs`` grouped with pandas."""

from __future__ import annotations

import argparse
import io
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from rich.console import Console
from scipy import stats
from suite_fixtures import DEFAULTS

from bench.cli import build_parser, main
from bench.config.run import resolve_run_config
from bench.suite.as_run import shown_suite
from bench.suite.suite import expand_suite, load_suite, suite_from_yaml
from bench.orchestrate.queue import create_study, open_storage, study_history
from bench.errors import ConfigError
from bench.report.compare import cmd_compare, compare
from bench.report.labels import format_value
from bench.report.pivot import pivot
from bench.report.runs import mlflow_history, resolve_key, suite_runs
from bench.report.table import cmd_table, to_csv, to_html, to_latex, to_markdown
from bench.tracking.mlflow_runs import SuiteTracker, tracking_uri

pytestmark = pytest.mark.xdist_group("report")  # shares the session's report suites (tests/conftest.py)

@dataclass(frozen=True)
class Ablation:
    """The ablation suite after its run: file, tracking URI, ``suite_runs`` frame and ``mlflow.search_runs`` frame."""

    path: Path
    uri: str
    df: pd.DataFrame
    direct: pd.DataFrame


@pytest.fixture(scope="module")
def ablation(report_base) -> Ablation:
    base = report_base
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        path = base / "report_ablation.yaml"
        uri = f"sqlite:///{base}/results/mlflow.db"
        df = suite_runs(load_suite(path), uri=uri)
        mlflow.set_tracking_uri(uri)  # sets $MLFLOW_TRACKING_URI too: restored below
        try:
            direct = mlflow.search_runs(experiment_names=["report_ablation"])
        finally:
            mlflow.set_tracking_uri(None)
    return Ablation(path, uri, df, direct[direct["tags.ssl_bench.role"] == "cell"])


def _complete(direct: pd.DataFrame) -> pd.DataFrame:
    return direct[direct["tags.ssl_bench.status"] == "complete"]


def _cells(markdown: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell: the other cells' texts, bold marks removed."""
    rows = [line.strip("|").split(" | ") for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return {cells[0].strip(): [c.strip().strip("*") for c in cells[1:]] for cells in rows[1:]}


def _shown(metric: str, values: pd.Series) -> str:
    """A table cell's text for ``values``: mean ± std [95 % t-interval] n, computed with scipy."""
    n, mean = len(values), values.mean()
    if n == 1:
        return f"{format_value(metric, mean)} (n=1, no interval)"
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(values))
    return (f"{format_value(metric, mean)} ± {format_value(metric, values.std(ddof=1))} "
            f"[{format_value(metric, low)}, {format_value(metric, high)}] n={n}")


def test_suite_runs_has_one_row_per_expected_cell_with_status_axes_config_and_metrics(ablation):
    df, direct = ablation.df, ablation.direct
    cells = expand_suite(load_suite(ablation.path))
    assert df["cell_id"].tolist() == [c.id for c in cells]
    assert df["status"].value_counts().to_dict() == {"complete": 12, "failed": 1, "missing": 1}
    missing = df[df["status"] == "missing"].iloc[0]
    assert (missing["method"], missing["dataset"], missing["seed"], missing["run_id"]) == ("simclr", "shapes", 2, None)
    assert math.isnan(missing["knn20.top1"])
    failed = df[df["status"] == "failed"].iloc[0]
    assert failed["fail_reason"].startswith("diverged") and failed["optimizer.lr"] == 1.0e30
    assert (failed["vicreg.projector"], failed["vicreg.optimizer.lr"], failed["seed"]) == ("32-32", 1.0e30, 1)
    by_cell = direct.set_index("tags.ssl_bench.cell_id")
    ran = df[df["status"] != "missing"]
    assert ran["run_id"].tolist() == by_cell.loc[ran["cell_id"], "run_id"].tolist()
    for column in ("knn20.top1", "linear.top1", "diag.effective_rank"):
        assert ran[column].tolist() == pytest.approx(by_cell.loc[ran["cell_id"], f"metrics.{column}"].tolist(), nan_ok=True)
    assert ran["method.projector"].tolist() == by_cell.loc[ran["cell_id"], "params.method.projector"].tolist()
    assert set(df["batch_size"]) == {64} and set(df["optimizer.name"]) == {"adamw"}
    assert df["eval.knn_k"].iloc[0] == "[20]"  # a list, as text that pandas can group
    assert not any("/" in column for column in df.columns)  # per-epoch metrics are not final metrics


def test_method_by_dataset_table_equals_a_direct_recomputation(ablation):
    table = pivot(ablation.df, ["method"], ["dataset"], "knn20.top1")
    done = _complete(ablation.direct)
    grouped = done.groupby(["tags.ssl_bench.method", "tags.ssl_bench.dataset"])["metrics.knn20.top1"]
    assert table.mean.index.tolist() == ["simclr", "vicreg"] and table.mean.columns.tolist() == ["shapes", "digits"]
    cells = _cells(to_markdown(table))
    for (method, dataset), values in grouped:
        assert table.mean.loc[method, dataset] == pytest.approx(values.mean())
        assert table.std.loc[method, dataset] == pytest.approx(values.std())
        assert table.n.loc[method, dataset] == len(values)
        shown = cells[method][table.mean.columns.get_loc(dataset)]
        assert shown.startswith(_shown("knn20.top1", values))
    assert table.note(0, 0) == "missing (1/3)" and cells["simclr"][0].endswith(", missing (1/3)")
    assert table.note(1, 1) == "failed (1/5)" and cells["vicreg"][1].endswith(", failed (1/5)")
    assert table.cells.loc[("vicreg", "digits")].to_dict() == {"complete": 4, "failed": 1, "running": 0, "pruned": 0, "missing": 0}
    for dataset in ("shapes", "digits"):
        assert table.best[dataset].tolist() == (table.mean[dataset] == table.mean[dataset].max()).tolist()


@pytest.mark.parametrize("key, param", [("vicreg.projector", "params.axis.vicreg.projector"), ("projector", "params.method.projector")])
def test_ablation_table_equals_a_direct_recomputation(ablation, key, param):
    table = pivot(ablation.df, [key], ["dataset"], "linear.top1")
    done = _complete(ablation.direct).dropna(subset=[param])
    grouped = done.groupby([param, "tags.ssl_bench.dataset"])["metrics.linear.top1"].agg(["mean", "std", "count"])
    assert len(grouped) == table.n.to_numpy().astype(bool).sum()
    for (value, dataset), expected in grouped.iterrows():
        assert table.mean.loc[value, dataset] == pytest.approx(expected["mean"])
        assert table.std.loc[value, dataset] == pytest.approx(expected["std"], nan_ok=True)
        assert table.n.loc[value, dataset] == expected["count"]
    projectors = {"vicreg.projector": ["16-16", "32-32"], "projector": ["16-8", "16-16", "32-32"]}[key]
    assert table.mean.index.tolist() == projectors
    # the SimCLR cells have no VICReg projector: left out, and said so
    assert table.left_out == (5 if key == "vicreg.projector" else 0)
    assert ("5 cells without a value for vicreg.projector" in to_markdown(table)) == (key == "vicreg.projector")
    assert table.note(projectors.index("32-32"), 1) == "failed (1/3)"


def test_failed_and_never_run_cells_are_shown_as_such(ablation):
    table = pivot(ablation.df, ["method", "seed"], ["dataset"], "knn20.top1")
    lines = [line for line in to_markdown(table).splitlines() if line.startswith("| simclr | 2 |")]
    assert lines == ["| simclr | 2 | missing | – |"]  # seed 2 exists for shapes only
    i = table.mean.index.get_loc(("vicreg", 1))
    assert table.note(i, 1) == "failed (1/3)" and table.note(i, 0) == ""
    html = ET.fromstring(to_html(table))
    assert [td.text for td in html.iter("td") if td.get("class") == "missing"] == ["missing"]


def test_one_table_in_markdown_csv_latex_and_html(ablation):
    table = pivot(ablation.df, ["vicreg.projector"], ["dataset", "seed"], "diag.effective_rank", baseline="16-16")
    width = len(table.rows) + 3 * len(table.mean.columns)  # value, delta and p per column
    md = to_markdown(table)
    header = next(line for line in md.splitlines() if line.startswith("| "))
    assert len(header.strip("|").split(" | ")) == width

    tex = to_latex(table)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule") < tex.index(r"\end{tabular}")
    spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex)[1]
    body = tex[tex.index(r"\toprule"):tex.index(r"\bottomrule")]
    lines = [line for line in body.splitlines() if line.endswith(r"\\")]
    assert len(lines) == 1 + len(table.mean.index)
    assert all(len(line.split(" & ")) == len(spec) == width for line in lines)
    assert r"diag.effective\_rank" in tex and "effective_rank" not in tex
    assert tex.count(r"\textbf{") == table.best.to_numpy().sum() > 0

    csv = pd.read_csv(io.StringIO(to_csv(table)))
    assert csv["vicreg.projector"].tolist() == table.mean.index.tolist()
    for j, (dataset, seed) in enumerate(table.mean.columns):
        assert csv[f"{dataset} / {seed} mean"].tolist() == pytest.approx(table.mean.iloc[:, j].tolist(), nan_ok=True)
        assert csv[f"{dataset} / {seed} std"].tolist() == pytest.approx(table.std.iloc[:, j].tolist(), nan_ok=True)
        assert csv[f"{dataset} / {seed} n"].tolist() == table.n.iloc[:, j].tolist()
        assert csv[f"{dataset} / {seed} delta"].tolist() == pytest.approx(table.delta.iloc[:, j].tolist(), nan_ok=True)

    html = ET.fromstring(to_html(table))
    assert html.get("class") == "ssl-bench-table"
    assert len(html.findall("./thead/tr/th")) == width
    assert len(html.findall("./tbody/tr")) == len(table.mean.index)
    assert len(html.findall(".//td/strong")) == table.best.to_numpy().sum()
    md_cells = _cells(md)
    for tr in html.findall("./tbody/tr"):
        texts = ["".join(cell.itertext()) for cell in tr]
        assert texts[1:] == md_cells[texts[0]]


def test_baseline_delta_is_the_difference_of_means(ablation):
    table = pivot(ablation.df, ["method"], ["dataset"], "linear.top1", baseline="simclr")
    for method in ("simclr", "vicreg"):
        for dataset in ("shapes", "digits"):
            assert table.delta.loc[method, dataset] == pytest.approx(table.mean.loc[method, dataset] - table.mean.loc["simclr", dataset])
    delta = table.delta.loc["vicreg", "digits"]
    assert _cells(to_markdown(table))["vicreg"][4].removesuffix(" n.s.") == f"{delta * 100:+.1f}"
    assert "difference to method = simclr in percentage points" in to_markdown(table)
    with pytest.raises(ConfigError, match="baseline 'byol' is not a value of method .*simclr, vicreg"):
        pivot(ablation.df, ["method"], ["dataset"], "linear.top1", baseline="byol")


def test_resolve_key_finds_axes_config_keys_and_method_params(ablation):
    df = ablation.df
    assert resolve_key(df, "vicreg.projector") == "vicreg.projector"
    assert resolve_key(df, "projector") == "method.projector"
    assert resolve_key(df, "simclr.temperature") == "method.temperature"
    assert resolve_key(df, "optimizer.lr") == "optimizer.lr"
    assert resolve_key(df, "knn20.top1") == "knn20.top1"
    with pytest.raises(ConfigError, match="unknown key 'projektor'.*close matches: .*method.projector"):
        resolve_key(df, "projektor")
    with pytest.raises(ConfigError, match="not a metric"):
        pivot(df, ["method"], ["dataset"], "projector")


def test_compare_shows_only_the_config_keys_that_differ(ablation):
    df = ablation.df.set_index("cell_id")
    small = df[(df["method"] == "vicreg") & (df["dataset"] == "digits") & (df["seed"] == 0)]
    first, second = small.index  # projector 16-16 and 32-32
    run_id = df.loc[second, "run_id"]
    table = compare([first, run_id], uri=ablation.uri, experiment="report_ablation")
    console = Console(file=io.StringIO(), width=250)
    console.print(table)
    text = console.file.getvalue()
    keys = [cell.split()[0] for cell in table.columns[0].cells]
    assert keys[:5] == ["status", "method.name", "dataset.name", "epochs", "method.projector"]
    assert "batch_size" not in keys and "optimizer.lr" not in keys and "seed" not in keys
    assert "knn20.top1" in keys and "linear.top1" in keys
    assert first in text and second in text and run_id[:8] in text
    knn = format_value("knn20.top1", df.loc[first, "knn20.top1"])
    assert re.search(rf"knn20\.top1\s+│\s+{re.escape(knn)}\s", text)
    with pytest.raises(ConfigError, match="no cell or run 'deadbeef00'"):
        compare(["deadbeef00"], uri=ablation.uri)

    out = Console(file=io.StringIO(), width=250)
    args = argparse.Namespace(runs=[first, second], suite=ablation.path, set=[], tracking=ablation.uri, as_run=None, as_file=False)
    assert cmd_compare(args, out) == 0
    assert "32-32" in out.file.getvalue() and "16-16" in out.file.getvalue()
    assert "showing the suite as run on " in out.file.getvalue()


def test_table_command_prints_or_writes_the_table(ablation, tmp_path, capsys):
    argv = ["table", str(ablation.path), "--rows", "method", "--cols", "dataset", "--metric", "knn20.top1", "--tracking", ablation.uri]
    args = build_parser().parse_args(argv)
    out = Console(file=io.StringIO(), width=80)
    assert args.func(args, out) == 0
    # the suite as it ran: SimCLR's seed 2, added to the file after the run, is no cell of it
    ran = ablation.df[ablation.df["status"] != "missing"]
    assert out.file.getvalue() == to_markdown(pivot(ran, ["method"], ["dataset"], "knn20.top1"))
    assert "showing the suite as run on " in capsys.readouterr().err

    args = build_parser().parse_args([*argv, "--out", str(tmp_path), "--baseline", "simclr", "--format", "tex", "--as-file"])
    assert cmd_table(args, Console(file=io.StringIO())) == 0
    assert f"showing the suite file {ablation.path} (never run as such" in capsys.readouterr().err
    written = tmp_path / "report_ablation" / "tables" / "knn20.top1_method_by_dataset.tex"
    assert written.read_text() == to_latex(pivot(ablation.df, ["method"], ["dataset"], "knn20.top1", baseline="simclr"))
    assert written.read_text().isascii()  # ±, ×, Δ, † and – are written as LaTeX commands

    args = build_parser().parse_args([*argv, "--out", str(tmp_path / "t.csv"), "--set", "dataset=digits"])
    assert cmd_table(args, Console(file=io.StringIO())) == 0
    csv = pd.read_csv(tmp_path / "t.csv")  # --set narrows the suite file to digits, where it lacks SimCLR's seed 2
    assert [c for c in csv.columns if c.endswith(" mean")] == ["digits mean"]
    assert csv["digits status"].tolist() == ["missing (1/3)", "failed (1/5)"]

    args = build_parser().parse_args([*argv, "--paper"])
    out = Console(file=io.StringIO(), width=80)
    assert cmd_table(args, out) == 0
    assert "shapes (paper)" in out.file.getvalue()  # no published number for the shapes set: an empty column


def test_table_statistics_equal_scipy_on_the_recorded_runs(ablation):
    """Intervals, Welch's and paired t-tests and Benjamini-Hochberg q-values of real runs equal scipy.stats."""
    done = _complete(ablation.direct)
    methods = pivot(ablation.df, ["method"], ["dataset"], "linear.top1", baseline="simclr")
    projectors = pivot(ablation.df, ["vicreg.projector"], ["dataset"], "linear.top1", baseline="16-16")
    for dataset in ("shapes", "digits"):
        mine = done[done["tags.ssl_bench.dataset"] == dataset]
        simclr, vicreg = (mine.loc[mine["tags.ssl_bench.method"] == m, "metrics.linear.top1"] for m in ("simclr", "vicreg"))
        low, high = stats.t.interval(0.95, len(vicreg) - 1, loc=vicreg.mean(), scale=stats.sem(vicreg))
        assert (methods.ci_low.loc["vicreg", dataset], methods.ci_high.loc["vicreg", dataset]) == pytest.approx((low, high), rel=1e-12)
        assert methods.test.loc["vicreg", dataset] == "Welch"  # two methods
        assert methods.p.loc["vicreg", dataset] == pytest.approx(stats.ttest_ind(vicreg, simclr, equal_var=False).pvalue, rel=1e-12)
        # one method, one hyper-parameter changed, the same seeds once each: paired by seed
        arms = [mine[mine["params.axis.vicreg.projector"] == p].sort_values("tags.ssl_bench.seed")["metrics.linear.top1"]
                for p in ("16-16", "32-32")]
        assert projectors.test.loc["32-32", dataset] == "paired"
        assert projectors.p.loc["32-32", dataset] == pytest.approx(stats.ttest_rel(arms[1], arms[0]).pvalue, rel=1e-12)
    for table in (methods, projectors):
        p = table.p.to_numpy().ravel()
        tested = ~pd.isna(p)
        assert table.tests == tested.sum() == 2
        assert table.q.to_numpy().ravel()[tested] == pytest.approx(stats.false_discovery_control(p[tested]), rel=1e-12)


def test_status_and_table_show_the_suite_as_it_ran(ablation, report_base, monkeypatch, capsys):
    """`run SUITE --set ...`, then `status SUITE` and `table SUITE` with no --set show the cells that ran; a second
    variant becomes the default, --as-run 1 and --set pick the first. The cells are the ablation suite's (reused)."""
    monkeypatch.chdir(report_base)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    suite = yaml.safe_load(ablation.path.read_text())
    suite = {**suite, "name": "report_as_run", "seeds": [0, 1], "exclude": [],
             "ablations": {k: v for k, v in suite["ablations"].items() if k != "vicreg.optimizer.lr"}}
    path = report_base / "report_as_run.yaml"
    path.write_text(yaml.safe_dump(suite))
    storage = f"sqlite:///{report_base}/results/optuna.db"

    def command(*argv: str, code: int = 0) -> tuple[str, str]:
        """The command's stdout and stderr, lines joined (a long line may wrap)."""
        assert main([argv[0], str(path), *argv[1:]]) == code
        out, err = capsys.readouterr()
        return " ".join(out.split()), " ".join(err.split())

    def run(*sets: str) -> None:
        command("run", "--launcher", "print", "--set", *sets)
        assert main(["worker", "--storage", storage, "--study", "report_as_run"]) == 0
        capsys.readouterr()

    def table(*argv: str) -> tuple[dict[str, list[str]], str]:
        assert main(["table", str(path), "--metric", "linear.top1", *argv]) == 0
        out, err = capsys.readouterr()
        return _cells(out), " ".join(err.split())

    def expected(seed: int, datasets: list[str]) -> dict[str, list[str]]:
        """The ablation suite's runs of ``seed`` on ``datasets`` (the same cells), as the table shows them."""
        done = ablation.df[(ablation.df["status"] == "complete") & (ablation.df["seed"] == seed)]
        return {m: [_shown("linear.top1", done.loc[(done["method"] == m) & (done["dataset"] == d), "linear.top1"]) for d in datasets]
                for m in ("simclr", "vicreg")}

    run("dataset=digits", "seed=0")
    out, _ = command("status")
    assert "with --set dataset=digits seed=0 (run 1 of 1); --as-file for the suite file as it is now" in out
    assert "3 complete" in out and "not queued" not in out
    cells, err = table()
    assert cells == expected(0, ["digits"]) and "with --set dataset=digits seed=0 (run 1 of 1)" in err

    run("dataset=digits", "seed=1")
    out, _ = command("status")
    assert "with --set dataset=digits seed=1 (run 2 of 2); --as-run 1 for the other" in out and "3 complete" in out
    assert table()[0] == expected(1, ["digits"])
    cells, err = table("--as-run", "1")
    assert cells == expected(0, ["digits"]) and "with --set dataset=digits seed=0 (run 1 of 2); --as-run 2 for the other" in err
    cells, err = table("--set", "dataset=digits", "seed=0")
    assert cells == expected(0, ["digits"])
    assert f"showing the suite file {path} with --set dataset=digits seed=0 (run 1 of 2, last on" in err
    out, _ = command("status", "--as-file")
    assert "never run as such; 2 runs recorded in the Optuna storage" in out and "not queued" in out

    assert "--as-run 3: suite report_as_run has 2 runs" in command("status", "--as-run", "3", code=2)[1]
    assert "give one of them" in command("table", "--as-run", "1", "--as-file", code=2)[1]


def test_a_variant_run_again_keeps_its_number_in_the_study_and_on_the_parent_run(report_base, tmp_path):
    """Records written as `run` writes them (no worker; in the report suites' stores): the study's and the parent
    run's agree; a variant queued again moves its last time, keeps its number and becomes the default."""
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump({"name": "report_variants", "defaults": {**DEFAULTS, "method": "simclr"}, "seeds": [0, 1]}))
    uri, url = f"sqlite:///{report_base}/results/mlflow.db", f"sqlite:///{report_base}/results/optuna.db"
    tracker = SuiteTracker(uri, "report_variants")
    times = [datetime(2026, 1, day, 12, tzinfo=timezone.utc) for day in (1, 2, 3)]
    for sets, now in ((["seed=0"], times[0]), (["epochs=1"], times[1]), (["seed=0"], times[2])):
        suite = load_suite(path, sets)
        tracker.record_run(tracker.parent_run(suite.name, suite.to_yaml()), suite.to_yaml(), sets, now)
        study = create_study(suite, open_storage(url), {}, sets, now)
    for history in (study_history(study, url), mlflow_history(load_suite(path), uri)):
        assert [(run.sets, run.first, run.last) for run in history.runs] == [(["seed=0"], times[0], times[2]),
                                                                            (["epochs=1"], times[1], times[1])]
        assert suite_from_yaml(history.suite_text(history.runs[1])) == load_suite(path, ["epochs=1"])
        shown = shown_suite(path, [], as_run=None, as_file=False, history=lambda _, history=history: history)
        assert shown.suite == load_suite(path, ["seed=0"])
        assert shown.line == ("showing the suite as run on 2026-01-03 12:00 UTC with --set seed=0 (run 1 of 2); "
                              "--as-run 2 for the other, --as-file for the suite file as it is now")


def test_missing_store_or_experiment_is_a_config_error(tmp_path):
    suite = suite_from_yaml(yaml.safe_dump({"name": "never_run", "defaults": {**DEFAULTS, "method": "simclr"}}))
    with pytest.raises(ConfigError, match="no MLflow store at .*nothing.db: run the suite first"):
        suite_runs(suite, uri=f"sqlite:///{tmp_path}/nothing.db")
    SuiteTracker(tracking_uri(f"sqlite:///{tmp_path}/mlflow.db"), "another")
    with pytest.raises(ConfigError, match="no MLflow experiment 'never_run'"):
        suite_runs(suite, uri=f"sqlite:///{tmp_path}/mlflow.db")


def test_search_suite_rows_are_its_child_runs(tmp_path):
    """A search suite's rows come from the runs found (logged here without training), config from config.yaml."""
    suite = suite_from_yaml(yaml.safe_dump({
        "name": "tiny_search", "defaults": {**DEFAULTS, "method": "simclr"}, "ablations": {"simclr.projector": ["16-8"]},
        "search": {"space": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                             "temperature": {"type": "categorical", "choices": [0.1, 0.5]}}, "pruner": "none"}}))
    base = expand_suite(suite)[0].config.model_dump(mode="json")
    uri = tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    tracker = SuiteTracker(uri, suite.name)
    parent = tracker.parent_run(suite.name, suite.to_yaml())
    trials = [(1e-3, 0.1, "complete"), (5e-3, 0.5, "pruned"), (2e-4, 0.1, None)]
    for number, (lr, temperature, status) in enumerate(trials):
        config = resolve_run_config({**base, "optimizer": {**base["optimizer"], "lr": lr},
                                     "method": {**base["method"], "temperature": temperature}})
        run = tracker.start_cell(parent, f"cell{number}", config, suite=suite.name, axes={"optimizer.lr": lr, "temperature": temperature},
                                 trial={"study": suite.name, "number": number, "id": number})
        if status:
            tracker.finish_cell(run, status=status, metrics={"knn20.top1": 0.25 * (number + 1)} if status == "complete" else None)
    df = suite_runs(suite, uri=uri).set_index("cell_id").sort_index()
    assert df.index.tolist() == ["cell0", "cell1", "cell2"]
    assert df["status"].tolist() == ["complete", "pruned", "running"]
    assert df["optimizer.lr"].tolist() == [1e-3, 5e-3, 2e-4]
    assert df["temperature"].tolist() == df["method.temperature"].tolist() == [0.1, 0.5, 0.1]
    assert df["simclr.projector"].tolist() == ["16-8"] * 3
    assert df["knn20.top1"].iloc[0] == 0.25 and math.isnan(df["knn20.top1"].iloc[1])
    table = pivot(df.reset_index(), ["temperature"], ["method"], "knn20.top1")
    assert table.note(0, 0) == "running (1/2)" and table.note(1, 0) == "pruned"
    assert _cells(to_markdown(table)) == {"0.1": ["25.0 (n=1, no interval), running (1/2)"], "0.5": ["pruned"]}


