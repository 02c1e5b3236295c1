"""COCO box and mask AP with pycocotools' COCOeval, and torchvision detector outputs as COCO results."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.errors import ConfigError

IouType = Literal["bbox", "segm"]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six entries of COCOeval.stats


class NoPredictionsWarning(UserWarning):
    """A detector predicted nothing on the evaluation set; its APs are recorded as 0."""


def coco_evaluate(coco_gt: COCO, predictions: list[dict], iou_types: Sequence[IouType] = ("bbox", "segm")) -> dict[str, float]:
    """``<iou_type>.<metric>`` for every metric of METRICS, as fractions in [0, 1], over every image of ``coco_gt``.

    ``predictions`` are COCO result dicts (image_id, category_id, score, bbox [x, y, w, h] and, for ``segm``, an
    RLE ``segmentation``). Box AP reads only the boxes and mask AP only the masks (so object sizes are mask areas).
    No predictions give AP 0 and a NoPredictionsWarning. A metric whose area range holds no ground-truth object
    (COCOeval's -1, e.g. APl on small images) is left out: it is undefined for the data, and a NaN would show as a
    missing value in MLflow and the tables.
    """
    if not predictions:
        warnings.warn(NoPredictionsWarning("the detector made no prediction on the evaluation images: every AP is 0 "
                                           "(train longer, or check that the training set has annotations)"), stacklevel=2)
    scores = {}
    for iou_type in iou_types:
        unused = "segmentation" if iou_type == "bbox" else "bbox"
        results = [{key: value for key, value in p.items() if key != unused} for p in predictions]
        if iou_type == "segm" and any("segmentation" not in r for r in results):
            raise ConfigError(
                "mask AP ('segm') needs a 'segmentation' in every prediction, i.e. a detector with a mask head; "
                "evaluate a box-only detector with iou_types=('bbox',)"
            )
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and summary table
            evaluator = COCOeval(coco_gt, _results_api(coco_gt, results), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        scores.update({f"{iou_type}.{name}": float(value) for name, value in zip(METRICS, evaluator.stats) if value >= 0})
    return scores


def _results_api(coco_gt: COCO, results: list[dict]) -> COCO:
    """The pycocotools index of ``results`` (``loadRes`` cannot take an empty list)."""
    if results:
        return coco_gt.loadRes(results)
    empty = COCO()
    empty.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    empty.createIndex()
    return empty


def to_coco_results(
    outputs: Sequence[Mapping[str, torch.Tensor]],
    image_ids: Sequence[int],
    category_ids: Sequence[int],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """COCO result dicts from torchvision detector outputs, one output per image of ``image_ids``.

    An output has ``boxes`` (N, 4) x1, y1, x2, y2, ``labels`` (N,) contiguous 1..K (``category_ids[label - 1]`` is
    the COCO category id), ``scores`` (N,) and optionally ``masks`` (N, 1, H, W) probabilities, which become RLE
    masks of the pixels above ``mask_threshold``.
    """
    results = []
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = output["boxes"].detach().cpu().double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        labels, scores = output["labels"].tolist(), output["scores"].tolist()
        masks = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8) if "masks" in output else None
        for i, (box, label, score) in enumerate(zip(xywh, labels, scores, strict=True)):
            result = {"image_id": int(image_id), "category_id": category_ids[label - 1], "bbox": box, "score": score}
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[i]))
                result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            results.append(result)
    return results
