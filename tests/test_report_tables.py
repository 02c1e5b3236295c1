"""Report tables: a real ablation suite's MLflow runs -> pandas -> pivot tables (md, csv, LaTeX, HTML), the
published reference numbers, and run comparisons. Every number is checked against a direct recomputation from
``mlflow.search_runs`` grouped with pandas."""

from __future__ import annotations

import argparse
import io
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from rich.console import Console
from suite_fixtures import DEFAULTS

from bench.config.run import resolve_run_config
from bench.config.suite import expand_suite, load_suite, suite_from_yaml
from bench.errors import ConfigError
from bench.report.compare import cmd_compare, compare
from bench.report.reference import Lookup, find_reference, metric_lookup, paper_column, published
from bench.report.runs import resolve_key, suite_runs
from bench.report.table import cmd_table, format_value, pivot, to_csv, to_html, to_latex, to_markdown
from bench.tracking.mlflow_runs import SuiteTracker, tracking_uri

pytestmark = pytest.mark.xdist_group("report")  # shares the session's report suites (tests/conftest.py)

SPECS = Path(os.environ.get("SSL_BENCH_SPECS", "/work/shared/specs"))


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


def _shown(metric: str, mean: float, std: float, n: int) -> str:
    return format_value(metric, mean) + (f" ± {format_value(metric, std)}" if n > 1 else "")


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
    grouped = done.groupby(["tags.ssl_bench.method", "tags.ssl_bench.dataset"])["metrics.knn20.top1"].agg(["mean", "std", "count"])
    assert table.mean.index.tolist() == ["simclr", "vicreg"] and table.mean.columns.tolist() == ["shapes", "digits"]
    cells = _cells(to_markdown(table))
    for (method, dataset), expected in grouped.iterrows():
        assert table.mean.loc[method, dataset] == pytest.approx(expected["mean"])
        assert table.std.loc[method, dataset] == pytest.approx(expected["std"])
        assert table.n.loc[method, dataset] == expected["count"]
        shown = cells[method][table.mean.columns.get_loc(dataset)]
        assert shown.startswith(_shown("knn20.top1", expected["mean"], expected["std"], int(expected["count"])))
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
    width = len(table.rows) + 2 * len(table.mean.columns)  # value and delta per column
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
    assert _cells(to_markdown(table))["vicreg"][3] == f"{delta * 100:+.1f}"
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
    args = argparse.Namespace(runs=[first, second], suite=ablation.path, set=[], tracking=ablation.uri)
    assert cmd_compare(args, out) == 0
    assert "32-32" in out.file.getvalue() and "16-16" in out.file.getvalue()


