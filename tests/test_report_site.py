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
import yaml
from PIL import Image
from rich.console import Console
from scipy import stats
from suite_fixtures import DEFAULTS

from bench.suite.suite import expand_suite, load_suite, suite_from_yaml
from bench.errors import ConfigError
from bench.report.labels import EMPTY
from bench.report.leaderboard import build_leaderboard, cmd_leaderboard
from bench.report.plots import suite_plots
from bench.tracking.mlflow_runs import SuiteTracker
from bench.train.records import EpochRecord, Monitor

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


@pytest.fixture(scope="module")
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
const headers = Array.from(document.querySelectorAll('#leaderboard thead th')).map(th => th.dataset.metric || th.textContent.trim());
return Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(tr => ({
  hidden: tr.hidden,
  text: tr.textContent,
  cells: Object.fromEntries(Array.from(tr.cells).map((td, i) => [headers[i], {
    text: td.textContent.trim(), sort: td.dataset.sort, std: td.dataset.std, n: td.dataset.n, low: td.dataset.ciLow,
    high: td.dataset.ciHigh, runs: td.dataset.runs, bold: td.querySelector('strong') !== null,
    mean: td.querySelector('.mean')?.textContent, ci: td.querySelector('.ci')?.textContent}]))}));
"""


def _header_button(driver, name: str):
    from selenium.webdriver.common.by import By

    (button,) = [b for b in driver.find_elements(By.CSS_SELECTOR, "#leaderboard thead th button") if b.text.startswith(name)]
    return button


def _sorts_and_filters(browser, column: str, title: str, words: str) -> list[dict]:
    """Sort by ``column`` (headed ``title``) both ways and by method, then filter with ``words``; the rows shown."""
    from selenium.webdriver.common.by import By

    rows = browser.execute_script(READ_ROWS)
    _header_button(browser, title).click()
    assert browser.find_element(By.XPATH, f"//th[.//button[starts-with(., '{title}')]]").get_attribute("aria-sort") == "ascending"
    keys = [row["cells"][column]["sort"] for row in browser.execute_script(READ_ROWS)]
    numbers = [float(k) for k in keys if k]
    assert numbers == sorted(numbers) and keys[len(numbers):] == [""] * (len(keys) - len(numbers))  # no number: last
    _header_button(browser, title).click()
    keys = [row["cells"][column]["sort"] for row in browser.execute_script(READ_ROWS)]
    assert [float(k) for k in keys if k] == sorted(numbers, reverse=True) and keys[len(numbers):] == [""] * (len(keys) - len(numbers))
    _header_button(browser, "method").click()
    methods = [row["cells"]["method"]["text"] for row in browser.execute_script(READ_ROWS)]
    assert methods == sorted(methods) and len(methods) == len(rows)

    box = browser.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(words)
    shown = [row for row in browser.execute_script(READ_ROWS) if not row["hidden"]]
    assert all(all(word in row["text"].lower() for word in words.lower().split()) for row in shown)
    assert browser.find_element(By.CSS_SELECTOR, "[data-count-for=leaderboard]").text == f"{len(shown)} of {len(rows)} rows"
    box.clear()
    box.send_keys(" ")
    assert not any(row["hidden"] for row in browser.execute_script(READ_ROWS))
    box.clear()
    return shown


def _summary_shown(cell: dict, values: pd.Series) -> None:
    """A protocol cell holds the mean, std, 95 % t-interval and n of ``values``, and shows them."""
    n = len(values)
    assert float(cell["sort"]) == pytest.approx(values.mean(), rel=1e-12) and int(cell["n"]) == n
    if n == 1:
        assert cell["ci"] == "n=1, no interval" and cell["mean"] == f"{values.mean() * 100:.1f}"
        return
    low, high = stats.t.interval(0.95, n - 1, loc=values.mean(), scale=stats.sem(values)) if values.std() else (values.mean(),) * 2
    assert float(cell["std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
    assert (float(cell["low"]), float(cell["high"])) == pytest.approx((low, high), rel=1e-12)
    assert cell["mean"] == f"{values.mean() * 100:.1f} ± {values.std(ddof=1) * 100:.1f}"
    assert cell["ci"] == f"[{low * 100:.1f}, {high * 100:.1f}] n={n}"


def test_leaderboard_in_chromium(browser, base, stores, cell_runs, tmp_path):
    from selenium.webdriver.common.by import By

    args = argparse.Namespace(suites=[base / "report_ablation.yaml", base / "report_search.yaml"], out=tmp_path / "site",
                              tracking=stores[0], storage=stores[1], as_file=False)
    console = Console(file=io.StringIO(), width=300)
    assert cmd_leaderboard(args, console) == 0  # what `ssl-bench leaderboard SUITES --out DIR` runs
    index = tmp_path / "site" / "index.html"
    assert f"wrote {index}" in console.file.getvalue()
    assert "report_ablation: showing the suite as run on " in console.file.getvalue()
    browser.get(index.as_uri())
    rows = browser.execute_script(READ_ROWS)
    assert {row["cells"]["method"]["text"] for row in rows} == set(cell_runs["tags.ssl_bench.method"]) == {"simclr", "vicreg"}
    headers = browser.execute_script("return Array.from(document.querySelectorAll('#leaderboard thead th')).map(th => th.textContent);")
    assert [h for h in headers if h.startswith(("kNN", "linear"))] == ["kNN k=20", "linear"]  # one column per protocol
    assert [h for h in headers if "GPU-h" in h] == ["GPU-h", "top-1 per GPU-h"]  # then the cost

    complete = cell_runs[cell_runs["tags.ssl_bench.status"] == "complete"]
    covered: dict[str, list[str]] = {}
    for row in rows:
        cells = row["cells"]
        runs = cells["MLflow runs"]["runs"].split()
        if not runs:  # the diverged VICReg configuration: shown as failed, with no number
            assert cells["not complete"]["text"] == "1 failed" and "vicreg.optimizer.lr=1e+30" in cells["setting"]["text"]
            assert all(cells[m]["n"] == "0" and cells[m]["sort"] == "" for m in METRICS)
            continue
        mine = complete.loc[runs]
        assert set(mine["tags.ssl_bench.method"]) == {cells["method"]["text"]}
        assert set(mine["tags.ssl_bench.dataset"]) == {cells["dataset"]["text"]}
        assert len(set(mine["params.seed"])) == len(mine)  # the runs of one configuration differ by seed
        for metric in METRICS:
            values = mine[f"metrics.{metric}"].dropna()
            if values.empty:  # the search suite has no linear probe
                assert cells[metric]["n"] == "0" and cells[metric]["text"] == ""
            else:
                _summary_shown(cells[metric], values)
        for run in runs:
            assert run[:8] in cells["MLflow runs"]["text"]
        hours = mine["metrics.cost.gpu_hours"].mean()  # the row's cost: mean GPU-hours, and top-1 points per GPU-hour
        assert hours > 0 and float(cells["cost.gpu_hours"]["sort"]) == pytest.approx(hours, rel=1e-12)
        rate = cells["knn20.top1/gpu_hour"]["sort"]
        assert float(rate) == pytest.approx(100 * mine["metrics.knn20.top1"].mean() / hours, rel=1e-12)
        if cells["method"]["text"] == "vicreg":
            assert f"vicreg.projector={mine['params.axis.vicreg.projector'].iloc[0]}" in cells["setting"]["text"]
        covered.setdefault(cells["suite"]["text"], []).extend(runs)
    ablation_runs = complete[complete["tags.ssl_bench.suite"] == "report_ablation"]
    assert sorted(covered["report_ablation"]) == sorted(ablation_runs.index)  # each run in one row
    search_runs = complete[complete["tags.ssl_bench.suite"] == "report_search"]
    # a search's row is its best trial by the search metric, on the validation split: not the best test number
    assert covered["report_search"] == [search_runs["metrics.val.knn20.top1"].idxmax()]
    for row in rows:  # bold: the best of its suite and dataset
        peers = [r for r in rows if (r["cells"]["suite"]["text"], r["cells"]["dataset"]["text"]) ==
                 (row["cells"]["suite"]["text"], row["cells"]["dataset"]["text"]) and r["cells"]["linear.top1"]["sort"]]
        if row["cells"]["linear.top1"]["sort"]:
            best = max(float(r["cells"]["linear.top1"]["sort"]) for r in peers)
            assert row["cells"]["linear.top1"]["bold"] == (float(row["cells"]["linear.top1"]["sort"]) == best)

    shown = _sorts_and_filters(browser, "knn20.top1", "kNN k=20", "VICReg digits 0.001")
    assert len(shown) == 2  # projector 16-16 and 32-32 at lr 0.001

    shot = tmp_path / "leaderboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000
    assert Image.open(shot).size[0] >= 1000
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]

    browser.get((index.parent / "report_ablation" / "index.html").as_uri())
    images = browser.execute_script("return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth]);")
    assert len(images) == 8 and all(width > 0 for _, width in images)  # every plot loads from disk
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.ssl-bench-table")) == len(METRICS)
    assert "showing the suite as run on " in browser.find_element(By.TAG_NAME, "body").text
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


#: recorded knn20.top1 and linear.top1 of the quickstart's four methods and two seeds each, of random init (two seeds)
#: and raw pixels (one cell: deterministic); the baselines' kNN is made the highest, to show they are never marked best
QUICKSTART = {"simclr": [(0.612, 0.655), (0.598, 0.641)], "vicreg": [(0.587, 0.630), (0.603, 0.622)],
              "barlow_twins": [(0.571, 0.604), (0.566, 0.611)], "supervised": [(0.702, 0.734), (0.711, 0.729)],
              "random_init": [(0.801, 0.402), (0.795, 0.398)], "raw_pixels": [(0.805, 0.361)]}


def test_quickstart_leaderboard_has_a_row_per_method_and_baseline(browser, stores, tmp_path):
    """The quickstart's shape (4 methods, 2 seeds, its baselines' cells) logged without training: 6 rows in Chromium."""
    suite = suite_from_yaml(yaml.safe_dump({"name": "report_quickstart", "defaults": DEFAULTS, "seeds": [0, 1],
                                            "matrix": {"method": list(QUICKSTART)[:4]}, "baselines": list(QUICKSTART)[4:]}))
    tracker = SuiteTracker(stores[0], suite.name)
    parent = tracker.parent_run(suite.name, suite.to_yaml())
    for number, cell in enumerate(expand_suite(suite)):  # the baselines' cells tagged ssl_bench.method by their config
        run = tracker.start_cell(parent, cell.id, cell.config, suite=suite.name, axes=cell.axes,
                                 trial={"study": suite.name, "number": number, "id": number})
        knn, linear = QUICKSTART[cell.config.method.name][cell.config.seed]
        tracker.log_epoch(run, EpochRecord(epoch=1, loss=1.0, lr=0.1, images_per_s=1.0, monitor=Monitor(knn20_top1=knn, rankme=2.0)))
        tracker.finish_cell(run, status="complete", metrics={"knn20.top1": knn, "linear.top1": linear})
    index = build_leaderboard([suite], tmp_path, uri=stores[0], storage=stores[1])
    browser.get(index.as_uri())
    rows = browser.execute_script(READ_ROWS)
    names = ["simclr", "vicreg", "barlow_twins", "supervised", "random init", "raw pixels"]
    assert [row["cells"]["method"]["text"] for row in rows] == names  # the baselines under the methods
    config = {row["cells"]["method"]["text"]: [row["cells"][c]["text"] for c in ("backbone", "epochs", "batch size")] for row in rows}
    assert config["simclr"] == ["small_cnn", "2", "64"]  # a baseline shows no batch size, raw pixels no backbone
    assert config["random init"] == ["small_cnn", "0", EMPTY] and config["raw pixels"] == [EMPTY, "0", EMPTY]
    for row, method in zip(rows, QUICKSTART):
        for k, metric in enumerate(METRICS):
            _summary_shown(row["cells"][metric], pd.Series([values[k] for values in QUICKSTART[method]]))
    bold = {metric: [row["cells"]["method"]["text"] for row in rows if row["cells"][metric]["bold"]] for metric in METRICS}
    assert bold == {"knn20.top1": ["supervised"], "linear.top1": ["supervised"]}  # baselines never, even when higher
    shown = _sorts_and_filters(browser, "linear.top1", "linear", "random")
    assert [row["cells"]["method"]["text"] for row in shown] == ["random init"]
    assert browser.save_screenshot(str(tmp_path / "quickstart.png"))
    assert Image.open(tmp_path / "quickstart.png").size[0] >= 1000
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
