"""MAE: patchify, masking and the loss against transcriptions of the official code (facebookresearch/mae,
models_mae.py: ``patchify``, ``random_masking``, ``forward_loss``), the masked-patch property, and the command
of the issue's acceptance at tiny scale."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.config import resolve_run_config
from bench.data.registry import DatasetConfig, load_dataset
from bench.data.views import Views
from bench.methods.mae import mae_loss, patchify, random_masking
from bench.train.engine import build_method
from method_checks import forward_backward


def official_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """models_mae.py ``patchify`` (its 3 channels written as C)."""
    c = imgs.shape[1]
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], c, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * c))


def official_forward_loss(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, p: int, norm_pix_loss: bool) -> torch.Tensor:
    """models_mae.py ``forward_loss``."""
    target = official_patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
    return (loss * mask).sum() / mask.sum()  # mean loss on removed patches


def official_random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """models_mae.py ``random_masking`` with its ``torch.rand`` noise passed in."""
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], device=x.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_is_the_official_one(channels):
    imgs = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(patchify(imgs, 4), official_patchify(imgs, 4))
    assert patchify(imgs, 4).shape == (2, 4, 16 * channels)
    assert torch.equal(patchify(imgs, 4)[0, 1, :channels], imgs[0, :, 0, 4])  # patch (row 0, col 1), its first pixel


def test_random_masking_is_the_official_one():
    g = torch.Generator().manual_seed(1)
    x, noise = torch.randn(3, 64, 5, generator=g), torch.rand(3, 64, generator=g)
    keep, mask, restore = random_masking(noise, 0.75)
    want_x, want_mask, want_restore = official_random_masking(x, 0.75, noise)
    assert keep.shape == (3, 16) and torch.equal(mask, want_mask) and torch.equal(restore, want_restore)
    assert torch.equal(torch.gather(x, 1, keep[..., None].expand(-1, -1, 5)), want_x)
    assert (mask.sum(1) == 48).all() and (mask.gather(1, keep) == 0).all()
    assert torch.equal(torch.argsort(noise, dim=1).gather(1, restore), torch.arange(64).expand(3, 64))  # restore inverts


@pytest.mark.parametrize("norm_pix", [True, False])
def test_the_loss_and_its_gradient_equal_the_official_forward_loss(norm_pix):
    g = torch.Generator().manual_seed(2)
    imgs = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    pred = torch.randn(2, 4, 48, generator=g, dtype=torch.float64, requires_grad=True)
    _, mask, _ = random_masking(torch.rand(2, 4, generator=g, dtype=torch.float64), 0.5)
    got = mae_loss(pred, patchify(imgs, 4), mask, norm_pix)
    (grad,) = torch.autograd.grad(got, pred)
    want = official_forward_loss(imgs, pred, mask, 4, norm_pix)
    (want_grad,) = torch.autograd.grad(want, pred)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


def test_visible_patches_carry_no_loss():
    g = torch.Generator().manual_seed(3)
    target, pred = torch.randn(2, 16, 12, generator=g), torch.randn(2, 16, 12, generator=g)
    _, mask, _ = random_masking(torch.rand(2, 16, generator=g), 0.75)
    visible = mask == 0
    moved = pred.clone()
    moved[visible] += 100.0
    assert mae_loss(moved, target, mask, True) == mae_loss(pred, target, mask, True)
    pred.requires_grad_(True)
    mae_loss(pred, target, mask, True).backward()
    assert (pred.grad[visible] == 0).all() and (pred.grad[~visible].abs().sum(-1) > 0).all()


def _mae(**params):
    cfg = resolve_run_config({"method": {"name": "mae", "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, **params},
                              "backbone": {"name": "vit", "embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8}})
    return build_method(cfg, load_dataset(DatasetConfig(name="shapes", n_train=16, n_test=10)))


def test_the_encoder_sees_only_the_visible_patches():
    method = _mae().eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    keep, mask, _ = random_masking(method._noise(2, 16, 0, images.device), 0.75)
    latent = method.encode_visible(images, keep)
    assert latent.shape == (2, 1 + 4, 16)
    removed = mask.view(2, 1, 4, 4).repeat_interleave(8, 2).repeat_interleave(8, 3).expand(-1, 3, -1, -1).bool()
    noisy = images + 10 * removed * torch.randn_like(images)
    torch.testing.assert_close(method.encode_visible(noisy, keep), latent)


def test_a_training_step_masks_three_quarters_with_a_stream_of_the_run():
    method = _mae()
    crops = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))]
    out = forward_backward(method, Views(crops, None, torch.zeros(4, dtype=torch.long), torch.arange(4)))
    assert out.logs["masked"] == 0.75 and out.loss > 0.5
    assert torch.equal(method._noise(4, 16, 7, torch.device("cpu")), method._noise(4, 16, 7, torch.device("cpu")))
    assert not torch.equal(method._noise(4, 16, 7, torch.device("cpu")), method._noise(4, 16, 8, torch.device("cpu")))
    state = method.state_dict()
    other = _mae()
    other.load_state_dict(state)
    assert other.mask_seed == method.mask_seed  # resumes the same masks


def test_the_acceptance_command_trains_mae_on_a_vit_tiny_and_probes_it_as_mae_does(tmp_path):
    """Issue 17's command, evaluated with MAE's linear probe too: linear_aug's mae preset (BatchNorm1d before the head,
    LARS) on augmented views through the frozen encoder, one epoch."""
    out = tmp_path / "run"
    probe = "{name: linear_aug, preset: mae, epochs: 1, batch_size: 8, lrs: [0.1], crop_scale: [0.2, 1.0]}"
    assert main(["train", "--method", "mae", "--dataset", "shapes", "--set", "backbone.name=vit_tiny", "backbone.patch_size=4",
                 "epochs=1", "dataset.n_train=32", "dataset.n_test=20", "batch_size=32", "method.decoder_depth=1",
                 "train.progress=false", f"eval.probes=[{probe}]", "--out", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["config"]["backbone"]["image_size"] == 32 and report["metrics"]["knn20.top1"] >= 0
    assert report["config"]["eval"]["probes"][0]["preset"] == "mae" and 0 <= report["metrics"]["linear_aug.top1"] <= 1
