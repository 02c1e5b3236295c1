"""``linear_aug``: linear heads on the frozen backbone's features of freshly augmented images (the offline protocol).

solo-learn, lightly, MoCo v3, SimCLR and MAE train their linear probe on RandomResizedCrop(scale 0.08-1) +
horizontal-flip views drawn anew every step, the backbone frozen in eval mode (BN statistics fixed) and run
without gradients. Here the lr is a grid of heads trained at once (``bench.eval.heads``) and chosen on the
clean validation features; the chosen head is scored on test as it is (DINOv2: no refit, a refit would cost
the whole protocol again). The optimizer, epochs, batch and schedule come from a named preset of the paper;
``batch_norm`` puts MAE's BatchNorm1d(affine=False) before the heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import torch
from pydantic import ConfigDict, Field
from torch import nn

from bench.core.cost import timed
from bench.data.augment import normalize
from bench.data.base import ImageSet
from bench.data.folder import FolderSet
from bench.data.loader import epoch_permutation, iter_batches
from bench.data.views import ViewSpec, make_view
from bench.errors import ConfigError
from bench.eval.features import Choice, Features, evaluated
from bench.eval.heads import HeadRecipe, Optimizer, Schedule, train_heads
from bench.schema import FROM_YAML, ConfigModel
from bench.eval.linear import DINOV2_LRS, SOLO_LEARN_LRS, LrGrid, WdGrid, head_accuracy, pick_head, scaled_grid, val_metrics

#: a batch of the train split's uint8 images (B, C, H, W) on the device -> normalised augmented views (B, C, S, S),
#: all randomness from the generator
AugmentBatch = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Preset(ConfigModel):
    """A paper's linear-evaluation recipe (its lr is replaced by the validation-selected grid unless ``lrs`` is set)."""

    model_config = ConfigDict(frozen=True)

    optimizer: Optimizer
    batch_size: int
    epochs: int
    schedule: Schedule
    lr: float = Field(description="the paper's base lr at batch 256 (give lrs: [lr] to use it alone)")
    warmup_epochs: int = 0
    milestones: tuple[float, ...] = ()
    batch_norm: bool = False


PRESETS: dict[str, Preset] = {
    # solo-learn scripts/linear/imagenet-100/*.yaml: SGD 0.9, batch 256, 100 epochs, lr x0.1 at epochs 60 and 80, wd 0
    "solo_imagenet": Preset(optimizer="sgd", batch_size=256, epochs=100, schedule="step", milestones=(0.6, 0.8), lr=0.1),
    # lightly benchmarks/imagenet/resnet50/linear_eval.py ("parameters follow SimCLR"): SGD 0.9, 90 epochs, cosine
    "lightly_simclr": Preset(optimizer="sgd", batch_size=256, epochs=90, schedule="cosine", lr=0.1),
    # MoCo v3 main_lincls.py: SGD 0.9, batch 1024, 90 epochs, cosine stepped per epoch, wd 0
    "mocov3": Preset(optimizer="sgd", batch_size=1024, epochs=90, schedule="cosine_epoch", lr=0.1),
    # MAE main_linprobe.py: LARS, BatchNorm1d(affine=False) before the head, 10 warm-up epochs, 90 epochs, batch 16384
    "mae": Preset(optimizer="lars", batch_size=16384, epochs=90, schedule="cosine", warmup_epochs=10, lr=0.1, batch_norm=True),
}


