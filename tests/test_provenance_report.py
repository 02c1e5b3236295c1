"""Fingerprints and cost read back: the cost estimator on synthetic records (exact arithmetic), Kendall's tau of a
label-free proxy on recorded values, table warnings, and the session's real ablation suite (tests/conftest.py):
its MLflow runs' fingerprint tags and ``cost.*`` metrics, ``compare`` and ``run --dry-run``."""

from __future__ import annotations

import io
import math

import mlflow
import pandas as pd
import pytest
from rich.console import Console

from bench.cli import main
from bench.suite.suite import expand_suite, load_suite
from bench.orchestrate.estimate import (
    NO_ESTIMATE,
    CompletedCell,
    CostSignature,
    PendingCell,
    completed_cells,
    estimate,
    estimate_table,
    pending_cells,
)
from bench.report.compare import compare
from bench.report.provenance import environment_warnings
from bench.report.proxy import proxy_agreement
from bench.report.runs import suite_runs

A = CostSignature("simclr", "{}", "{}", "256", "auto", 2, "H100")


def test_estimate_from_completed_cells_exact():
    other_device = CostSignature("simclr", "{}", "{}", "256", "auto", 2, "A100")
    completed = [CompletedCell("c1", A, 2, 25.0, 35.0, 200.0),  # 0.125 s per image-epoch, 10 s besides
                 CompletedCell("c2", A, 4, 100.0, 106.0, 400.0),  # 0.25 s per image-epoch, 6 s besides
                 CompletedCell("c3", other_device, 1, 1.0, 1.0, 100.0)]
    lonely = CostSignature("vicreg", "{}", "{}", "256", "auto", 2, "H100")
    pending = [PendingCell("c1", A, 2), PendingCell("p2", A, 10), PendingCell("p3", A, 6), PendingCell("p4", lonely, 10)]
    group, none = estimate(pending, completed)
    assert (group.to_run, group.complete, group.basis) == (2, 1, 2)
    # images 100; work (10 + 6) x 100 = 1600 image-epochs; median rate 0.1875, median rest 8 per cell
    assert group.seconds == (0.1875 * 1600 + 8 * 2, 0.125 * 1600 + 6 * 2, 0.25 * 1600 + 10 * 2) == (316.0, 212.0, 420.0)
    assert group.gpu_hours == (316.0 * 2 / 3600, 212.0 * 2 / 3600, 420.0 * 2 / 3600)
    assert none.signature == lonely and none.seconds is None and none.to_run == 1
    done, = estimate([PendingCell("c1", A, 2)], completed[:1])
    assert done.seconds == (0.0, 0.0, 0.0) and done.complete == 1  # nothing left to run costs nothing


def test_kendall_tau_of_a_proxy_on_recorded_values():
    runs = pd.DataFrame({"cell_id": list("abcdef"), "status": ["complete"] * 5 + ["failed"],
                         "val.rankme": [1.0, 2.0, 3.0, 4.0, 5.0, 9.0], "linear.top1": [0.1, 0.3, 0.2, 0.4, 0.5, math.nan]})
    agree = proxy_agreement(runs)
    # 10 pairs, one discordant (b, c): tau = (9 - 1) / 10; exact p: 5 of 120 orders have <= 1 inversion, two-sided
    assert agree.n == 5 and math.isclose(agree.tau, 0.8) and math.isclose(agree.p_value, 10 / 120)
    assert (agree.picked, agree.best, agree.regret) == ("e", "e", 0.0) and "picks the best cell" in agree.line()
    runs.loc[3, "val.rankme"] = 6.0  # the proxy now prefers d
    agree = proxy_agreement(runs)
    assert math.isclose(agree.tau, 0.6) and math.isclose(agree.p_value, 2 * 14 / 120)  # 1 + 4 + 9 orders
    assert (agree.picked, agree.best) == ("d", "e") and math.isclose(agree.regret, 0.1)


def test_environment_warnings_name_mixed_torch_and_changed_data():
    runs = pd.DataFrame({"status": ["complete", "complete", "complete", "failed"],
                         "fingerprint.packages.torch": ["2.4.0", "2.4.0", "2.5.1", "2.6.0"],
                         "fingerprint.packages.cuda": ["12.1"] * 4,
                         "fingerprint.data.dataset": ["cifar10"] * 4,
                         "fingerprint.data.config_sha256": ["c1", "c1", "c2", "c1"],
                         "fingerprint.data.sha256": ["aa", "bb", "cc", "dd"]})
    torch_line, data_line = environment_warnings(runs)
    assert "torch versions (2.4.0: 2 cells, 2.5.1: 1 cell)" in torch_line
    assert data_line.startswith("dataset cifar10: one config read different data (content sha256 aa: 1 cell, bb: 1 cell)")
    assert environment_warnings(runs.iloc[[0, 3]]) == []  # a failed cell does not count


