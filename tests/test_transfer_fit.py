"""Detection that fits its data and the machine: sizes that follow small images, the memory estimate and its refusal,
and SIGTERM honoured within seconds inside a long iteration (both backends, through the real CLI)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from pycocotools.coco import COCO

from bench.cli import main
from bench.models.backbones import BackboneConfig, build_backbone
from bench.train.checkpoint import CHECKPOINT
from bench.transfer.coco import CocoConfig, load_coco
from bench.transfer.memory import FOOTPRINTS, available_bytes, training_bytes
from bench.transfer.sizes import Sizes, largest_input, resized, resolve_sizes
from bench.transfer.synthetic import generate_coco_shapes
from bench.transfer.torchvision_det import PROTOCOL_SIZES, DetectionConfig, with_sizes

HAS_DETECTRON2 = importlib.util.find_spec("detectron2") is not None
NO_DETECTRON2 = "detectron2 is not installed (.ci/run installs it from ../shared/vendor/detectron2-8a9d885.tar.gz)"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> CocoConfig:
    root = generate_coco_shapes(tmp_path_factory.mktemp("coco"), n_train=4, n_val=2)
    return CocoConfig(root=root, train_split="train", val_split="val")


def coco_of(*sizes: tuple[int, int]) -> COCO:
    """A pycocotools index listing images of these (width, height), without files."""
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h} for i, (w, h) in enumerate(sizes, 1)],
                    "annotations": [], "categories": []}
    coco.createIndex()
    return coco


def test_sizes_follow_images_far_smaller_than_the_protocol(shapes):
    splits = load_coco(shapes)
    assert resolve_sizes(PROTOCOL_SIZES, splits.train.coco, splits.val.coco) == Sizes((64,), 64, 64)
    resolved = with_sizes(DetectionConfig(), splits)  # the README example: 64 px synthetic images
    assert (resolved.min_sizes, resolved.max_size, resolved.test_size) == ([64], 64, 64)
    explicit = with_sizes(DetectionConfig(min_sizes=[96, 128], test_size=100), splits)  # what is set wins; the cap scales
    assert (explicit.min_sizes, explicit.max_size, explicit.test_size) == ([96, 128], 128, 100)
    assert with_sizes(DetectionConfig(min_sizes=[96]), splits).test_size == 96  # test at the largest training size

    coco = coco_of((640, 480), (480, 640), (500, 333))  # COCO-like: keeps the protocol's sizes
    assert resolve_sizes(PROTOCOL_SIZES, coco, coco) == PROTOCOL_SIZES
    thumbnails = coco_of((320, 240), (100, 300))  # largest shorter side 240 <= 640 / 2, largest longer side 320
    assert resolve_sizes(PROTOCOL_SIZES, thumbnails, coco_of((200, 150))) == Sizes((240,), 320, 240)
    assert resolve_sizes(PROTOCOL_SIZES, thumbnails, thumbnails, min_sizes=[480]) == Sizes((480,), 640, 480)
    assert resolve_sizes(PROTOCOL_SIZES, coco_of((322, 400)), coco_of((322, 400))) == PROTOCOL_SIZES  # 322 > 320


def test_largest_padded_input_by_hand():
    assert resized(640, 480, 800, 1333) == (1067, 800)
    assert resized(1000, 200, 800, 1333) == (1333, 267)  # the longer side's cap wins
    sizes = Sizes((640, 800), 1333, 800)
    assert largest_input(coco_of((640, 480), (1000, 200)), sizes) == max(1088 * 800, 1344 * 288)


def test_memory_estimate_by_hand():
    r50 = FOOTPRINTS["resnet50"]
    assert training_bytes("resnet50", 2, 4096, 512) == pytest.approx(r50.base + 2 * (r50.per_pixel * 4096 + r50.per_roi * 512))
    # the README example: 16 synthetic 64 px images need ~1.6 GB at their own size, ~27 GB blown up to 800 px
    assert 1.5e9 < training_bytes("resnet50", 16, 64 * 64, 512) < 1.7e9
    assert 26e9 < training_bytes("resnet50", 16, 800 * 800, 512) < 28e9
    assert available_bytes(torch.device("cpu")) > 0


def write_model_pt(path: Path) -> Path:
    """A resnet50 model.pt as `ssl-bench train` writes it (untrained weights: enough for what these tests check)."""
    from bench.config import resolve_run_config

    config = resolve_run_config({"method": {"name": "simclr"}, "backbone": {"name": "resnet50"}}).model_dump(mode="json")
    state = build_backbone(BackboneConfig(name="resnet50"), 3).state_dict()
    torch.save({"model": {}, "backbone": state, "config": config, "history": []}, path)
    return path


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    return write_model_pt(tmp_path_factory.mktemp("run") / "model.pt")


@pytest.mark.parametrize("backend", ["torchvision", "detectron2"])
def test_a_configuration_that_cannot_fit_is_refused_with_the_numbers(backend, shapes, model_pt, tmp_path, capsys):
    huge = {"min_sizes": [20000], "max_size": 40000}  # 64 px images blown up to 20000 px: terabytes
    section = {"torchvision": {"detector": huge}, "detectron2": {"detectron2": huge}}[backend]
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump({"backend": backend, "coco": shapes.model_dump(mode="json"), **section}))
    out = tmp_path / "out"
    assert main(["transfer", str(model_pt), "--config", str(config), "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: detection training would need about") and "GiB of available RAM" in err
    assert "Mpx" in err and "min_sizes" in err
    assert not out.exists()


def _watch(stream, marker: str, seen: threading.Event, lines: list[tuple[float, str]]) -> None:
    for line in stream:
        lines.append((time.monotonic(), line))
        if marker in line:
            seen.set()


@pytest.mark.parametrize("backend", ["torchvision", pytest.param("detectron2", marks=pytest.mark.skipif(not HAS_DETECTRON2, reason=NO_DETECTRON2))])
def test_sigterm_inside_a_long_iteration_stops_within_seconds(backend, shapes, model_pt, tmp_path):
    """ResNet-50 at 512 px on one thread: an iteration takes many seconds. SIGTERM one second into the first one
    must stop the work within a few seconds (the preemption message), with a checkpoint of the 0 iterations done,
    and end the process with exit 4. The interpreter's own teardown after that (seconds on a loaded machine) is
    not counted."""
    long_iterations = {"min_sizes": [512], "max_size": 512, "test_size": 64, "roi_batch_size": 64}
    section = ({"detector": {**long_iterations, "iterations": 5, "batch_size": 2, "fpn_channels": 16, "progress": False}}
               if backend == "torchvision" else
               {"detectron2": {**long_iterations, "protocol": "coco_r50_fpn_1x", "iterations": 5, "ims_per_batch": 2,
                               "num_workers": 0, "device": "cpu"}})
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump({"backend": backend, "coco": shapes.model_dump(mode="json"), **section}))
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "transfer", str(model_pt), "--config", str(config), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, lines = threading.Event(), []
    marker = "fine-tuning" if backend == "torchvision" else "Starting training from iteration 0"
    watcher = threading.Thread(target=_watch, args=(proc.stdout, marker, seen, lines), daemon=True)
    watcher.start()
    try:
        assert seen.wait(timeout=300), "".join(line for _, line in lines)
        time.sleep(1.0)  # into the first iteration's forward pass
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    watcher.join(timeout=10)
    output = "".join(line for _, line in lines)
    assert proc.returncode == 4, output
    stopped = next(t for t, line in lines if "run the same command again to resume" in line)
    assert stopped - sent < 8, f"the work stopped {stopped - sent:.1f} s after SIGTERM"
    if backend == "torchvision":
        assert torch.load(out / CHECKPOINT, weights_only=True)["iteration"] == 0, "the first iteration ended before SIGTERM"
        assert "SIGTERM in detection iteration 1; checkpoint of the 0 iterations done" in output
    else:
        assert (out / "last_checkpoint").read_text() == "model_preempted.pth"
        assert "SIGTERM at detectron2 iteration 1; checkpoint of the 0 iterations done" in output
