"""ImageFolder data as the ImageNet recipes have it, on tiny files with known pixels.

Training views are cut from the whole image (a corner marker that any centre crop removes shows up in some
views), evaluation images are Resize(round(S / 0.875)) + CenterCrop(S), the crop boxes are a function of
(seed, epoch, index, view), EXIF orientation is applied, and non-JPEG or odd JPEG files fall back to PIL.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from bench.config import resolve_run_config
from bench.data.decode import decode_images, read_bytes
from bench.data.folder import FolderSet
from bench.data.folder_crops import Interpolation, view_boxes
from bench.data.loader import _decode_packed, _FolderBatches, iter_batches
from bench.data.views import HostViews, ViewMaker, ViewSpec, build_recipe
from bench.errors import DataError
from bench.train.engine import train

CPU = torch.device("cpu")
HEIGHT, WIDTH, SIZE = 48, 64, 16  # 4:3 images, 16 px views
MARKER = 8  # an 8 x 8 red block in the top-left corner: outside the centre square (columns 8..55) and the eval crop


def save(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


def marked(shade: int) -> np.ndarray:
    pixels = np.full((HEIGHT, WIDTH, 3), shade, dtype=np.uint8)
    pixels[:MARKER, :MARKER] = (255, 0, 0)
    return pixels


def red_pixels(images: torch.Tensor) -> torch.Tensor:
    """How many strongly red pixels each (B, 3, H, W) image holds."""
    r, g, b = images.int().unbind(dim=1)
    return ((r > 200) & (g < 80) & (b < 80)).sum(dim=(1, 2))


@pytest.fixture
def marked_folder(tmp_path: Path) -> FolderSet:
    files = [save(tmp_path / f"img{i}.png", marked(60 + 40 * i)) for i in range(4)]
    return FolderSet("marked", files, torch.zeros(4, dtype=torch.long), ["x"], image_size=SIZE)


def test_training_views_are_cut_from_the_whole_image(marked_folder):
    folder = marked_folder
    evals, labels, index = next(iter_batches(folder, 4, CPU))
    assert evals.shape == (4, 3, SIZE, SIZE) and red_pixels(evals).sum() == 0  # the eval crop removes the marker
    maker = ViewMaker(build_recipe("simclr"), folder.mean, folder.std, SIZE, clean=True)
    marked_views = 0
    for epoch in range(4):
        [(views, _, index)] = list(iter_batches(folder, 4, CPU, views=maker.plan(0, epoch)))
        assert isinstance(views, HostViews) and torch.equal(views.clean, evals)  # the clean view is the eval image
        assert [tuple(c.shape) for c in views.crops] == [(4, 3, SIZE, SIZE)] * 2 and views.crops[0].dtype == torch.uint8
        marked_views += sum(int((red_pixels(crop) > 0).sum()) for crop in views.crops)
    assert 0 < marked_views < 32

    # a view is its box of the whole image, resized with antialiasing (checked with F.interpolate)
    plan = maker.plan(0, 1)
    [(views, _, _)] = list(iter_batches(folder, 4, CPU, views=plan))
    image = folder[2][0]
    top, left, h, w = view_boxes(HEIGHT, WIDTH, plan, 2)[1]
    box = image[None, :, top : top + h, left : left + w].float()
    expected = F.interpolate(box, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False).round()
    assert (views.crops[1][2].float() - expected[0]).abs().max() <= 1


@pytest.mark.parametrize("interpolation", list(Interpolation))
def test_eval_images_are_resized_to_256_224_geometry_then_centre_cropped(tmp_path, interpolation):
    ramp = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    ramp[..., 0] = 4 * np.arange(WIDTH)[None, :]  # red = 4 x column
    ramp[..., 1] = 5 * np.arange(HEIGHT)[:, None]  # green = 5 x row
    folder = FolderSet("ramp", [save(tmp_path / "ramp.png", ramp)], torch.zeros(1, dtype=torch.long), ["x"],
                       image_size=SIZE, interpolation=interpolation)
    [image] = next(iter_batches(folder, 1, CPU))[0]
    # shorter side 48 -> round(16 / 0.875) = 18, so the image becomes 18 x 24 (scale 8/3); centre 16 x 16 at (1, 4).
    # Both filters keep a linear ramp linear: output pixel j shows source position (j + offset + 0.5) * 8/3 - 0.5.
    j = torch.arange(SIZE, dtype=torch.float64)
    assert (image[0, 7].double() - 4 * ((j + 4 + 0.5) * 8 / 3 - 0.5)).abs().max() <= 1
    assert (image[1, :, 7].double() - 5 * ((j + 1 + 0.5) * 8 / 3 - 0.5)).abs().max() <= 1


def test_view_boxes_depend_on_seed_epoch_index_and_view_only(marked_folder):
    folder = marked_folder
    plan = ViewMaker(build_recipe("byol"), folder.mean, folder.std, SIZE, clean=False).plan(5, 2)
    order = torch.tensor([3, 1, 0, 2])

    def views_by_index(batches) -> dict[int, list[torch.Tensor]]:
        return {int(i): [crop[k] for crop in views.crops] for views, _, index in batches for k, i in enumerate(index)}

    full = views_by_index(iter_batches(folder, 2, CPU, order=order, views=plan))
    resumed = views_by_index(iter_batches(folder, 2, CPU, order=order, views=plan, start=1))  # a run resumed at batch 1
    other_order = views_by_index(iter_batches(folder, 3, CPU, order=order.flip(0), views=plan, workers=2))
    assert resumed.keys() == {0, 2}
    for i, crops in full.items():
        assert all(torch.equal(a, b) for a, b in zip(crops, other_order[i]))
        if i in resumed:
            assert all(torch.equal(a, b) for a, b in zip(crops, resumed[i]))
    boxes = [view_boxes(HEIGHT, WIDTH, p, i) for p, i in
             [(plan, 1), (plan, 2), (replace(plan, seed=6), 1), (replace(plan, epoch=3), 1)]]
    assert boxes[0] == view_boxes(HEIGHT, WIDTH, replace(plan), 1)
    assert len({str(b) for b in boxes}) == 4 and boxes[0][0] != boxes[0][1]  # the two views differ too


# each EXIF orientation as PIL's exif_transpose applies it; 2 x 3 blocks of distinct colours show where each went
BLOCKS = np.array([[(250, 0, 0), (0, 250, 0), (0, 0, 250)], [(250, 250, 0), (0, 250, 250), (250, 0, 250)]], dtype=np.uint8)


def test_exif_orientation_is_applied_as_pil_does(tmp_path):
    pixels = BLOCKS.repeat(8, axis=0).repeat(8, axis=1)  # 16 x 24
    files = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        files.append(save(tmp_path / f"o{orientation}.jpg", pixels, exif=exif, quality=95, subsampling=0))
    folder = FolderSet("exif", files, torch.zeros(8, dtype=torch.long), ["x"])
    for orientation, path in enumerate(files, start=1):
        with Image.open(path) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        got = folder[orientation - 1][0].permute(1, 2, 0).numpy()
        assert got.shape == expected.shape and got.shape[:2] == ((16, 24) if orientation < 5 else (24, 16))
        assert np.abs(got.astype(int) - expected).max() <= 12, f"orientation {orientation}"


def test_decode_falls_back_to_pil_and_names_a_bad_file(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    grey = save(tmp_path / "grey.jpg", pixels[..., 0])
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(pixels).convert("CMYK").save(cmyk)
    palette = tmp_path / "palette.png"
    Image.fromarray(pixels).convert("P").save(palette)
    files = [grey, cmyk, palette]
    images = decode_images([read_bytes(p) for p in files], CPU, files)
    for path, image in zip(files, images):
        with Image.open(path) as reference:
            expected = torch.from_numpy(np.asarray(reference.convert("RGB")).copy()).permute(2, 0, 1)
        assert image.shape == (3, 12, 20) and image.dtype == torch.uint8
        assert (image.int() - expected.int()).abs().max() <= 1, path.name
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff" + b"not a jpeg" * 8)
    with pytest.raises(DataError, match=r"cannot read image .*bad.jpg.*replace or delete"):
        decode_images([read_bytes(grey), read_bytes(bad)], CPU, [grey, bad])


def test_photometrics_of_host_views_are_the_device_ops():
    """ViewMaker on HostViews runs the same photometric code as on in-memory images (only the crop moved)."""
    images = torch.randint(0, 256, (6, 3, SIZE, SIZE), dtype=torch.uint8)
    spec = ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.5, solarize_p=0.5)
    maker = ViewMaker([spec, spec], (0.5,) * 3, (0.25,) * 3, SIZE, clean=True)
    on_device = maker(images, torch.zeros(6), torch.arange(6), torch.Generator().manual_seed(1))
    on_host = maker(HostViews([images, images], images), torch.zeros(6), torch.arange(6), torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(on_device.crops, on_host.crops)) and torch.equal(on_device.clean, on_host.clean)


@pytest.mark.parametrize("method", ["simclr", "dae"])
def test_engine_trains_on_an_image_folder(tmp_path, method):
    for split, count in (("train", 4), ("val", 1)):
        for label in range(2):
            for i in range(count):
                save(tmp_path / "data" / split / f"c{label}" / f"{i}.jpg", marked(80 + 100 * label), quality=90)
    cfg = resolve_run_config({
        "method": {"name": method}, "dataset": {"name": "imagefolder", "root": str(tmp_path / "data"), "image_size": SIZE},
        "backbone": {"name": "small_cnn", "width": 8}, "batch_size": 4, "epochs": 1,
        "train": {"device": "cpu", "workers": 0, "checkpoint_every": 0, "progress": False, "knn_every": 1},
    })
    result = train(cfg, tmp_path / "run")
    [record] = result.history
    assert math.isfinite(record.loss) and record.images_per_s > 0 and 0 <= record.monitor.knn20_top1 <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA device")
def test_cuda_decode_matches_cpu_decode(marked_folder, tmp_path):
    cuda = torch.device("cuda")
    exif = Image.Exif()
    exif[0x0112] = 6
    files = [save(tmp_path / "rotated.jpg", marked(90), exif=exif, quality=95), save(tmp_path / "plain.jpg", marked(150), quality=95),
             *marked_folder.files]
    data = [read_bytes(p) for p in files]
    for gpu, cpu in zip(decode_images(data, cuda, files), decode_images(data, CPU, files)):
        assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
        assert (gpu.cpu().float() - cpu.float()).abs().mean() < 1.5
    folder = FolderSet("jpegs", files, torch.zeros(len(files), dtype=torch.long), ["x"], image_size=SIZE)
    plan = ViewMaker(build_recipe("simclr"), folder.mean, folder.std, SIZE, clean=True).plan(0, 0)
    [(gpu_views, _, _)] = list(iter_batches(folder, len(files), cuda, views=plan))
    [(cpu_views, _, _)] = list(iter_batches(folder, len(files), CPU, views=plan))
    assert gpu_views.clean.device.type == "cuda"
    for gpu, cpu in zip([*gpu_views.crops, gpu_views.clean], [*cpu_views.crops, cpu_views.clean]):
        assert gpu.shape == cpu.shape and (gpu.cpu().float() - cpu.float()).abs().mean() < 3


def test_bytes_left_for_the_device_decode_to_the_workers_batch(marked_folder):
    """The host half of the nvJPEG path (workers pack the bytes, the main process decodes and cuts), run on the CPU."""
    plan = ViewMaker(build_recipe("simclr"), marked_folder.mean, marked_folder.std, SIZE, clean=True).plan(0, 0)
    index = [2, 0, 3]
    in_workers, labels, idx = _FolderBatches(marked_folder, plan, decode=True).__getitems__(index)
    packed, _, same_idx = _FolderBatches(marked_folder, plan, decode=False).__getitems__(index)
    assert packed[0].ndim == 1 and packed[1].tolist() == [p.stat().st_size for p in (marked_folder.files[i] for i in index)]
    later = _decode_packed(marked_folder, packed, same_idx, CPU, plan)
    assert all(torch.equal(a, b) for a, b in zip([*in_workers.crops, in_workers.clean], [*later.crops, later.clean]))
