"""Statistics across seeds and metric names, on recorded values (no training): intervals, t-tests and
Benjamini-Hochberg q-values equal scipy.stats; the pairing rule; what a table shows for one run and for baselines."""

from __future__ import annotations

import io
import math

import pandas as pd
import pytest
from scipy import stats

from bench.report.labels import Baseline, method_label
from bench.report.metric_key import Family, Split, parse_metric
from bench.report.pivot import pivot
from bench.report.stats import TTest, adjust, compare_arms, pairs, summarize
from bench.report.table import caption, to_csv, to_latex, to_markdown

#: knn20.top1 of five seeds of two runs of a method that differ in one hyper-parameter (recorded values)
A = {0: [0.5312], 1: [0.5408], 2: [0.5231], 3: [0.5377], 4: [0.5290]}
B = {0: [0.5104], 1: [0.5262], 2: [0.5129], 3: [0.5315], 4: [0.5057]}


def _values(arm: dict[int, list[float]]) -> list[float]:
    return [v for values in arm.values() for v in values]


def test_interval_is_the_t_interval_of_scipy():
    for n in range(2, 6):
        values = _values(A)[:n]
        mean, sem = sum(values) / n, stats.sem(values)
        summary = summarize(values)
        assert (summary.ci_low, summary.ci_high) == pytest.approx(stats.t.interval(0.95, n - 1, loc=mean, scale=sem), rel=1e-12)
        assert summary.std == pytest.approx(stats.tstd(values), rel=1e-12) and summary.n == n
    # the spec's multipliers t(0.975, n-1): the half-width over s/sqrt(n)
    for n, multiplier in ((2, 12.706), (3, 4.303), (4, 3.182), (5, 2.776)):
        values = _values(A)[:n]
        summary = summarize(values)
        assert (summary.ci_high - summary.mean) / (summary.std / math.sqrt(n)) == pytest.approx(multiplier, abs=5e-4)
    one = summarize([0.5])
    assert (one.n, one.mean) == (1, 0.5) and all(math.isnan(v) for v in (one.std, one.ci_low, one.ci_high))
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_t_tests_equal_scipy_and_follow_the_pairing_rule():
    paired = compare_arms(B, A, same_method=True)
    assert paired.test == TTest.PAIRED
    assert paired.p == pytest.approx(stats.ttest_rel([B[s][0] for s in sorted(B)], [A[s][0] for s in sorted(A)]).pvalue, rel=1e-12)
    welch = compare_arms(B, A, same_method=False)  # two methods: independent arms
    assert welch.test == TTest.WELCH
    assert welch.p == pytest.approx(stats.ttest_ind(_values(B), _values(A), equal_var=False).pvalue, rel=1e-12)
    assert welch.p != pytest.approx(paired.p)
    other_seeds = {s + 10: v for s, v in B.items()}
    assert not pairs(other_seeds, A, True) and compare_arms(other_seeds, A, True).test == TTest.WELCH
    twice = {**B, 0: [0.51, 0.52]}  # a seed twice in one arm: another axis varies inside the group
    assert not pairs(twice, A, True)
    assert not pairs({0: [0.5]}, {0: [0.4]}, True)  # one pair is no test
    assert math.isnan(compare_arms({0: [0.5]}, A, False).p)


def test_benjamini_hochberg_q_values_equal_scipy():
    p = [0.01, math.nan, 0.04, 0.03, 0.20]
    q = adjust(p)
    assert math.isnan(q[1])
    assert [q[i] for i in (0, 2, 3, 4)] == pytest.approx(list(stats.false_discovery_control([0.01, 0.04, 0.03, 0.20])), rel=1e-12)
    assert adjust([math.nan]) == [pytest.approx(math.nan, nan_ok=True)]


