"""The protocol-aware paper column: published.yaml's protocol records, our cells' records derived from their resolved
config and report (configs built here, no training), how the two compare (exact, partial †, unknown ‡, missing),
the marks and footnotes of every table format, and ``ssl-bench table --paper`` on MLflow runs logged without
training: a smoke-scale variant of a paper suite (every published number marked, the fields named) and a cell
whose protocol is a published one (no mark)."""

from __future__ import annotations

import io
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.cli import main
from bench.config.run import resolve_run_config
from bench.suite.suite import expand_suite, load_suite
from bench.errors import ConfigError
from bench.methods.baselines import Baseline
from bench.report.leaderboard import leaderboard_rows, paper_span
from bench.report.ours import cell_record
from bench.report.pivot import pivot
from bench.report.protocol import MatchKind, ProbeType, Selection
from bench.report.reference import find_reference, paper_column, published
from bench.report.runs import CONFIG_COLUMN, SELECTION_COLUMN, suite_runs
from bench.report.table import to_csv, to_html, to_latex, to_markdown
from bench.tracking.mlflow_runs import SuiteTracker, tracking_uri
from bench.train.records import EpochRecord

SPECS = Path(os.environ.get("SSL_BENCH_SPECS", "/work/shared/specs"))
SUITES = Path(__file__).resolve().parents[1] / "suites"
#: lightly's CIFAR-10 kNN protocol (published.yaml "lightly benchmarks, CIFAR-10 table": BYOL, 800 epochs, batch 512)
LIGHTLY = {"method": {"name": "byol"}, "dataset": {"name": "cifar10", "root": "data/cifar10"}, "augment": "cifar",
           "backbone": {"name": "resnet18", "cifar_stem": True}, "epochs": 800, "batch_size": 512}


def config(eval: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """A resolved config as report.json holds it: LIGHTLY with ``changes`` (top-level sections replaced). Its eval
    section is the raw ``{"knn_temperature": 0.1, **eval}``, so the probes' config of any version can be given."""
    dumped = resolve_run_config({**LIGHTLY, **changes}).model_dump(mode="json")
    return {**dumped, "eval": {"knn_temperature": 0.1, **(eval or {})}}


def test_published_entries_carry_protocol_records_and_their_numbers_are_in_the_specs():
    refs = published()
    assert len(refs) > 200
    assert len({r.model_dump_json() for r in refs}) == len(refs)  # no entry twice
    lightly = [r for r in refs if r.source == "lightly benchmarks, CIFAR-10 table"]
    assert {(r.probe.type, r.probe.k, r.probe.t, r.selection, r.views, r.resolution.eval_resize) for r in lightly} == {
        (ProbeType.KNN, 200, 0.1, Selection.TEST_MAX_OVER_EPOCHS, "2x32", "none")}
    solo = [r for r in refs if r.source == "solo-learn README, CIFAR-10 table"]
    assert {(r.probe.type, r.probe.augmentation, r.epochs, r.batch_size) for r in solo} == {(ProbeType.LINEAR_ONLINE, "ssl_views", 1000, 256)}
    assert {r.pretrain.dataset for r in refs if r.probe.type == ProbeType.DETECTION} == {"imagenet"}
    transfer = next(r for r in refs if r.method == "sidae" and r.pretrain.dataset == "stl10" and r.dataset == "cifar10")
    assert (transfer.value, transfer.pretrain.split) == (66.20, "unlabeled")
    mvmr = [r for r in refs if r.method == "mvmr"]
    assert {r.reading for r in mvmr} == {"code"}  # the authors' code produced them
    assert {r.reading for r in refs if r.method == "vicreg" and r.source.startswith("lightly")} == {"code"}  # averaged variance
    assert {r.reading for r in refs if r.method == "vicreg" and r.source.startswith("solo-learn")} == {"paper"}  # summed
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
                    ("imagenet100", "resnet50"), ("imagenet", "resnet50")], "CorInfoMax thesis, Table 5.1"),
    "dae": ("| MNIST | MNIST | 100% | **97.80 (0.13)** | n/a (missing) | 97.23 (0.11) |", [("mnist", "resnet18")], "SidAE paper, Table 1"),
    "mvmr": ("| **MV–MR** | **74.5** | **92.1** | **56.1** | **69.9** | **79.4** | **89.5** |", [("imagenet", "resnet50")], "MV-MR paper, Table 1"),
    "simclr": ("| SimCLR | 0.847 / 97.7 / 1.5 | 0.848 / 87.1 / 4.9 | 0.879 / 331.1 / 4.9 |", [("cifar10", "resnet18")],
               "lightly benchmarks, CIFAR-10 table"),
}


