"""Image files to uint8 RGB tensors: JPEGs in batches (nvJPEG on a CUDA device), anything else with PIL.

``decode_images`` is the one place that calls a decoder, so a switch to TorchCodec stays local. EXIF
orientation is read from the file's header on the host and applied to the decoded tensor (by the same code on
CPU and CUDA: torchvision applies it only in its CPU decoder).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from bench.errors import DataError

JPEG_MAGIC = b"\xff\xd8\xff"
ORIENTATION_TAG = 0x0112  # EXIF "Orientation", 1..8


def read_bytes(path: Path) -> torch.Tensor:
    """The file's bytes as a uint8 (N,) tensor (what the decoders take)."""
    try:
        return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    except OSError as err:
        raise DataError(f"cannot read image {path} ({err}); replace or delete that file") from err


def read_rgb(path: Path) -> Image.Image:
    """Open an image file as RGB as stored (no EXIF orientation); an unreadable file raises a DataError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image {path} ({err}); replace or delete that file") from err


def is_jpeg(data: torch.Tensor) -> bool:
    return bytes(data[:3].tolist()) == JPEG_MAGIC


def exif_orientation(data: torch.Tensor) -> int:
    """The EXIF orientation (1..8; 1 when absent or unreadable), parsed from the header without decoding."""
    try:
        with Image.open(io.BytesIO(data.numpy())) as image:
            value = image.getexif().get(ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):
        return 1
    return value if value in range(1, 9) else 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF ``orientation`` to a (C, H, W) tensor as PIL's ``ImageOps.exif_transpose`` does.

    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise.
    """
    if orientation in (5, 7):
        image = image.transpose(-2, -1)
    quarter_turns = {3: 2, 6: -1, 7: 2, 8: 1}.get(orientation, 0)  # counter-clockwise, as torch.rot90
    if quarter_turns:
        image = torch.rot90(image, quarter_turns, dims=(-2, -1))
    if orientation == 2:
        image = image.flip(-1)
    elif orientation == 4:
        image = image.flip(-2)
    return image


def decode_pil(data: torch.Tensor, name: object) -> torch.Tensor:
    """Decode any format PIL reads into uint8 RGB (3, H, W), EXIF orientation applied."""
    try:
        with Image.open(io.BytesIO(data.numpy())) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {name} ({err}); replace or delete that file") from err
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # torchvision >= 0.29 warns that its decoders are deprecated for TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_images(data: Sequence[torch.Tensor], device: torch.device, names: Sequence[object]) -> list[torch.Tensor]:
    """Decode encoded images (uint8 1-D CPU tensors) into uint8 RGB (3, H, W) tensors on ``device``.

    JPEGs are decoded as one batch by torchvision (libjpeg-turbo on CPU, nvJPEG on CUDA); a batch the decoder
    refuses (a damaged file, a colour space nvJPEG lacks) is retried image by image, and whatever it still refuses, like every
    non-JPEG file, is decoded by PIL on the host. ``names`` (one per image) name a file that cannot be read.
    """
    out: list[torch.Tensor | None] = [None] * len(data)
    jpegs = [i for i, d in enumerate(data) if is_jpeg(d)]
    if jpegs:
        try:
            decoded = _decode_jpegs([data[i] for i in jpegs], device)
        except RuntimeError:
            decoded = [_decode_one(data[i], device) for i in jpegs]
        for i, image in zip(jpegs, decoded):
            if image is not None:
                out[i] = orient(image, exif_orientation(data[i]))
    return [image if image is not None else decode_pil(d, name).to(device) for image, d, name in zip(out, data, names)]


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return _decode_jpegs([data], device)[0]
    except RuntimeError:
        return None
