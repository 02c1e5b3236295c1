"""The probe protocols against independent computations: logreg vs scikit-learn, the lr grid chosen on val, the
multi-head grid vs single heads, linear_aug's frozen backbone, the schedules of the presets."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from bench.data.base import ImageSet
from bench.data.folder import FolderSet
from bench.errors import ConfigError
from bench.eval.features import Features, score, standardizer
from bench.eval.heads import HeadRecipe, lr_factor
from bench.eval.linear import LinearConfig, fit_heads, select_linear
from bench.eval.linear_aug import LinearAugConfig, select_linear_aug
from bench.eval.logreg import C_GRID, LogRegConfig, select_logreg
from bench.models.backbones import SmallCNN

CPU = torch.device("cpu")


def blobs(n: int, d: int, classes: int, seed: int, spread: float) -> Features:
    """Gaussian blobs around fixed centres (one per class; not seed 0, the heads' initial draw)."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return Features(centres[y] + spread * torch.randn(n, d, generator=g), y)


# --- logreg --------------------------------------------------------------------------------------------------------


def test_c_grid_is_dinov2s_literal():
    assert len(C_GRID) == 45
    assert C_GRID[0] == pytest.approx(1e-6) and C_GRID[-1] == pytest.approx(1e5)
    assert all(b / a == pytest.approx(10**0.25) for a, b in zip(C_GRID, C_GRID[1:]))


@pytest.fixture(scope="module")
def logreg_sets():
    """2,500 train / 500 val / 1,000 test overlapping 64-d blobs of 10 classes, and the logreg choice on them."""
    train, val, test = blobs(2500, 64, 10, 1, 3.0), blobs(500, 64, 10, 2, 3.0), blobs(1000, 64, 10, 3, 3.0)
    return train, val, test, select_logreg(train, val, 10, LogRegConfig(), refit_on=train.cat(val))


def test_logreg_matches_scikit_learn_at_the_chosen_c(logreg_sets):
    train, val, test, choice = logreg_sets
    fit = train.cat(val)  # the refit: train + val, standardised with their statistics
    standardize = standardizer(fit.x, dtype=torch.float64)
    sk = LogisticRegression(C=choice.params["C"], solver="lbfgs", max_iter=1000).fit(standardize(fit.x).numpy(), fit.y.numpy())
    sk_top1 = float((sk.predict(standardize(test.x).numpy()) == test.y.numpy()).mean())
    ours = score(choice.classifier, test, "logreg", 10)["logreg.top1"]
    assert abs(ours - sk_top1) <= 0.01, (ours, sk_top1)
    assert 0.5 < ours < 0.95  # overlapping blobs: neither trivial nor chance
    assert choice.params["fit_n"] == 3000 and 1e-6 < choice.params["C"] < 1e5


def test_logreg_is_deterministic_and_chooses_c_on_val(logreg_sets):
    train, val, test, choice = logreg_sets
    again = select_logreg(train, val, 10, LogRegConfig(), refit_on=train.cat(val))
    assert again.params == choice.params and again.val == choice.val
    assert torch.equal(again.classifier(test.x), choice.classifier(test.x))
    # every C of the sweep, scored on val by a fit on train alone: the choice is the first best of them
    full = select_logreg(train, val, 10, LogRegConfig(patience=None), refit_on=None)
    assert full.params["swept"] == 45 and full.params["C"] == choice.params["C"]
    assert full.val["top1"] == choice.val["top1"]


# --- linear: the multi-head grid -----------------------------------------------------------------------------------


def test_grid_heads_train_exactly_as_single_heads():
    feats = blobs(300, 8, 4, 5, 1.0)
    cfg = LinearConfig(epochs=3, batch_size=64, lrs=[0.01, 0.5], weight_decays=[0.0, 1e-3])
    grid = cfg.grid(len(feats))
    heads, _ = fit_heads(feats, 4, grid, cfg)
    for g, point in enumerate(grid):
        alone, _ = fit_heads(feats, 4, [point], cfg)
        torch.testing.assert_close(heads.weights[g], alone.weights[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(heads.biases[g], alone.biases[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(heads.weights[0], heads.weights[3])


def test_linear_grid_chooses_on_val_where_test_would_choose_otherwise():
    """Val is labelled by what the head of the tiny lr predicts, test by the truth: the val-best head (tiny lr) is
    chosen and scored, though the large lr's head is far better on test."""
    train, points = blobs(400, 8, 4, 5, 0.5), blobs(400, 8, 4, 6, 0.5)
    cfg = LinearConfig(epochs=5, batch_size=64, lrs=[1e-9, 1.0], refit=False)
    heads, standardize = fit_heads(train, 4, cfg.grid(len(train)), cfg)
    with torch.no_grad():
        tiny, large = heads(standardize(points.x)).argmax(dim=2)
    val, test = Features(points.x[:200], tiny[:200]), Features(points.x[200:], points.y[200:])
    assert (large[200:] == test.y).double().mean() > 0.9 > (tiny[200:] == test.y).double().mean() + 0.3
    choice = select_linear(train, val, 4, cfg, refit_on=None)
    assert choice.params["lr"] == pytest.approx(1e-9 * 64 / 256) and choice.val["top1"] == 1.0
    assert score(choice.classifier, test, "linear", 4)["linear.top1"] == pytest.approx(float((tiny[200:] == test.y).double().mean()))
    refitted = select_linear(train, val, 4, cfg.model_copy(update={"refit": True}), refit_on=train.cat(val))
    assert refitted.params == choice.params  # the refit keeps the (lr, wd) chosen on val


def test_a_diverged_head_is_dropped_and_all_diverged_fails():
    train, val = blobs(200, 8, 4, 5, 0.5), blobs(100, 8, 4, 6, 0.5)
    train = Features(train.x * 1e3, train.y)  # raw, large features: the huge lr's logits overflow
    cfg = LinearConfig(epochs=2, batch_size=50, lrs=[1e-6, 1e38], standardize=False, refit=False)
    heads, _ = fit_heads(train, 4, cfg.grid(len(train)), cfg)
    assert heads.finite.tolist() == [True, False]
    assert select_linear(train, val, 4, cfg, None).params["lr"] == pytest.approx(1e-6 * 50 / 256)
    with pytest.raises(ConfigError, match="non-finite"):
        select_linear(train, val, 4, cfg.model_copy(update={"lrs": [1e38]}), None)


def test_probe_schedules_of_the_presets():
    solo = HeadRecipe(epochs=100, schedule="step", milestones=(0.6, 0.8))
    assert [lr_factor(solo, s, 1000, 10) for s in (0, 599, 600, 799, 800)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    moco = HeadRecipe(epochs=4, schedule="cosine_epoch")
    assert [lr_factor(moco, s, 40, 10) for s in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.5 * (1 + math.cos(math.pi / 4)), 0.5])
    mae = HeadRecipe(epochs=12, schedule="cosine", warmup_epochs=2)
    assert [lr_factor(mae, s, 120, 10) for s in (0, 5, 20, 70)] == pytest.approx([0, 0.25, 1, 0.5])


# --- linear_aug ----------------------------------------------------------------------------------------------------


class Watched(nn.Module):
    """A backbone that records, at every forward, whether it was in training mode and whether autograd was on."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, any(m.training for m in self.net.modules()), torch.is_grad_enabled()))
        return self.net(x)


def test_linear_aug_keeps_the_backbone_frozen_in_eval_mode():
    torch.manual_seed(0)
    net = SmallCNN(3, width=4)
    backbone = Watched(net).train()
    g = torch.Generator().manual_seed(0)
    images = ImageSet("t", torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(64) % 4,
                      list("abcd"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    val = Features(torch.randn(20, net.out_dim, generator=g), torch.arange(20) % 4)
    cfg = LinearAugConfig(preset="mae", epochs=2, batch_size=16, lrs=[0.1, 1.0])
    choice = select_linear_aug(backbone, images, val, 4, cfg, CPU)
    assert len(backbone.calls) == 2 * 4 and set(backbone.calls) == {(False, False, False)}  # eval mode, no autograd
    assert backbone.training and all(m.training for m in net.modules())  # modes restored afterwards
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics untouched
    assert choice.params["lr"] in (pytest.approx(0.1 * 16 / 256), pytest.approx(1.0 * 16 / 256))
    assert isinstance(choice.classifier[0], nn.BatchNorm1d) and not choice.classifier[0].affine  # MAE's BN, no affine
    folder = FolderSet("f", [], torch.zeros(0, dtype=torch.long), ["a"])
    with pytest.raises(ConfigError, match="image folders"):
        select_linear_aug(backbone, folder, val, 4, cfg, CPU)