@pytest.mark.parametrize("method", sorted(SPEC_ROWS))
def test_published_numbers_match_their_spec_table_rows(method):
    row, targets, source = SPEC_ROWS[method]
    numbers = [float(n) for n in re.findall(r"(?<![\d.])\d+\.\d+", row)]
    refs = [r for r in published() if r.method == method and r.source == source and r.metric == "top1"
            and r.labels.fraction == 1 and r.pretrain.dataset == r.dataset]
    for dataset, backbone in targets:
        ref = next(r for r in refs if (r.dataset, r.backbone.name) == (dataset, backbone))
        assert ref.value in numbers
    if method == "corinfomax":
        assert [next(r for r in refs if (r.dataset, r.backbone.name) == t).value for t in targets] == numbers
    if method == "dae":
        assert refs[[r.dataset for r in refs].index("mnist")].value == numbers[-2]  # the DAE column, not SidAE's
    if method == "simclr":
        assert [(r.value, r.epochs, r.batch_size) for r in refs] == [(0.879, 800, 512), (0.847, 200, 128)]


def test_cell_record_from_config_and_report():
    ours = cell_record(config(), {}, "knn200.top1")
    assert (ours.dataset, ours.pretrain.dataset, ours.pretrain.split, ours.eval_split) == ("cifar10", "cifar10", "train", "test")
    assert (ours.backbone.name, ours.backbone.variant, ours.epochs, ours.batch_size) == ("resnet18", "cifar_stem", 800, 512)
    assert (ours.views, ours.augmentation, ours.resolution.model_dump()) == ("2x32", "cifar", {"pretrain": 32, "eval": 32, "eval_resize": "none"})
    assert (ours.probe.type, ours.probe.k, ours.probe.t, ours.probe.fit_on) == (ProbeType.KNN, 200, 0.1, "train")
    assert (ours.labels.fraction, ours.selection, ours.reading) == (1.0, Selection.FIXED_A_PRIORI, "paper")
    # after the validation split: the report's selection says what was chosen there
    report = {"selection": {"knn.k": 20, "knn.t": 0.07, "linear.lr": 0.3, "linear_1pct.lr": 1.0, "cifar10.linear.lr": 3.0}}
    chosen = cell_record(config(), report, "knn.top1")
    assert (chosen.probe.k, chosen.probe.t, chosen.probe.fit_on, chosen.selection) == (20, 0.07, "train+val", Selection.HELDOUT_VAL)
    probes = {"probes": [{"name": "linear", "epochs": 100, "lrs": [0.1, 0.3], "refit": True, "standardize": True}, {"name": "logreg"}]}
    linear = cell_record(config(eval=probes), report, "linear.top1").probe
    assert (linear.type, linear.lr, linear.epochs, linear.augmentation, linear.bn_on_features, linear.fit_on) == (
        ProbeType.LINEAR_CACHED, 0.3, 100, "none", True, "train+val")
    assert cell_record(config(eval=probes), {}, "linear.top1").probe.lr == "grid"  # a grid, no choice recorded
    legacy = {"linear": {"epochs": 100, "lr": 0.1, "optimizer": "sgd"}}  # eval.linear of configs before eval.probes
    assert cell_record(config(eval=legacy), {}, "linear.top1").probe.model_dump(include={"lr", "optimizer", "fit_on"}) == {
        "lr": 0.1, "optimizer": "sgd", "fit_on": "train"}
    fraction = cell_record(config(eval=probes), report, "linear_1pct.top1")
    assert (fraction.labels.fraction, fraction.labels.subset, fraction.probe.lr, fraction.probe.fit_on) == (0.01, "class_balanced", 1.0, "train")
    logreg = cell_record(config(eval=probes), report, "logreg.top1").probe
    assert (logreg.type, logreg.optimizer, logreg.fit_on) == (ProbeType.LOGREG, "lbfgs", "train+val")
    # STL-10 pre-training, probed on CIFAR-10 (eval.datasets); 96 px views
    stl = config(dataset={"name": "stl10", "root": "data/stl10", "pretrain_split": "train+unlabeled"},
                 eval={"datasets": [{"name": "cifar10", "root": "data/cifar10"}]})
    transfer = cell_record(stl, report, "cifar10.linear.top1")
    assert (transfer.dataset, transfer.pretrain.dataset, transfer.pretrain.split) == ("cifar10", "stl10", "train+unlabeled")
    assert (transfer.resolution.pretrain, transfer.resolution.eval, transfer.probe.lr) == (96, 32, 3.0)
    # an ImageFolder is named by what it holds; its test images are resized to 256 and centre-cropped to 224
    folder = config(dataset={"name": "imagefolder", "root": "data/imagenet", "classes_file": "in100.txt"}, augment="multicrop",
                    backbone={"name": "resnet50"})
    in100 = cell_record(folder, {}, "knn20.top1")
    assert (in100.dataset, in100.views, in100.backbone.variant) == ("imagenet100", "2x224+6x96", "imagenet_stem")
    assert in100.resolution.model_dump() == {"pretrain": 224, "eval": 224, "eval_resize": "resize256_center224"}
    assert cell_record(config(dataset={"name": "imagefolder", "root": "data/tiny-imagenet-200", "image_size": 64}), {},
                       "knn20.top1").model_dump(include={"dataset", "resolution"}) == {
        "dataset": "tiny_imagenet", "resolution": {"pretrain": 64, "eval": 64, "eval_resize": "none"}}
    # the method's reading in effect
    assert cell_record(config(method={"name": "vicreg", "reading": "code"}), {}, "knn20.top1").reading == "code"
    assert cell_record(config(method={"name": "vicreg", "reading": "code", "variance_branches": "sum"}), {}, "knn20.top1").reading == "paper"
    assert cell_record(config(method={"name": "mvmr", "reading": "code", "l3_mode": "maximize"}), {}, "knn20.top1").reading == "mixed"
    with pytest.raises(ConfigError, match="no protocol record"):
        cell_record(config(), {}, "diag.effective_rank")


