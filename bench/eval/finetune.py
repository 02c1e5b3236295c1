"""Fine-tuning protocol: the whole backbone plus a linear head, trained on a (fraction of the) labeled split.

Semi-supervised setting of SimCLR / BYOL / Barlow Twins / CorInfoMax (1% and 10% labels): SGD with momentum
0.9, separate learning rates for the backbone and the head, cosine decay, random-resized-crop + flip
augmentation, evaluated on clean (centre) test images. The ViT recipe of MAE / BEiT (``optimizer=adamw``,
``layer_decay``, ``exclude_bias_bn``) trains each block at a decayed lr: block i at lr x decay^(depth - i), the
embeddings at lr x decay^(depth + 1), the final norm at lr (MAE ``util/lr_decay.py``). Not reproduced: MAE's
mixup, cutmix, label smoothing, RandAugment and random erasing.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.core.cost import timed
from bench.data.base import ImageSet
from bench.data.folder import FolderSet
from bench.data.loader import epoch_permutation, iter_batches
from bench.data.views import ViewMaker, ViewSpec
from bench.eval.features import accuracy_metrics, check_labels, extract_features, topk_correct
from bench.errors import ConfigError
from bench.eval.fractions import class_balanced_subset
from bench.models.param_groups import no_decay_names, split_groups
from bench.schema import FROM_YAML, ConfigModel


class FinetuneConfig(ConfigModel):
    """Fine-tuning hyper-parameters.

    Defaults: 20 epochs, batch 256, backbone lr 0.005 and no weight decay as in CorInfoMax's semi-supervised
    protocol (``docs/corinfomax.md`` §4.2); head lr 0.5 is our choice for a cosine (not step) schedule.
    """

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(0.005, gt=0, description="backbone learning rate")
    head_lr: float = Field(0.5, gt=0, description="linear head learning rate")
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (momentum 0.9) or adamw (MAE's fine-tuning)")
    layer_decay: float | None = Field(None, gt=0, le=1, description="ViT layer-wise lr decay (MAE: 0.75 in the paper, "
                                      "0.65 in its repository for ViT-B); null: one lr for the backbone")
    exclude_bias_bn: bool = Field(False, description="no weight decay on biases, norms and a ViT's position embedding "
                                  "and class token (MAE / DeiT fine-tuning)")
    fraction: float = Field(1.0, gt=0, le=1, description="label fraction, class-balanced (0.01 = 1% protocol)")
    crop_scale: Annotated[tuple[float, float], FROM_YAML] = Field((0.08, 1.0), description="random-resized-crop area range")
    seed: int = 0

    @property
    def exclude_tokens(self) -> bool:
        return self.exclude_bias_bn


def _optimizer(net: nn.Module, head: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """The backbone's groups (layer-wise lr, weight-decay exclusions) and the head at ``head_lr``."""
    scales: dict[str, float] = {}
    if cfg.layer_decay is not None:
        if not hasattr(net, "layer_decay_scales"):
            raise ConfigError("eval.finetune.layer_decay: layer-wise lr decay needs a ViT backbone; drop it")
        scales = net.layer_decay_scales(cfg.layer_decay)
    groups = split_groups(net.named_parameters(), cfg, no_decay_names(net), lr_scale=lambda name, _: scales.get(name, 1.0))
    params = [{"params": g.params, "lr": cfg.lr * g.lr_scale, "weight_decay": g.weight_decay} for g in groups]
    params.append({"params": list(head.parameters()), "lr": cfg.head_lr, "weight_decay": cfg.weight_decay})
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params)
    return torch.optim.SGD(params, momentum=0.9)


@timed("finetune")
def finetune(
    backbone: nn.Module,
    train_split: ImageSet,
    test_split: ImageSet | FolderSet,
    num_classes: int,
    cfg: FinetuneConfig,
    device: torch.device,
) -> dict[str, float]:
    """Fine-tune a copy of ``backbone`` (the caller's is untouched); return ``{"finetune.top1", "finetune.top5"}``.

    Top-5 is reported only with more than 5 classes.
    """
    check_labels(train_split.labels, num_classes, f"fine-tuning split {train_split.name}")
    train = train_split.subset(class_balanced_subset(train_split.labels, cfg.fraction, cfg.seed))
    net = copy.deepcopy(backbone).to(device).train()
    head = nn.Linear(net.out_dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(cfg.seed)) * 0.01)
        head.bias.zero_()
    head = head.to(device)
    opt = _optimizer(net, head, cfg)
    # drop_last keeps every batch >= 2 samples (BatchNorm on 1x1 maps needs it); small sets get one batch.
    batch_size = min(cfg.batch_size, len(train))
    steps = len(train) // batch_size
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / (cfg.epochs * steps))))
    maker = ViewMaker(
        [ViewSpec(scale=cfg.crop_scale, flip_p=0.5, jitter_p=0, gray_p=0)],
        train.mean,
        train.std,
        train.image_size,
        clean=False,
    )
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        order = epoch_permutation(len(train), cfg.seed, epoch)
        for images, labels, index in iter_batches(train, batch_size, device, order=order, drop_last=True):
            x = maker(images, labels, index, g).crops[0]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = head(net(x))
            loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    logits, labels = extract_features(nn.Sequential(net, head), test_split, device)
    check_labels(labels, num_classes, f"fine-tuning test split {test_split.name}")
    return accuracy_metrics("finetune", topk_correct(logits, labels, (1, 5)), labels.numel(), num_classes)