@pytest.mark.xdist_group("report")
class TestRecordedSuite:
    """The session's ablation suite: its runs as MLflow holds them, then compare and run --dry-run."""

    @pytest.fixture(autouse=True)
    def in_base(self, report_base, monkeypatch):
        monkeypatch.chdir(report_base)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        self.uri = f"sqlite:///{report_base}/results/mlflow.db"
        self.path = report_base / "report_ablation.yaml"

    def cell_runs(self, **where) -> pd.DataFrame:
        mlflow.set_tracking_uri(self.uri)
        try:
            runs = mlflow.search_runs(**(where or {"experiment_names": ["report_ablation"]}))
        finally:
            mlflow.set_tracking_uri(None)
        return runs[runs["tags.ssl_bench.role"] == "cell"]

    def test_runs_carry_fingerprint_tags_and_cost_metrics(self):
        runs = self.cell_runs()
        done = runs[runs["tags.ssl_bench.status"] == "complete"]
        assert len(done) == 12 and runs["tags.ssl_bench.fingerprint"].notna().all()  # the diverged cell too
        assert set(done["tags.fingerprint.packages.torch"]) == {__import__("torch").__version__}
        assert done.groupby("tags.ssl_bench.dataset")["tags.fingerprint.data.sha256"].nunique().eq(1).all()
        stages = [c for c in done.columns if c.startswith("metrics.cost.wall.") and c != "metrics.cost.wall.total"]
        for _, run in done.iterrows():
            assert math.isclose(sum(run[c] for c in stages if not math.isnan(run[c])), run["metrics.cost.wall.total"])
            assert run["metrics.cost.gpu_hours"] == run["metrics.cost.wall.total"] / 3600
            assert run["metrics.cost.image_epochs"] == 2 * 256 or run["tags.ssl_bench.dataset"] != "shapes"
            artifacts = {a.path for a in mlflow.MlflowClient(self.uri).list_artifacts(run["run_id"])}
            assert {"fingerprint.json", "report.json"} <= artifacts
            assert ("diff.patch" in artifacts) == (run["tags.fingerprint.code.git.dirty"] == "true")
        rankme = mlflow.MlflowClient(self.uri).get_metric_history(done["run_id"].iloc[0], "val/rankme")
        assert [m.step for m in rankme] == [1, 2] and done["metrics.val.rankme"].gt(1).all()

    def test_compare_shows_fingerprint_differences(self, capsys):
        cells = suite_runs(load_suite(self.path), uri=self.uri)
        pair = cells[(cells["status"] == "complete") & (cells["method"] == "simclr") & (cells["dataset"] == "shapes")]
        out = io.StringIO()
        Console(file=out, width=400).print(compare(list(pair["cell_id"]), uri=self.uri))
        text = out.getvalue()
        assert "ssl_bench.fingerprint" in text and "fingerprint.determinism.seed" in text  # seeds 0 and 1
        assert "fingerprint.packages.torch" not in text  # the same everywhere
        assert environment_warnings(cells) == []
        tau = proxy_agreement(cells)
        assert tau.n == 12 and -1 <= tau.tau <= 1
        assert main(["table", str(self.path), "--metric", "linear.top1", "--proxy", "val.rankme", "--tracking", self.uri]) == 0
        assert tau.line() in capsys.readouterr().out.replace("\n", "")  # what `table --proxy` adds to the caption

    def test_dry_run_estimates_from_the_cells_that_ran(self, capsys):
        suite = load_suite(self.path)
        groups = {g.signature.label: g for g in estimate(pending_cells(suite, expand_suite(suite)), completed_cells(self.uri))}
        shapes = groups["simclr / small_cnn / shapes"]  # seed 2 never ran
        # the search suite's simclr trials on shapes count too; runs without cost metrics do not (other tests of the
        # session log such cells into this store, e.g. test_report_site's quickstart leaderboard)
        runs = self.cell_runs(search_all_experiments=True)
        basis = runs[(runs["tags.ssl_bench.method"] == "simclr") & (runs["tags.ssl_bench.dataset"] == "shapes")
                     & (runs["tags.ssl_bench.status"] == "complete") & runs["metrics.cost.image_epochs"].notna()]
        assert (shapes.to_run, shapes.complete, shapes.basis) == (1, 2, len(basis)) and len(basis) > 2
        rates = basis["metrics.cost.wall.train"] / basis["metrics.cost.image_epochs"]
        rest = basis["metrics.cost.wall.total"] - basis["metrics.cost.wall.train"]
        assert math.isclose(shapes.seconds[0], rates.median() * 2 * 256 + rest.median())
        assert groups["vicreg / small_cnn / digits"].to_run == 1  # the diverged cell
        assert main(["run", str(self.path), "--dry-run"]) == 0
        assert "estimated cost" in capsys.readouterr().out
        other = load_suite(self.path, ["batch_size=32"])
        out = io.StringIO()
        Console(file=out, width=400).print(estimate_table(other, expand_suite(other)))
        assert NO_ESTIMATE in out.getvalue() and "total:" not in out.getvalue()