def test_find_reference_exact_partial_unknown_and_missing():
    exact = find_reference("byol", "top1", [cell_record(config(), {}, "knn200.top1")])
    assert exact.kind == MatchKind.EXACT and exact.reference.value == 0.910
    assert exact.comparison.note() == "also selection: test_max_over_epochs vs fixed_a_priori"  # should-match: no mark
    # smoke scale: the 800-epoch entry differs in epochs only, the 200-epoch one in epochs and batch too
    partial = find_reference("byol", "top1", [cell_record(config(epochs=6), {}, "knn200.top1")])
    assert (partial.kind, partial.reference.value, partial.kind.mark) == (MatchKind.PARTIAL, 0.910, "†")
    assert partial.comparison.note().startswith("epochs: 800 vs 6; also selection")
    assert partial.comparison.csv() == "epochs=800|6;selection=test_max_over_epochs|fixed_a_priori"
    # cells of one table cell that differ: both of ours are named
    both = find_reference("byol", "top1", [cell_record(config(epochs=e), {}, "knn200.top1") for e in (6, 12)])
    assert both.comparison.differ[0].text() == "epochs: 800 vs 6/12"
    # T and k are must-match fields of a kNN number
    cooler = find_reference("byol", "top1", [cell_record(config(eval={"knn_temperature": 0.07}), {}, "knn20.top1")])
    assert [d.text() for d in cooler.comparison.differ] == ["probe.k: 200 vs 20", "probe.t: 0.1 vs 0.07"]
    # a number whose protocol its source does not state: ‡
    tiny = config(method={"name": "simclr"}, dataset={"name": "imagefolder", "root": "data/tiny-imagenet-200", "image_size": 64},
                  backbone={"name": "resnet50"}, eval={"probes": [{"name": "logreg"}]})
    unknown = find_reference("simclr", "top1", [cell_record(tiny, {}, "logreg.top1")])
    assert (unknown.kind, unknown.kind.mark, unknown.reference.source) == (MatchKind.UNKNOWN, "‡", "CorInfoMax thesis, Table 5.1 (quoted)")
    assert "epochs: not stated" in unknown.comparison.note() and "probe.type: not stated" in unknown.comparison.note()
    # the reading is compared for a method with a code reading: lightly's VICReg averages the variance terms
    imagenet = {"dataset": {"name": "imagefolder", "root": "data/imagenet"}, "backbone": {"name": "resnet50"}, "epochs": 100,
                "batch_size": 256, "augment": "byol", "eval": {"probes": [{"name": "linear_aug"}]}}
    vicreg = find_reference("vicreg", "top1", [cell_record(config(method={"name": "vicreg"}, **imagenet), {}, "linear_aug.top1")])
    assert vicreg.reference.source == "lightly benchmarks, ImageNet-1k table" and "reading: code vs paper" in vicreg.comparison.note()
    code = find_reference("vicreg", "top1", [cell_record(config(method={"name": "vicreg", "reading": "code"}, **imagenet), {}, "linear_aug.top1")])
    assert "reading" not in code.comparison.note()
    # STL-10 pre-training at 32 px: probed on STL-10 itself, and on CIFAR-10 (the transfer entry, not the in-domain one)
    sidae = config(method={"name": "sidae"}, augment="simsiam_cifar", backbone={"name": "resnet18"}, epochs=200,
                   dataset={"name": "stl10", "root": "data/stl10", "image_size": 32, "pretrain_split": "unlabeled"},
                   eval={"datasets": [{"name": "cifar10", "root": "data/cifar10"}]})
    assert find_reference("sidae", "top1", [cell_record(sidae, {}, "linear.top1")]).reference.value == 61.18
    transfer = find_reference("sidae", "top1", [cell_record(sidae, {}, "cifar10.linear.top1")])
    assert (transfer.reference.value, transfer.kind) == (66.20, MatchKind.UNKNOWN)  # the paper states neither stem nor probe
    assert [d.field for d in transfer.comparison.unstated] == ["backbone.variant", "probe.type"]
    assert find_reference("byol", "top1", [cell_record(config(dataset={"name": "shapes"}), {}, "knn200.top1")]) is None  # nothing published


