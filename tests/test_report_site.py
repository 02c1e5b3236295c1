"""The report site on real suites: plotted values equal the MLflow runs and the Optuna trials, and the leaderboard
works in headless Chromium (numbers, sorting, filtering, a screenshot, the suite pages' plots)."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from mlflow import MlflowClient
from PIL import Image
from rich.console import Console

from bench.config.suite import load_suite
from bench.errors import ConfigError
from bench.report.leaderboard import build_leaderboard, cmd_leaderboard
from bench.report.plots import is_protocol, suite_plots
from bench.report.table import EMPTY
from bench.tracking.mlflow_runs import SuiteTracker

pytestmark = pytest.mark.xdist_group("report")  # shares the session's report suites (tests/conftest.py)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
AXES = ("dataset", "vicreg.projector", "vicreg.optimizer.lr")
METRICS = ("knn20.top1", "linear.top1")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def base(report_base: Path) -> Path:
    """Both suites ran in one folder (tests/conftest.py), so they share results/mlflow.db and results/optuna.db."""
    return report_base


@pytest.fixture(scope="module")
def stores(base: Path) -> tuple[str, str]:
    return f"sqlite:///{base}/results/mlflow.db", f"sqlite:///{base}/results/optuna.db"


@pytest.fixture(scope="module")
def ablation(base: Path):
    return load_suite(base / "report_ablation.yaml")


@pytest.fixture(scope="module")
def search(base: Path):
    return load_suite(base / "report_search.yaml")


@pytest.fixture(scope="module")
def cell_runs(stores: tuple[str, str]) -> pd.DataFrame:
    """Every cell run of both suites as ``mlflow.search_runs`` gives it, indexed by run id."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stores[0])
    try:
        runs = mlflow.search_runs(experiment_names=["report_ablation", "report_search"])
    finally:
        mlflow.set_tracking_uri(previous)
    return runs[runs["tags.ssl_bench.role"] == "cell"].set_index("run_id")