def test_metric_keys_name_split_dataset_protocol_and_name():
    knn = parse_metric("knn20.top1")
    assert (knn.split, knn.dataset, knn.family, knn.protocol, knn.name, knn.k) == (Split.TEST, None, Family.KNN, "knn20", "top1", 20)
    val = parse_metric("val.knn20.top1")
    assert (val.split, val.protocol, val.name) == (Split.VAL, "knn20", "top1")
    assert not val.is_headline and not val.is_lead and val.is_evaluation and knn.is_lead and knn.is_headline
    fraction = parse_metric("linear_1pct.top1")
    assert (fraction.family, fraction.protocol, fraction.labels) == (Family.LINEAR, "linear_1pct", "1%")
    half = parse_metric("val.cifar10.linear_aug_0.5pct.top1")  # a decimal point inside the protocol
    assert (half.split, half.dataset, half.family, half.protocol, half.labels) == (Split.VAL, "cifar10", Family.LINEAR_AUG,
                                                                                  "linear_aug_0.5pct", "0.5%")
    assert parse_metric("logreg.top1").family == Family.LOGREG and parse_metric("linear_aug.top1").family == Family.LINEAR_AUG
    other = parse_metric("cifar10.linear.top5")
    assert (other.dataset, other.protocol, other.is_headline, other.is_accuracy) == ("cifar10", "linear", False, True)
    box = parse_metric("detection.bbox.AP50")
    assert (box.family, box.protocol, box.name, box.is_accuracy, box.is_lead) == (Family.DETECTION, "detection.bbox", "AP50", False, False)
    assert parse_metric("detection.segm.AP").is_lead
    for key in ("diag.effective_rank", "train.seconds", "detection.train.seconds", "detection.train.iterations",
                "cifar10.diag.effective_rank", "train.loss"):
        assert not parse_metric(key).is_evaluation, key
    assert parse_metric("train.loss").lower_is_better and not knn.lower_is_better
    odd = parse_metric("a.b.linear.top1")
    assert (odd.family, odd.protocol, odd.name) == (Family.OTHER, "a.b.linear", "top1")


def _frame(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"cell_id": f"c{i}", "run_id": f"r{i}", "status": "complete", "method": m, "method.projector": proj,
                          "dataset": "cifar10", "seed": seed, "knn20.top1": value}
                         for i, (m, proj, seed, value) in enumerate(rows)])


def test_a_table_with_a_baseline_shows_tests_intervals_and_one_run_cells():
    rows = [("vicreg", "512", s, v[0]) for s, v in A.items()] + [("vicreg", "2048", s, v[0]) for s, v in B.items()]
    rows += [("simclr", "128", 0, 0.49), (Baseline.RANDOM_INIT.value, "none", 0, 0.99), (Baseline.RANDOM_INIT.value, "none", 1, 0.98)]
    df = _frame(rows)
    by_projector = pivot(df[df["method"] == "vicreg"], ["projector"], ["dataset"], "knn20.top1", baseline="512")
    assert by_projector.test.loc["2048", "cifar10"] == "paired" and by_projector.tests == 1
    assert by_projector.p.loc["2048", "cifar10"] == pytest.approx(compare_arms(B, A, True).p, rel=1e-12)

    table = pivot(df, ["method"], ["dataset"], "knn20.top1", baseline="vicreg")
    assert table.mean.index.tolist() == ["vicreg", "simclr", "random_init"]
    vicreg = _values(A) + _values(B)  # both projectors: a seed twice, so Welch
    assert table.test.loc["random_init", "cifar10"] == "Welch"
    assert table.p.loc["random_init", "cifar10"] == pytest.approx(stats.ttest_ind([0.99, 0.98], vicreg, equal_var=False).pvalue)
    assert math.isnan(table.p.loc["simclr", "cifar10"]) and table.test.loc["simclr", "cifar10"] == ""  # one run: no test
    assert table.q.loc["random_init", "cifar10"] == pytest.approx(table.p.loc["random_init", "cifar10"])  # one test
    assert table.best.loc["vicreg", "cifar10"] and not table.best.loc["random_init", "cifar10"]  # baselines never best

    md = to_markdown(table)
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert lines["simclr"] == f"| simclr | 49.0 (n=1, no interval) | {(0.49 - sum(vicreg) / 10) * 100:+.1f} | – |"
    assert method_label("random_init") == "random init" and lines["random init"].startswith("| random init | 98.5 ± 0.7 [")
    assert "p <0.001, q <0.001 (Welch)" in lines["random init"] and "n.s." not in lines["random init"]
    assert "Benjamini-Hochberg over the table's 1 tests" in caption(table) and "t-distribution" in caption(table)
    tex = to_latex(table)
    assert tex.isascii() and "n.s. not significant" in tex  # the legend of non-significant differences, in the caption

    csv = pd.read_csv(io.StringIO(to_csv(table)))
    assert [c for c in csv.columns if c.startswith("cifar10")] == [f"cifar10 {f}" for f in
                                                                    ("mean", "std", "ci_low", "ci_high", "n", "delta", "p", "q", "test", "status")]
    assert csv["cifar10 ci_low"].tolist() == pytest.approx(table.ci_low["cifar10"].tolist(), nan_ok=True)
    assert csv["cifar10 p"].tolist() == pytest.approx(table.p["cifar10"].tolist(), nan_ok=True)