def frame(cells: list[tuple[str, str, dict[str, Any], float]]) -> pd.DataFrame:
    """A ``suite_runs``-shaped frame: (status, method, config, knn200.top1) per cell."""
    return pd.DataFrame([{"cell_id": f"c{i}", "status": status, "method": conf["method"]["name"], "dataset": conf["dataset"]["name"],
                          "knn200.top1": value, CONFIG_COLUMN: json.dumps(conf), SELECTION_COLUMN: "null"}
                         for i, (status, conf, value) in enumerate(cells)])


def test_paper_column_marks_and_footnotes_in_every_format():
    df = frame([("complete", config(), 0.905), ("complete", config(method={"name": "simclr"}, epochs=6), 0.5),
                ("complete", config(method={"name": "mocov2"}, dataset={"name": "shapes"}), 0.4)])
    table = paper_column(pivot(df, ["method"], ["dataset"], "knn200.top1"), df)
    assert table.paper.loc["byol", "cifar10"] == pytest.approx(0.910) and table.paper.loc["simclr", "cifar10"] == pytest.approx(0.879)
    assert table.paper.isna().loc["mocov2"].all() and table.matches.loc["mocov2", "shapes"] is None
    md = to_markdown(table)
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 91.0 |" in rows["byol"] and "†" not in rows["byol"]  # the same protocol: plain
    assert "| 87.9 †1 |" in rows["simclr"]
    assert "†1 (simclr on cifar10: lightly benchmarks, CIFAR-10 table) epochs: 800 vs 6" in md.splitlines()[-1]
    assert "†n: some differ" in md.splitlines()[0]  # the caption defines the marks
    csv = pd.read_csv(io.StringIO(to_csv(table)), keep_default_na=False).set_index("method")
    assert csv.loc["byol", "cifar10 paper_match"] == "exact" and csv.loc["simclr", "cifar10 paper_match"] == "partial"
    assert csv.loc["simclr", "cifar10 paper_diff"].startswith("epochs=800|6;")
    assert csv.loc["simclr", "cifar10 paper_source"] == "simclr on cifar10: lightly benchmarks, CIFAR-10 table"
    assert csv.loc["mocov2", "shapes paper_match"] == ""
    tex = to_latex(table)
    assert r"87.9\textsuperscript{\dag{}1}" in tex and r"\textsuperscript{\dag{}1} (simclr on cifar10" in tex
    html = to_html(table)
    assert '<td class="paper partial">87.9 <sup title="(simclr on cifar10: lightly benchmarks, CIFAR-10 table) epochs: 800 vs 6' in html
    assert '<td class="paper exact">91.0</td>' in html and "<tfoot>" in html
    with pytest.raises(ConfigError, match="no published numbers for the metric"):
        paper_column(pivot(df.assign(**{"diag.rank": 1.0}), ["method"], ["dataset"], "diag.rank"), df)


