"""`ssl-bench perf`: the run writes consistent figures; scenarios, protocols and the batch search are right.

Speed itself is never asserted here (DESIGN: performance claims live in the benchmark's own output).
"""

import json
import math

import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from rich.console import Console

from bench.cli import main
from bench.data.registry import DatasetConfig, load_dataset
from bench.data.views import ViewMaker, build_recipe
from bench.errors import ConfigError
from bench.eval.linear import LinearConfig
from bench.models.backbones import BackboneConfig, build_backbone
from bench.perf import PerfOptions, perf
from bench.perf.evaluation import compare_linear_protocols, knn_seconds
from bench.perf.folder import FolderSizes, measure_folder_decode
from bench.perf.memory import fits_on_device, largest_batch
from bench.perf.mvmr import mvmr_cache
from bench.perf.report import NEEDS_CUDA, Target, check_targets
from bench.perf.scenarios import SCENARIOS, Scenario, select_scenarios

CPU = torch.device("cpu")
QUICKEST = "simclr-cnn-32-b64-fp32"


def test_quick_scenario_run_writes_json_with_three_figures_and_finite_ratios(tmp_path, capsys):
    assert main(["perf", "--quick", "--scenario", QUICKEST, "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("*.json")
    results = json.loads(path.read_text())
    assert results["device_type"] == "cpu" and results["torch"] == torch.__version__ and results["git_commit"]
    assert list(results["scenarios"]) == [QUICKEST]
    for figures in results["scenarios"].values():
        ours, classic, bound = (figures[k] for k in ("ours_images_per_s", "classic_images_per_s", "compute_bound_images_per_s"))
        assert min(ours, classic, bound) > 0
        assert math.isfinite(figures["ours_vs_classic"]) and figures["ours_vs_classic"] == pytest.approx(ours / classic)
        assert math.isfinite(figures["ours_vs_compute_bound"]) and figures["ours_vs_compute_bound"] == pytest.approx(ours / bound)
        assert "peak_memory_gib" not in figures  # CUDA only
    assert "evaluation" not in results  # --scenario measures the scenarios only
    assert results["targets"] and {row["status"] for row in results["targets"]} == {NEEDS_CUDA}
    assert "simclr-r18-32-b512-bf16" in results["note"] and "simclr-r50-96-b256-bf16" in results["note"]
    out = capsys.readouterr().out
    assert QUICKEST in out and NEEDS_CUDA in out and "ours/classic" in out


def test_scenario_registry_validates():
    assert {n for n, s in SCENARIOS.items() if s.min_vs_classic or s.min_vs_compute} == {
        "simclr-r18-32-b512-bf16", "simclr-r50-96-b256-bf16"}
    assert SCENARIOS["simclr-r18-32-b512-bf16"].backbone.cifar_stem
    quick = select_scenarios([], quick=True)
    assert {s.backbone.name for s in quick} == {"small_cnn", "resnet18"} and all(s.batch_size <= 64 for s in quick)
    assert not any(s.quick for s in select_scenarios([], quick=False))
    for name, s in SCENARIOS.items():
        assert s.name == name
        cfg, bound = s.run_config(CPU), s.run_config(CPU, compute_bound=True)
        assert (cfg.batch_size, cfg.epochs, cfg.train.precision, cfg.train.compile) == (s.batch_size, 1 + s.repeats, s.precision, s.compile)
        assert cfg.dataset.n_train == s.batch_size * s.steps and cfg.dataset.image_size == s.image_size
        sizes = [v.crop_size(s.image_size) for v in build_recipe(cfg.augment)]
        assert [v.crop_size(s.image_size) for v in build_recipe(bound.augment)] == sizes
    with pytest.raises(ConfigError, match="unknown scenario nope; choose from"):
        select_scenarios(["nope"], quick=False)
    with pytest.raises(ValidationError, match="needs the clean view"):
        Scenario(method="mvmr", backbone=BackboneConfig(), image_size=32, batch_size=8, precision="fp32", steps=1)
    with pytest.raises(ConfigError, match="unknown method 'simclrr'"):
        Scenario(method="simclrr", backbone=BackboneConfig(), image_size=32, batch_size=8, precision="fp32", steps=1)


def test_compute_bound_views_are_the_unaugmented_images():
    scenario = SCENARIOS[QUICKEST]
    specs = build_recipe(scenario.run_config(CPU, compute_bound=True).augment)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    views = ViewMaker(specs, (0.5,) * 3, (0.25,) * 3, 32, clean=True)(images, torch.zeros(4), torch.arange(4), torch.Generator())
    assert len(views.crops) == 2 and all(torch.equal(crop, views.clean) for crop in views.crops)
    torch.testing.assert_close(views.clean, (images / 255 - 0.5) / 0.25)


@pytest.fixture(scope="module")
def tiny_probe():
    splits = load_dataset(DatasetConfig(name="shapes", n_train=300, n_test=100))
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(name="small_cnn", width=8), 3), splits


def test_linear_probe_on_cache_agrees_with_the_full_network_protocol(tiny_probe):
    backbone, splits = tiny_probe
    cfg = LinearConfig(epochs=4, batch_size=64, lrs=[0.4])  # 0.1 at batch 64
    same_views = SCENARIOS[QUICKEST].run_config(CPU, compute_bound=True).augment[0]
    exact = compare_linear_protocols(backbone, splits.train, splits.test, 10, cfg, CPU, augment=same_views)
    # un-augmented, both protocols train the same head on the same features in the same order
    assert exact["linear.top1_gap"] <= 0.01 and exact["linear.cached_top1"] > 0.1
    augmented = compare_linear_protocols(backbone, splits.train, splits.test, 10, cfg, CPU)
    assert augmented["linear.cached_top1"] == exact["linear.cached_top1"]  # the cached probe is deterministic
    assert augmented["linear.top1_gap"] <= 0.1 and augmented["linear.full_network_top1"] > 0.1
    assert augmented["linear.speedup"] == pytest.approx(augmented["linear.full_network_seconds"] / augmented["linear.cached_seconds"])
    assert augmented["extract.images_per_s"] > 0


def test_knn_figures_name_their_sizes():
    knn = knn_seconds(500, 50, 16, 5, CPU)
    assert (knn["knn.n_train"], knn["knn.n_test"], knn["knn.dim"]) == (500, 50, 16) and knn["knn.seconds"] > 0


def test_largest_batch_doubles_then_bisects_under_a_memory_limit():
    limit_bytes, per_sample = 100_000, 37  # the largest batch that fits: 2702

    def fits(batch: int) -> bool:
        probes.append(batch)
        return batch * per_sample <= limit_bytes

    probes: list[int] = []
    assert largest_batch(fits, start=64, tolerance=0) == 2702
    assert probes[:7] == [64, 128, 256, 512, 1024, 2048, 4096]  # doubling until the first failure
    assert len(probes) <= 7 + math.ceil(math.log2(2048)) + 1
    probes.clear()
    found = largest_batch(fits, start=64)
    assert fits(found) and 2702 - 2702 / 16 <= found <= 2702
    assert largest_batch(fits, start=5000, tolerance=0) == 2702  # the start itself does not fit
    assert largest_batch(lambda b: False, start=8) == 0
    assert largest_batch(lambda b: True, start=8, limit=100, tolerance=0) == 100


def test_fits_on_device_trains_two_steps_at_the_probed_batch(tmp_path):
    assert fits_on_device(SCENARIOS[QUICKEST], 4, CPU, tmp_path)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["config"]["batch_size"] == 4 and saved["config"]["method"]["name"] == "simclr" and len(saved["history"]) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the out-of-memory search needs CUDA")
def test_fits_on_device_refuses_a_batch_larger_than_the_gpu(tmp_path):
    scenario = SCENARIOS["simclr-r18-32-b512-bf16"]
    device = torch.device("cuda")
    assert fits_on_device(scenario, 64, device, tmp_path / "small")
    assert not fits_on_device(scenario, 2**22, device, tmp_path / "huge")


def test_targets_pass_fail_and_unmeasured():
    target = Target(scenario="s", figure="ours_vs_compute_bound", at_least=0.8)
    assert target.holds(0.8) and not target.holds(0.79) and Target(scenario=None, figure="knn.seconds", at_most=1).holds(0.5)
    results = {"device_type": "cuda", "evaluation_sizes": "full", "evaluation": {"linear.speedup": 25.0, "knn.seconds": 2.0},
               "scenarios": {"simclr-r18-32-b512-bf16": {"ours_vs_classic": 3.5, "ours_vs_compute_bound": 0.7}}}
    status = {row["target"]: row["status"] for row in check_targets(results)}
    assert status["simclr-r18-32-b512-bf16: ours_vs_classic >= 3"] == "pass"
    assert status["simclr-r18-32-b512-bf16: ours_vs_compute_bound >= 0.8"] == "fail"
    assert status["simclr-r50-96-b256-bf16: ours_vs_compute_bound >= 0.8"] == "unmeasured: scenario not run"
    assert status["evaluation (full sizes): linear.speedup >= 20"] == "pass"
    assert status["evaluation (full sizes): knn.seconds <= 1"] == "fail"
    assert status["evaluation (full sizes): linear.top1_gap <= 0.01"].startswith("unmeasured")
    quick = {**results, "evaluation_sizes": "quick"}
    assert all(row["status"].startswith("unmeasured") for row in check_targets(quick) if row["target"].startswith("evaluation"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU behaviour")
def test_gpu_only_runs_are_refused_on_a_cpu(tmp_path):
    with pytest.raises(ConfigError, match="--max-batch .* needs CUDA"):
        perf(PerfOptions(quick=True, max_batch=True), tmp_path, Console())
    with pytest.raises(ConfigError, match="sized for a GPU.*--quick"):
        perf(PerfOptions(), tmp_path, Console())
    assert not list(tmp_path.iterdir())


def test_mvmr_cache_benchmark_runs_both_modes(tmp_path):
    out = mvmr_cache(CPU, tmp_path, quick=True)
    assert out["mvmr.cached_images_per_s"] > 0 and out["mvmr.recomputed_images_per_s"] > 0
    assert out["mvmr.cache_speedup"] == out["mvmr.cached_images_per_s"] / out["mvmr.recomputed_images_per_s"]
    assert list((tmp_path / "cache").glob("*.npy"))  # the cached mode wrote its representations


def test_folder_decode_section_times_ours_and_the_pil_dataloader(tmp_path):
    sizes = FolderSizes(n_images=6, batch_size=3, image_size=32, repeats=1, workers=0)
    figures = measure_folder_decode(sizes, CPU, tmp_path)
    ours, pil, evals = (figures[f"folder.{k}_images_per_s"] for k in ("ours", "pil", "eval"))
    assert min(ours, pil, evals) > 0 and figures["folder.ours_vs_pil"] == pytest.approx(ours / pil)
    assert figures["folder.decode"] == "host" and figures["folder.n_images"] == 6 and figures["folder.views"] == 2
    assert figures["folder.workers"] == 0
    assert "folder.ours_workers_decode_images_per_s" not in figures  # CUDA only
    files = sorted((tmp_path / "folder-decode").iterdir())
    with Image.open(files[0]) as first, Image.open(files[1]) as second:
        assert (first.size, second.size, first.format) == ((500, 375), (375, 500), "JPEG")


def test_the_classic_reference_trains_through_the_engines_setup_and_step(tmp_path, monkeypatch):
    """perf measures what a cell runs: the classic reference's method is prepared (MV-MR caches its representation)
    and every step follows the run's lr schedule (warm-up from the first step), through the engine's pieces."""
    from bench.config import apply_overrides, resolve_run_config
    from bench.perf.references import classic_images_per_s
    from bench.train import engine

    cfg = resolve_run_config(apply_overrides({}, [
        "method=mvmr", "method.representations=[hog]", "method.projector=16-16", "dataset={name: shapes, n_train: 64, n_test: 20}",
        "backbone={name: small_cnn, width: 4}", "batch_size=32", "epochs=2", "schedule.warmup_epochs=1",
        f"train.cache_dir={tmp_path / 'cache'}", "train.progress=false", "train.device=cpu"]))
    lrs: list[float] = []

    def scheduled(optimizer, *args):
        engine_schedule(optimizer, *args)
        lrs.append(optimizer.param_groups[0]["lr"])

    engine_schedule = engine.schedule_groups
    monkeypatch.setattr(engine, "schedule_groups", scheduled)
    rate, workers = classic_images_per_s(cfg, load_dataset(cfg.dataset), tmp_path / "classic")
    assert rate > 0 and workers >= 1
    assert list((tmp_path / "cache").rglob("*hog*.npy"))  # method.prepare ran: the HOG features are cached
    assert len(lrs) == 4 and lrs[0] < lrs[1] < lrs[2] > lrs[3]  # 2 warm-up steps up, then cosine decay (to 0 at the end)