class LinearAugConfig(ConfigModel):
    """The offline augmented probe: a preset, optionally overridden, with an lr grid chosen on validation."""

    name: Literal["linear_aug"] = "linear_aug"
    preset: Literal["solo_imagenet", "lightly_simclr", "mocov3", "mae"] = "lightly_simclr"
    epochs: int | None = Field(None, ge=1, description="null: the preset's")
    batch_size: int | None = Field(None, ge=1, description="null: the preset's (capped at the train split's size)")
    lrs: LrGrid = Field(default_factory=lambda: [*DINOV2_LRS, *SOLO_LEARN_LRS],
                             description="base lrs at batch 256, scaled by the batch used; [lr] for one literal lr")
    weight_decays: WdGrid = Field(default_factory=lambda: [0.0], description="crossed with lrs")
    batch_norm: bool | None = Field(None, description="BatchNorm1d(affine=False) before the heads (null: the preset's)")
    crop_scale: Annotated[tuple[float, float], FROM_YAML] = Field((0.08, 1.0), description="RandomResizedCrop area range")
    seed: int = 0

    def recipe(self) -> HeadRecipe:
        p = PRESETS[self.preset]
        return HeadRecipe(epochs=self.epochs or p.epochs, optimizer=p.optimizer, schedule=p.schedule,
                          warmup_epochs=p.warmup_epochs, milestones=p.milestones,
                          batch_norm=p.batch_norm if self.batch_norm is None else self.batch_norm, seed=self.seed)

    def batch(self, n: int) -> int:
        return min(self.batch_size or PRESETS[self.preset].batch_size, n)


def rrc_flip(mean: tuple[float, ...], std: tuple[float, ...], size: int, scale: tuple[float, float]) -> AugmentBatch:
    """RandomResizedCrop(size, scale, ratio 3/4-4/3) + flip (p 0.5) on the device, as ``bench.data.augment`` draws them."""
    spec = ViewSpec(scale=scale, flip_p=0.5, jitter_p=0.0, gray_p=0.0)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)

    def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = images.float().div_(255)
        return normalize(make_view(x, spec, size, generator), m.to(x.device), s.to(x.device))

    return augment


def train_views(images: ImageSet | FolderSet, cfg: LinearAugConfig) -> AugmentBatch:
    """The augmentation of ``images``' training batches. The seam for image folders: their loader must hand over
    RandomResizedCrops of the full decoded image (a crop of today's centre square is not the recipe)."""
    if isinstance(images, FolderSet):
        raise ConfigError("eval.probes: linear_aug does not run on image folders yet (their training views must be "
                          "cropped from the full decoded image); use the cached probes [logreg, linear] there")
    return rrc_flip(images.mean, images.std, images.image_size, cfg.crop_scale)


@timed("linear_aug")
def select_linear_aug(backbone: nn.Module, images: ImageSet | FolderSet, val: Features, num_classes: int,
                      cfg: LinearAugConfig, device: torch.device, augment: AugmentBatch | None = None) -> Choice:
    """Train the lr grid on augmented views of ``images`` (labelled train) through the frozen ``backbone``, choose the
    head by top-1 on the clean validation features ``val``. The backbone's train/eval modes are restored after."""
    augment = augment or train_views(images, cfg)
    recipe = cfg.recipe()
    batch = cfg.batch(len(images))
    grid = scaled_grid(cfg.lrs, cfg.weight_decays, batch)
    steps = len(images) // batch if recipe.batch_norm else math.ceil(len(images) / batch)  # BN needs full batches
    features = evaluated(backbone)  # the validation features' forward
    generator = torch.Generator(device=device).manual_seed(cfg.seed)

    def batches(epoch: int):
        order = epoch_permutation(len(images), cfg.seed, epoch)
        for x, y, _ in iter_batches(images, batch, device, order=order, drop_last=recipe.batch_norm):
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                f = features(augment(x, generator))
            yield f.float(), y

    modes = [(m, m.training) for m in backbone.modules()]
    backbone.eval()
    try:
        heads = train_heads(batches, steps, val.x.shape[1], num_classes, grid, recipe, device)
    finally:
        for module, mode in modes:
            module.training = mode
    accuracy = head_accuracy(heads, val.x, val.y)
    g = pick_head(heads, accuracy, "linear_aug probe")
    lr, wd = grid[g]
    return Choice({"lr": lr, "wd": wd}, val_metrics(accuracy[g], num_classes), heads.head(g))