def _branches(config: Any) -> str:
    """VICReg Table 5's column of a cell: shared, separate, or the second branch's backbone."""
    branches = config.method.branches
    return branches if isinstance(branches, str) else branches.second.name


#: the ViT suites: the column of a cell, and published_vit.yaml's numbers their cells show: (method, column) -> (value, source)
VIT_TABLES = {
    "mveb_vit.yaml": (lambda config: config.backbone.name, {
        ("simclr", "vit_small"): (69.0, "MoCo v3 paper, Table 4"), ("mocov3", "vit_small"): (72.5, "MoCo v3 paper, Table 4"),
        ("mae", "vit_small"): (68.2, "MVEB paper, Table 7 (quoted)"), ("mveb", "vit_small"): (73.4, "MVEB paper, Table 7"),
        ("mocov3", "resnet50"): (73.8, "MoCo v3 paper, Sec. 3 table (also MVEB Table 7)")}),
    "vicreg_branches.yaml": (_branches, {
        ("byol", "shared"): (69.3, "VICReg paper, Table 5"), ("simclr", "separate"): (63.1, "VICReg paper, Table 5"),
        ("simclr", "resnet101"): (63.9, "VICReg paper, Table 5"), ("barlow_twins", "vit_small"): (63.9, "VICReg paper, Table 5"),
        ("vicreg", "separate"): (66.5, "VICReg paper, Table 5"), ("vicreg", "vit_small"): (66.2, "VICReg paper, Table 5")}),
}


@pytest.mark.parametrize("suite", sorted(VIT_TABLES))
def test_table_paper_of_a_vit_suite_shows_its_papers_numbers_with_protocol_footnotes(suite):
    """Acceptance (issue 17, item 3): MVEB Table 7 (rows x ViT-S / ResNet-50) and VICReg Table 5 (rows x SW / DW / DA)
    as the suites expand them (no training), each cell with its paper's number (of its own backbone; two branches
    that differ named evaluated/other, ``resnet50/vit_small``) and a footnote naming the fields that differ or are
    not stated."""
    column, expected = VIT_TABLES[suite]
    cells = [cell for cell in expand_suite(load_suite(SUITES / suite)) if cell.config.method.name not in set(Baseline)]
    configs = [cell.config.model_dump(mode="json") for cell in cells]
    df = frame([("complete", config, 0.5) for config in configs]).rename(columns={"knn200.top1": "linear.top1"})
    df["column"] = [column(cell.config) for cell in cells]
    table = paper_column(pivot(df, ["method"], ["column"], "linear.top1"), df)
    for (method, col), (value, source) in expected.items():
        match = table.matches.loc[method, col]
        assert (match.reference.value, match.reference.source) == (value, source), (method, col)
        assert match.kind != MatchKind.EXACT and match.comparison.note()  # its footnote names what differs
    names = {cell_record(config, {}, "linear.top1").backbone.name for config in configs}
    assert names == ({"vit_small", "resnet50"} if suite == "mveb_vit.yaml" else
                     {"resnet50", "resnet50/resnet50", "resnet50/resnet101", "resnet50/vit_small"})
    md = to_markdown(table)
    marks = set(re.findall(r" [†‡](\d+) \|", md))
    assert len(marks) == len([line for line in md.splitlines() if re.match(r"[†‡]\d+ \(", line)]) >= len(expected)


