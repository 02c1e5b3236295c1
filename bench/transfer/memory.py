"""Before a detection cell starts: does one training iteration fit the device's memory?

The estimate is linear in what drives a detector's activation memory:
``base + images * (per_pixel * pixels + per_roi * rois)``, where ``pixels`` is the largest padded input one
training image becomes (bench.transfer.sizes.largest_input) and ``rois`` the proposals sampled per image for the
ROI heads. The constants of each model were fitted to the peak resident memory of two training iterations
(batch 2, Mask R-CNN, float32, one thread) on the project's 2-core CPU machine, measured as ``ru_maxrss`` minus
the resident memory before the detector was built (the calibration sampled the synthetic shapes resized to
the sizes below): per_pixel from 256 and 512 px square inputs at 64 ROIs per image, per_roi from 64 and 512
ROIs at 256 px, base what is left at 256 px and 64 ROIs (weights, gradients, momentum, framework buffers).
On CUDA the CPU estimate is scaled by ``CUDA_SCALE``: detectron2's model zoo reports 3.4 GB of training memory
for Mask R-CNN R50-FPN 1x at 2 images per GPU (float32, COCO), where these constants give 5.8 GB (two 1088x800
inputs, 512 ROIs each); bf16 autocast (torchvision backend) needs less still, so there the estimate errs high.
A configuration is refused only when the estimate exceeds the device's free memory; one that passes may still
run out where other processes take memory meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.errors import ConfigError

GIB = 2**30
#: CUDA memory of a training iteration / the CPU-calibrated estimate (3.4 GB measured by detectron2 / 5.8 GB, above)
CUDA_SCALE = 0.6


@dataclass(frozen=True)
class Footprint:
    """Memory of one training iteration of a detector, in bytes."""

    base: float  # weights, gradients, optimizer state and framework buffers
    per_pixel: float  # per padded input pixel of each image
    per_roi: float  # per sampled region of interest of each image


FOOTPRINTS = {
    # torchvision backend: Mask R-CNN with FPN on these trunks (2-layer MLP box head)
    "resnet18": Footprint(base=463e6, per_pixel=968, per_roi=89e3),
    "resnet34": Footprint(base=529e6, per_pixel=1261, per_roi=149e3),
    "resnet50": Footprint(base=604e6, per_pixel=2467, per_roi=104e3),
    # detectron2 backend: MoCo's R50-C4 (res5 runs on every ROI: 6 MB each) and R50-FPN (4-conv normalised box head)
    "detectron2_c4": Footprint(base=531e6, per_pixel=2269, per_roi=6137e3),
    "detectron2_fpn": Footprint(base=766e6, per_pixel=2595, per_roi=524e3),
}


def training_bytes(model: str, images: int, pixels: int, rois: int) -> float:
    """Estimated peak memory of one training iteration of ``images`` inputs of ``pixels`` each, ``rois`` ROIs per image."""
    f = FOOTPRINTS[model]
    return f.base + images * (f.per_pixel * pixels + f.per_roi * rois)


def _cgroup_room() -> int | None:
    """Bytes the cgroup v2 memory limit of this process leaves, or None without a limit."""
    limit, current = Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")
    try:
        text = limit.read_text().strip()
        return None if text == "max" else int(text) - int(current.read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: CUDA's free device memory, or the RAM the kernel (and a cgroup limit) leaves;
    None where it cannot be read (then nothing is refused)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        lines = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(lines["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    room = _cgroup_room()
    return free if room is None else min(free, room)


def require_fit(model: str, images: int, pixels: int, rois: int, device: torch.device, fix: str) -> None:
    """ConfigError with the numbers when the estimate of one training iteration exceeds ``device``'s free memory."""
    need = training_bytes(model, images, pixels, rois) * (CUDA_SCALE if device.type == "cuda" else 1.0)
    free = available_bytes(device)
    if free is not None and need > free:
        where = "free CUDA" if device.type == "cuda" else "available RAM"
        raise ConfigError(
            f"detection training would need about {need / GIB:.1f} GiB ({images} images of up to {pixels / 1e6:.2f} Mpx "
            f"and {rois} ROIs each, {model}; bench/transfer/memory.py), but only {free / GIB:.1f} GiB of {where} "
            f"is there: {fix}")
