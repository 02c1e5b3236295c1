"""Image sizes of detection fine-tuning: the protocol's, or the images' own when they are far smaller.

The COCO protocols resize the shorter side to 640..800 px (test: 800) with the longer side capped at 1333.
Images far smaller than that (the 64 px synthetic shapes, thumbnails) would be blown up more than tenfold,
which costs memory and time and teaches nothing, so with such data every size left unset follows the images:
training and test at the largest shorter side of the images, the cap at their largest longer side (no image
is resized then, unless the images of a set differ in size; see ``resolve_sizes``). "Far smaller" means a
largest shorter side of at most ``FAR_SMALLER`` times the protocol's smallest training size; COCO (480-640 px
images) and VOC keep the protocol's sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pycocotools.coco import COCO

#: images whose largest shorter side is at most this fraction of the protocol's smallest training size follow
#: their own size (COCO's largest shorter side, 640 px, is 1.0 of the protocol's 640)
FAR_SMALLER = 0.5
#: both backends pad a batch to a multiple of 32 px (the FPN's coarsest stride)
PAD = 32


@dataclass(frozen=True)
class Sizes:
    """Shorter-side training sizes (one picked per batch), the longer-side cap, the shorter-side test size."""

    min_sizes: tuple[int, ...]
    max_size: int
    test_size: int


def _extent(coco: COCO) -> tuple[int, int]:
    """(largest shorter side, largest longer side) of the images an annotation file lists."""
    sides = [(min(i["width"], i["height"]), max(i["width"], i["height"])) for i in coco.imgs.values()]
    return max((s for s, _ in sides), default=0), max((lg for _, lg in sides), default=0)


def follows_images(protocol: Sizes, train: COCO, val: COCO) -> bool:
    """True when the images of both splits are far smaller than the protocol's sizes (see the module doc)."""
    shorter = max(_extent(train)[0], _extent(val)[0])
    return 0 < shorter <= FAR_SMALLER * min(protocol.min_sizes)


def resolve_sizes(protocol: Sizes, train: COCO, val: COCO, *, min_sizes: list[int] | None = None,
                  max_size: int | None = None, test_size: int | None = None) -> Sizes:
    """The sizes of one fine-tuning: each one given here as is, each one left None the protocol's, or the images'.

    Following the images (``follows_images``) with S and L the largest shorter and longer sides of both splits:
    training at S, testing at the largest training size, the longer side capped at the largest size times L / S,
    so that a training or test size set alone scales the images without distorting the cap.
    """
    if not follows_images(protocol, train, val):
        return Sizes(tuple(min_sizes) if min_sizes is not None else protocol.min_sizes,
                     max_size if max_size is not None else protocol.max_size,
                     test_size if test_size is not None else protocol.test_size)
    (train_short, train_long), (val_short, val_long) = _extent(train), _extent(val)
    shorter, longer = max(train_short, val_short), max(train_long, val_long)
    train_sizes = tuple(min_sizes) if min_sizes is not None else (shorter,)
    test = test_size if test_size is not None else max(train_sizes)
    cap = max_size if max_size is not None else math.ceil(max(*train_sizes, test) * longer / shorter)
    return Sizes(train_sizes, cap, test)


def resized(width: int, height: int, size: int, max_size: int) -> tuple[int, int]:
    """(width, height) of an image resized to shorter side ``size`` with the longer side capped at ``max_size``."""
    scale = size / min(width, height)
    if max(width, height) * scale > max_size:
        scale = max_size / max(width, height)
    return round(width * scale), round(height * scale)


def largest_input(coco: COCO, sizes: Sizes) -> int:
    """Pixels of the largest padded training input one image of ``coco`` becomes (at the largest training size)."""
    largest = 0
    for image in coco.imgs.values():
        w, h = resized(image["width"], image["height"], max(sizes.min_sizes), sizes.max_size)
        largest = max(largest, math.ceil(w / PAD) * PAD * math.ceil(h / PAD) * PAD)
    return largest