def _table_parser() -> argparse.ArgumentParser:
    """The ``ssl-bench table`` arguments, as bench/cli.py declares them."""
    parser = argparse.ArgumentParser(prog="ssl-bench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("table")
    p.add_argument("suite", type=Path)
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--rows", nargs="+", default=["method"], metavar="KEY")
    p.add_argument("--cols", nargs="+", default=["dataset"], metavar="KEY")
    p.add_argument("--metric", default="knn20.top1")
    p.add_argument("--format", choices=["md", "csv", "tex", "html"])
    p.add_argument("--baseline", metavar="VALUE")
    p.add_argument("--paper", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument("--tracking", metavar="URI")
    p.set_defaults(func=cmd_table)
    return parser


def test_table_command_prints_or_writes_the_table(ablation, tmp_path):
    argv = ["table", str(ablation.path), "--rows", "method", "--cols", "dataset", "--metric", "knn20.top1", "--tracking", ablation.uri]
    args = _table_parser().parse_args(argv)
    out = Console(file=io.StringIO(), width=80)
    assert args.func(args, out) == 0
    expected = to_markdown(pivot(ablation.df, ["method"], ["dataset"], "knn20.top1"))
    assert out.file.getvalue() == expected

    args = _table_parser().parse_args([*argv, "--out", str(tmp_path), "--baseline", "simclr", "--format", "tex"])
    assert cmd_table(args, Console(file=io.StringIO())) == 0
    written = tmp_path / "report_ablation" / "tables" / "knn20.top1_method_by_dataset.tex"
    assert written.read_text() == to_latex(pivot(ablation.df, ["method"], ["dataset"], "knn20.top1", baseline="simclr"))
    assert written.read_text().isascii()  # ±, ×, Δ and – are written as LaTeX commands

    args = _table_parser().parse_args([*argv, "--out", str(tmp_path / "t.csv"), "--set", "dataset=digits"])
    assert cmd_table(args, Console(file=io.StringIO())) == 0
    csv = pd.read_csv(tmp_path / "t.csv")  # --set narrows the suite to digits, where it lacks SimCLR's seed 2
    assert [c for c in csv.columns if c.endswith(" mean")] == ["digits mean"]
    assert csv["digits status"].tolist() == ["missing (1/3)", "failed (1/5)"]

    args = _table_parser().parse_args([*argv, "--paper"])
    out = Console(file=io.StringIO(), width=80)
    assert cmd_table(args, out) == 0
    assert "shapes (paper)" in out.file.getvalue()  # no published number for the shapes set: an empty column


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
    assert _cells(to_markdown(table)) == {"0.1": ["25.0, running (1/2)"], "0.5": ["pruned"]}


def test_published_yaml_loads_and_its_numbers_appear_in_the_specs():
    refs = published()
    assert len(refs) > 100
    assert len({(r.method, r.dataset, r.protocol, r.metric, r.labels, r.k, r.backbone, r.epochs, r.batch_size,
                 r.setting, r.pretrain, r.source) for r in refs}) == len(refs)  # no entry twice
    if not SPECS.is_dir():
        pytest.skip(f"spec texts not found at {SPECS} (set SSL_BENCH_SPECS)")
    text = "\n".join(path.read_text() for path in SPECS.glob("*.md"))
    for ref in refs:
        whole, _, frac = f"{ref.value:g}".partition(".")
        number = rf"(?<![\d.]){whole}" + (rf"\.{frac}0*(?!\d)" if frac else r"(?:\.0+)?(?!\d|\.\d)")
        assert re.search(number, text), f"{ref.value} ({ref.citation()}) is not in the specs"


# Rows copied from the spec texts (corinfomax.md §5.1, sidae.md §5.1, mvmr.md Table 1, anchors-others.md A.4)
SPEC_ROWS = {
    "corinfomax": ("| **CorInfoMax** | **93.18** | **71.61** | **54.86** | **80.48** | **82.64** | 69.08 |",
                   [("cifar10", "resnet18"), ("cifar100", "resnet18"), ("tiny_imagenet", "resnet50"), ("imagenet100", "resnet18"),
                    ("imagenet100", "resnet50"), ("imagenet", "resnet50")], "linear", "CorInfoMax thesis, Table 5.1"),
    "dae": ("| MNIST | MNIST | 100% | **97.80 (0.13)** | n/a (missing) | 97.23 (0.11) |", [("mnist", "resnet18")], "linear", "SidAE paper, Table 1"),
    "mvmr": ("| **MV–MR** | **74.5** | **92.1** | **56.1** | **69.9** | **79.4** | **89.5** |", [("imagenet", "resnet50")], "linear", "MV-MR paper, Table 1"),
    "simclr": ("| SimCLR | 0.847 / 97.7 / 1.5 | 0.848 / 87.1 / 4.9 | 0.879 / 331.1 / 4.9 |", [("cifar10", "resnet18")], "knn",
               "lightly benchmarks, CIFAR-10 table"),
}


@pytest.mark.parametrize("method", sorted(SPEC_ROWS))
def test_published_numbers_match_their_spec_table_rows(method):
    row, targets, protocol, source = SPEC_ROWS[method]
    numbers = [float(n) for n in re.findall(r"(?<![\d.])\d+\.\d+", row)]
    refs = [r for r in published() if r.method == method and r.source == source and r.protocol == protocol and r.metric == "top1"
            and r.labels is None and r.pretrain is None]
    for dataset, backbone in targets:
        ref = next(r for r in refs if (r.dataset, r.backbone) == (dataset, backbone))
        assert ref.value in numbers
    if method == "corinfomax":
        assert [next(r for r in refs if (r.dataset, r.backbone) == t).value for t in targets] == numbers
    if method == "dae":
        assert refs[[r.dataset for r in refs].index("mnist")].value == numbers[-2]  # the DAE column, not SidAE's
    if method == "simclr":
        assert [r.value for r in refs if r.dataset == "cifar10"] == [0.879, 0.847]  # BS512/800 ep first, then BS128/200 ep


def test_metric_lookup_and_paper_column():
    assert metric_lookup("linear.top1") == Lookup("linear", "top1", None, None)
    assert metric_lookup("linear_1pct.top1") == Lookup("linear", "top1", "1%", None)
    assert metric_lookup("knn200.top5") == Lookup("knn", "top5", None, 200)
    assert metric_lookup("diag.effective_rank") is None
    assert find_reference("sidae", "cifar10", Lookup("linear", "top1", "1%", None)).value == 51.67
    assert find_reference("simclr", "cifar10", metric_lookup("linear.top1"), epochs=None).source == "solo-learn README, CIFAR-10 table"
    assert find_reference("simclr", "cifar10", metric_lookup("linear.top1"), backbone="resnet50") is None
    # transfer (eval.datasets): pre-trained on STL-10, linear probe on CIFAR-10
    assert metric_lookup("cifar10.linear.top1") == Lookup("linear", "top1", None, None, "cifar10")
    assert metric_lookup("cifar10.knn20.top1") == Lookup("knn", "top1", None, 20, "cifar10")
    assert metric_lookup("cifar10.diag.effective_rank") is None and metric_lookup("a.b.linear.top1") is None
    assert find_reference("sidae", "stl10", metric_lookup("cifar10.linear.top1")).value == 66.20
    assert find_reference("sidae", "stl10", metric_lookup("linear.top1")).value == 61.18
    assert find_reference("sidae", "cifar10", metric_lookup("linear.top1")).value == 64.75  # not the transfer entry

    rows = [{"cell_id": f"c{i}", "status": "complete", "method": m, "dataset": d, "linear.top1": v, "knn200.top1": v}
            for i, (m, d, v) in enumerate([("corinfomax", "cifar10", 0.9), ("simclr", "cifar10", 0.8), ("simclr", "shapes", 0.5)])]
    df = pd.DataFrame(rows)
    table = paper_column(pivot(df, ["method"], ["dataset"], "linear.top1"))
    assert table.paper.loc["corinfomax", "cifar10"] == pytest.approx(0.9318)
    assert table.paper.loc["simclr", "cifar10"] == pytest.approx(0.9074)
    assert math.isnan(table.paper.loc["simclr", "shapes"]) and math.isnan(table.paper.loc["corinfomax", "shapes"])
    md = to_markdown(table)
    assert _cells(md)["corinfomax"] == ["90.0", "93.2", "–", "–"]
    assert "corinfomax on cifar10: CorInfoMax thesis, Table 5.1 (resnet18, 1000 epochs)" in md
    assert pd.read_csv(io.StringIO(to_csv(table)))["cifar10 paper"].tolist() == pytest.approx([0.9318, 0.9074])
    knn = paper_column(pivot(df, ["method"], ["dataset"], "knn200.top1"))
    assert knn.paper.loc["simclr", "cifar10"] == pytest.approx(0.879)
    with pytest.raises(ConfigError, match="no published numbers for the metric"):
        paper_column(pivot(df.assign(**{"diag.rank": 1.0}), ["method"], ["dataset"], "diag.rank"))
    with pytest.raises(ConfigError, match="--rows method --cols dataset"):
        paper_column(pivot(df, ["dataset"], ["method"], "linear.top1"))