def _param(value: object) -> str:
    """A value as MLflow holds it in a param: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _files_ok(plot) -> None:
    png, svg = plot.paths
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def _errorbars(figure) -> dict[str, list[tuple[float, float, float]]]:
    """line label -> [(x, y, half height of its error bar)] as drawn."""
    drawn = {}
    for container in figure.axes[0].containers:
        assert isinstance(container, ErrorbarContainer)
        line, _, (bars,) = container.lines
        drawn[container.get_label()] = [(x, y, (top[1] - bottom[1]) / 2)
                                        for (x, y), (bottom, top) in zip(line.get_xydata(), bars.get_segments())]
    return drawn


def test_protocol_metrics_leave_out_training_and_feature_figures_under_any_prefix():
    assert all(map(is_protocol, ["linear.top1", "knn20.top1", "linear_1pct.top1", "cifar10.linear.top1", "detection.bbox.AP"]))
    assert not any(map(is_protocol, ["diag.effective_rank", "train.seconds", "detection.train.seconds", "detection.train.iterations"]))


def test_ablation_plots_equal_the_runs(ablation, stores, cell_runs, tmp_path):
    plots = {p.name: p for p in suite_plots(ablation, tmp_path, uri=stores[0], storage=stores[1])}
    assert set(plots) == {f"ablation_{a}_{m}" for a in AXES for m in METRICS} | {"curves_train-loss", "curves_val-knn20.top1"}
    for plot in plots.values():
        _files_ok(plot)
    complete = cell_runs[(cell_runs["tags.ssl_bench.suite"] == "report_ablation") & (cell_runs["tags.ssl_bench.status"] == "complete")]
    for axis in AXES:
        for metric in METRICS:
            plot = plots[f"ablation_{axis}_{metric}"]
            keys = [c for c in plot.data.columns if c not in ("line", "x", "mean", "std", "n")]
            used: list[str] = []
            for _, point in plot.data.iterrows():
                mine = complete
                for key in keys:
                    column = f"params.axis.{key}"
                    mine = mine[mine[column].isna()] if point[key] == EMPTY else mine[mine[column] == _param(point[key])]
                values = mine[f"metrics.{metric}"]
                assert point["n"] == len(values) > 0
                assert point["mean"] == pytest.approx(values.mean(), rel=1e-12)
                assert point["std"] == pytest.approx(values.std(ddof=1), rel=1e-12)
                used += list(mine.index)
            # every complete run with a value of the axis is in exactly one point
            assert sorted(used) == sorted(complete.index[complete[f"params.axis.{axis}"].notna()])
            drawn = _errorbars(plot.figure)
            assert set(drawn) == set(plot.data["line"])
            for line, points in plot.data.groupby("line"):
                expected = zip(points["x"], points["mean"], points["std"].fillna(0.0))
                assert [value for point in drawn[line] for value in point] == pytest.approx([v for p in expected for v in p])
    projector = plots["ablation_vicreg.projector_knn20.top1"]
    assert set(_errorbars(projector.figure)) == {"vicreg · dataset=shapes", "vicreg · dataset=digits"}
    assert [t.get_text() for t in projector.figure.axes[0].get_xticklabels()] == ["16-16", "32-32"]
    lr = plots["ablation_vicreg.optimizer.lr_knn20.top1"].figure.axes[0]
    assert [t.get_text() for t in lr.get_xticklabels()] == ["0.001", "1e+30"] and "1 failed" in lr.get_title()


def test_curves_equal_the_metric_histories(ablation, stores, cell_runs, tmp_path):
    plots = {p.name: p for p in suite_plots(ablation, tmp_path, uri=stores[0], storage=stores[1])}
    client = MlflowClient(tracking_uri=stores[0])
    mine = cell_runs[cell_runs["tags.ssl_bench.suite"] == "report_ablation"]
    ran = set(mine.index[mine["tags.ssl_bench.status"].isin(["complete", "pruned"])])
    for name, metric in (("curves_train-loss", "train/loss"), ("curves_val-knn20.top1", "val/knn20.top1")):
        lines = {line.get_gid(): line.get_xydata().tolist() for line in plots[name].figure.axes[0].lines}
        assert set(lines) == ran
        for run_id, xy in lines.items():
            history = client.get_metric_history(run_id, metric)
            assert xy == [[m.step, m.value] for m in sorted(history, key=lambda m: m.step)]
            assert [x for x, _ in xy] == [1, 2]  # epochs 1..2 of the suite's defaults


def test_search_plots_equal_the_trials(search, stores, tmp_path):
    plots = {p.name: p for p in suite_plots(search, tmp_path, uri=stores[0], storage=stores[1])}
    assert set(plots) == {"curves_train-loss", "curves_val-knn20.top1", "search_history", "search_importances"}
    for plot in plots.values():
        _files_ok(plot)
    study = optuna.load_study(study_name="report_search", storage=stores[1])
    ax = plots["search_history"].figure.axes[0]
    scattered = {c.get_gid(): c.get_offsets().tolist() for c in ax.collections}
    for state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        trials = study.get_trials(states=(state,))
        assert scattered.get(state.name.lower(), []) == [[t.number, t.value] for t in trials]
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    (best,) = [line for line in ax.lines if line.get_gid() == "best"]
    best_y = best.get_ydata().tolist()
    assert best_y == sorted(best_y) and best_y[-1] == study.best_value == max(t.value for t in complete)
    importances = plots["search_importances"]
    assert set(importances.data["param"]) == set(search.search.space) == set(study.best_params)
    widths = sorted(p.get_width() for p in importances.figure.axes[0].patches)
    assert widths == pytest.approx(sorted(importances.data["importance"])) and sum(widths) == pytest.approx(1.0)


def test_leaderboard_of_a_search_without_trials(search, stores, tmp_path):
    fresh = search.model_copy(update={"name": "report_fresh"})
    SuiteTracker(stores[0], fresh.name).parent_run(fresh.name, fresh.to_yaml())  # started, no trial yet
    index = build_leaderboard([fresh], tmp_path, uri=stores[0], storage=stores[1])
    assert index.read_text().count("<tr>") == 1  # the header row only
    page = (tmp_path / "report_fresh" / "index.html").read_text()
    assert "0 trials" in page and "No plot applies yet" in page
    with pytest.raises(ConfigError, match="give each suite once .repeated: report_search"):
        build_leaderboard([search, search], tmp_path, uri=stores[0], storage=stores[1])


@pytest.fixture
def browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


READ_ROWS = """
const headers = Array.from(document.querySelectorAll('#leaderboard thead th')).map(th => th.textContent.trim());
return Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(tr => ({
  hidden: tr.hidden,
  text: tr.textContent,
  cells: Object.fromEntries(Array.from(tr.cells).map((td, i) => [headers[i], {
    text: td.textContent.trim(), sort: td.dataset.sort, std: td.dataset.std, runs: td.dataset.runs}]))}));