def log_suite(uri: str, path: Path, sets: list[str], metrics: dict[str, float]) -> None:
    """Record a variant of a suite and its cells in the MLflow store at ``uri`` as ``run`` does, each cell complete
    with one epoch's loss and ``metrics`` (no training)."""
    suite = load_suite(path, sets)
    tracker = SuiteTracker(uri, suite.name)
    parent = tracker.parent_run(suite.name, suite.to_yaml())
    tracker.record_run(parent, suite.to_yaml(), sets, datetime.now(timezone.utc))
    for number, cell in enumerate(expand_suite(suite)):
        run = tracker.start_cell(parent, cell.id, cell.config, suite=suite.name, axes=cell.axes,
                                 trial={"study": suite.name, "number": number, "id": number})
        tracker.log_epoch(run, EpochRecord(epoch=0, loss=1.0, lr=0.1, images_per_s=1.0))
        tracker.finish_cell(run, status="complete", metrics=metrics)


@pytest.mark.xdist_group("report")  # logs into the session's report store (tests/conftest.py): no new MLflow database
def test_table_paper_marks_a_smoke_run_of_a_paper_suite_and_not_a_matching_cell(report_base, capsys, monkeypatch):
    """Acceptance (issue 15, item 3): the CorInfoMax paper suite at smoke scale has a published number in every
    column, each marked with the fields that differ; BYOL with lightly's CIFAR-10 kNN protocol has none."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(f"sqlite:///{report_base}/results/mlflow.db")
    log_suite(uri, SUITES / "corinfomax_main.yaml", ["epochs=2", "batch_size=64"], {"linear.top1": 0.31, "knn200.top1": 0.3})
    assert main(["table", str(SUITES / "corinfomax_main.yaml"), "--metric", "linear.top1", "--paper", "--tracking", uri]) == 0
    out = capsys.readouterr().out
    cells = [line for line in out.splitlines() if line.startswith("| corinfomax")]
    assert len(cells) == 1 and cells[0].count("†") == 2  # cifar10 93.2 and cifar100 71.6, both marked
    assert "| 93.2 †1 |" in cells[0] and "| 71.6 †2 |" in cells[0]
    notes = [line for line in out.splitlines() if re.match(r"†\d ", line)]
    assert len(notes) == 2
    for note in notes:
        for field in ("epochs: 1000 vs 2", "batch_size: 512 vs 64", "probe.type: linear_aug vs linear_cached",
                      "resolution.eval_resize: resize36_center32 vs none"):
            assert field in note
    log_suite(uri, SUITES / "baselines_cifar10.yaml", ["method=byol", "epochs=800", "batch_size=512", "eval.knn_temperature=0.1"],
              {"knn200.top1": 0.905})
    assert main(["table", str(SUITES / "baselines_cifar10.yaml"), "--metric", "knn200.top1", "--paper", "--tracking", uri]) == 0
    out = capsys.readouterr().out
    (byol,) = [line for line in out.splitlines() if line.startswith("| byol")]
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert byol.endswith("| 91.0 |") and not any(mark in "".join(table) for mark in "†‡")
    assert not any(re.match(r"[†‡]\d", line) for line in out.splitlines())  # no footnote
    # the leaderboard: the published number under ours, the mark, and on hover the source and the fields
    rows = {path: leaderboard_rows(suite, suite_runs(suite, uri=uri)) for path, suite in
            ((path, load_suite(SUITES / path, sets)) for path, sets in (("corinfomax_main.yaml", ["epochs=2", "batch_size=64"]),
             ("baselines_cifar10.yaml", ["method=byol", "epochs=800", "batch_size=512", "eval.knn_temperature=0.1"])))}
    rows = {path: frame[frame["method"].isin(["corinfomax", "byol"])] for path, frame in rows.items()}  # not the baselines
    smoke = [paper_span("linear.top1", row["linear.top1"]) for row in rows["corinfomax_main.yaml"]["paper"]]
    assert [re.search(r'class="paper (\w+)"', span)[1] for span in smoke] == ["partial", "partial"]
    assert smoke[0].endswith(">paper 93.2†</span>") and 'title="published 93.2: corinfomax on cifar10: CorInfoMax thesis, Table 5.1; ' \
        "epochs: 1000 vs 2; batch_size: 512 vs 64;" in smoke[0]
    (matching,) = rows["baselines_cifar10.yaml"]["paper"]
    span = paper_span("knn200.top1", matching["knn200.top1"])
    assert 'class="paper exact"' in span and 'title="published 91.0: byol on cifar10: lightly benchmarks, CIFAR-10 table; the same ' \
        'protocol">paper 91.0</span>' in span