"""


def _header_button(driver, name: str):
    from selenium.webdriver.common.by import By

    (button,) = [b for b in driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th button") if b.text.startswith(name)]
    return button


def test_leaderboard_in_chromium(browser, base, stores, cell_runs, tmp_path):
    from selenium.webdriver.common.by import By

    args = argparse.Namespace(suites=[base / "report_ablation.yaml", base / "report_search.yaml"], out=tmp_path / "site",
                              tracking=stores[0], storage=stores[1])
    console = Console(file=io.StringIO(), width=300)
    assert cmd_leaderboard(args, console) == 0  # what `ssl-bench leaderboard SUITES --out DIR` runs
    index = tmp_path / "site" / "index.html"
    assert f"wrote {index}" in console.file.getvalue()
    browser.get(index.as_uri())
    rows = browser.execute_script(READ_ROWS)
    assert {row["cells"]["method"]["text"] for row in rows} == set(cell_runs["tags.ssl_bench.method"]) == {"simclr", "vicreg"}

    covered: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        cells = row["cells"]
        protocol, runs = cells["protocol"]["text"], cells["MLflow runs"]["runs"].split()
        if protocol == EMPTY:  # the diverged VICReg cell: shown as failed, with no number
            assert cells["not complete"]["text"] == "1 failed" and cells["n"]["text"] == "0" and not runs
            continue
        mine = cell_runs.loc[runs]
        assert set(mine["tags.ssl_bench.method"]) == {cells["method"]["text"]}
        assert set(mine["tags.ssl_bench.dataset"]) == {cells["dataset"]["text"]}
        assert set(mine["tags.ssl_bench.status"]) == {"complete"}
        values = mine[f"metrics.{protocol}"]
        assert float(cells["mean ± std"]["sort"]) == pytest.approx(values.mean(), rel=1e-12)
        assert int(cells["n"]["text"]) == len(values)
        if len(values) > 1:
            assert float(cells["mean ± std"]["std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
            assert cells["mean ± std"]["text"] == f"{values.mean() * 100:.1f} ± {values.std(ddof=1) * 100:.1f}"
        for run in runs:
            assert run[:8] in cells["MLflow runs"]["text"]
        if cells["method"]["text"] == "vicreg":
            assert f"vicreg.projector={mine['params.axis.vicreg.projector'].iloc[0]}" in cells["setting"]["text"]
        covered.setdefault((cells["suite"]["text"], protocol), []).extend(runs)

    complete = cell_runs[cell_runs["tags.ssl_bench.status"] == "complete"]
    ablation_runs = complete[complete["tags.ssl_bench.suite"] == "report_ablation"]
    for metric in ("knn20.top1", "knn20.top5", "linear.top1", "linear.top5"):
        assert sorted(covered["report_ablation", metric]) == sorted(ablation_runs.index)  # each run in one row
    search_runs = complete[complete["tags.ssl_bench.suite"] == "report_search"]
    # a search's row is its best trial by the search metric, on the validation split: not the best test number
    assert covered["report_search", "knn20.top1"] == [search_runs["metrics.val.knn20.top1"].idxmax()]
    simclr_shapes = [r for r in rows if r["cells"]["suite"]["text"] == "report_ablation"
                     and (r["cells"]["method"]["text"], r["cells"]["dataset"]["text"]) == ("simclr", "shapes")]
    assert simclr_shapes and all(r["cells"]["not complete"]["text"] == "1 missing" for r in simclr_shapes)

    _header_button(browser, "mean").click()
    assert browser.find_element(By.XPATH, "//th[.//button[starts-with(., 'mean')]]").get_attribute("aria-sort") == "ascending"
    keys = [row["cells"]["mean ± std"]["sort"] for row in browser.execute_script(READ_ROWS)]
    numbers = [float(k) for k in keys if k]
    assert numbers == sorted(numbers) and keys[len(numbers):] == [""]  # the row without a number goes last
    _header_button(browser, "mean").click()
    numbers = [float(r["cells"]["mean ± std"]["sort"]) for r in browser.execute_script(READ_ROWS)[:-1]]
    assert numbers == sorted(numbers, reverse=True)
    _header_button(browser, "method").click()
    methods = [row["cells"]["method"]["text"] for row in browser.execute_script(READ_ROWS)]
    assert methods == sorted(methods) and len(methods) == len(rows)

    box = browser.find_element(By.ID, "filter")
    box.send_keys("VICReg digits linear.top1")
    shown = [row for row in browser.execute_script(READ_ROWS) if not row["hidden"]]
    assert len(shown) == 2  # projector 16-16 and 32-32 at lr 0.001
    assert all(all(word in row["text"].lower() for word in ("vicreg", "digits", "linear.top1")) for row in shown)
    assert browser.find_element(By.CSS_SELECTOR, "[data-count-for=leaderboard]").text == f"2 of {len(rows)} rows"
    box.clear()
    box.send_keys(" ")
    assert not any(row["hidden"] for row in browser.execute_script(READ_ROWS))

    shot = tmp_path / "leaderboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000
    assert Image.open(shot).size[0] >= 1000

    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]

    browser.get((index.parent / "report_ablation" / "index.html").as_uri())
    images = browser.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth]);")
    assert len(images) == 8 and all(width > 0 for _, width in images)  # every plot loads from disk
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.ssl-bench-table")) == len(METRICS)
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
