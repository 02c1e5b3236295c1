"""Tests of the evaluation room: kNN, linear probe, label fractions, diagnostics, features, fine-tuning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.data.base import ImageSet
from bench.errors import ConfigError, DataError
from bench.eval.diagnostics import (
    alignment,
    diagnose,
    dim_collapse_fraction,
    effective_rank,
    normalized_std,
    uniformity,
)
from bench.eval.features import extract_features
from bench.eval.finetune import FinetuneConfig, finetune
from bench.eval.fractions import class_balanced_subset
from bench.eval.knn import knn_eval
from bench.eval.linear import LinearConfig, linear_probe
from bench.models.backbones import SmallCNN

CPU = torch.device("cpu")


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# --- kNN -------------------------------------------------------------------------------------------

# Bank: class 0 at 0 deg, class 1 at +60 and -60 deg, class 2 at 180 deg. Query at 10 deg, label 0.
BANK_F = torch.tensor([unit(0), unit(60), unit(-60), unit(180)]) * torch.tensor([[2.0], [0.5], [3.0], [1.0]])
BANK_Y = torch.tensor([0, 1, 1, 2])
QUERY_F = torch.tensor([unit(10)])
QUERY_Y = torch.tensor([0])


def test_knn_weighted_vote_matches_hand_computation():
    # k=3 neighbours: cos 10 = .985 (class 0), cos 50 = .643 and cos 70 = .342 (class 1); bank norms do not
    # matter. Votes exp(s/T): T=0.1 -> 18921 vs 619 + 31 = 650, class 0 wins; T=1 -> 2.68 vs 1.90 + 1.41 = 3.31,
    # the two class-1 neighbours outvote the closest one (a majority vote would always say class 1).
    assert knn_eval(BANK_F, BANK_Y, QUERY_F, QUERY_Y, 3, ks=(3,), temperature=0.1)["knn3.top1"] == 1.0
    assert knn_eval(BANK_F, BANK_Y, QUERY_F, QUERY_Y, 3, ks=(3,), temperature=1.0)["knn3.top1"] == 0.0
    # T=0.005: exp(.985 / T) and exp(.643 / T) both overflow float32 to inf (a tie that would count the
    # wrong label 1 as a hit) unless the weights are shifted by the best similarity first.
    assert knn_eval(BANK_F, BANK_Y, QUERY_F, torch.tensor([1]), 3, ks=(3,), temperature=0.005)["knn3.top1"] == 0.0
    # k=1 is nearest-neighbour; k=200 is clipped to the 4 bank samples.
    got = knn_eval(BANK_F, BANK_Y, QUERY_F, QUERY_Y, 3, ks=(1, 200), temperature=1.0)
    assert got == {"knn1.top1": 1.0, "knn200.top1": 0.0}


def knn_reference(train_f, train_y, test_f, test_y, k, t):
    """A per-sample numpy transcription of the weighted kNN rule: top-1 and top-5 accuracy.

    The label's rank is the number of voted classes with a larger vote; an unvoted label is a miss.
    """
    a = train_f.numpy() / np.linalg.norm(train_f.numpy(), axis=1, keepdims=True)
    top1 = top5 = 0
    for q, y in zip(test_f.numpy(), test_y.tolist()):
        sim = a @ (q / np.linalg.norm(q))
        votes: dict[int, float] = {}
        for j in np.argsort(-sim)[:k]:
            votes[int(train_y[j])] = votes.get(int(train_y[j]), 0.0) + math.exp(sim[j] / t)
        if y in votes:
            rank = sum(v > votes[y] for v in votes.values())
            top1 += rank < 1
            top5 += rank < 5
    return top1 / len(test_y), top5 / len(test_y)


def blobs(n: int, d: int, classes: int, seed: int, spread: float, centre_seed: int = 0):
    """Gaussian blobs around fixed unit-variance centres (one per class)."""
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(centre_seed))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + spread * torch.randn(n, d, generator=g), y


def test_knn_matches_reference_and_chunking_and_single_pass():
    train_f, train_y = blobs(300, 16, 10, seed=1, spread=1.5)
    test_f, test_y = blobs(120, 16, 10, seed=2, spread=1.5)
    one = knn_eval(train_f, train_y, test_f, test_y, 10, ks=(5, 20), temperature=0.07, chunk=1024)
    ref5 = knn_reference(train_f, train_y, test_f, test_y, 5, 0.07)
    ref20 = knn_reference(train_f, train_y, test_f, test_y, 20, 0.07)
    assert one["knn5.top1"] == pytest.approx(ref5[0]) and one["knn5.top5"] == pytest.approx(ref5[1])
    assert one["knn20.top1"] == pytest.approx(ref20[0]) and one["knn20.top5"] == pytest.approx(ref20[1])
    assert 0.2 < one["knn20.top1"] < 1.0  # neither trivial nor chance for this overlap
    chunked = knn_eval(train_f, train_y, test_f, test_y, 10, ks=(5, 20), temperature=0.07, chunk=7)
    assert chunked == one
    separate = knn_eval(train_f, train_y, test_f, test_y, 10, ks=(5,)) | knn_eval(
        train_f, train_y, test_f, test_y, 10, ks=(20,)
    )
    assert separate == one


def test_knn_refuses_unlabeled_samples():
    with pytest.raises(DataError, match="labeled"):
        knn_eval(BANK_F, torch.tensor([0, 1, -1, 2]), QUERY_F, QUERY_Y, 3)


# --- linear probe ----------------------------------------------------------------------------------


def test_linear_probe_separable_blobs_near_perfect():
    train_f, train_y = blobs(1000, 32, 10, seed=3, spread=0.3)
    test_f, test_y = blobs(500, 32, 10, seed=4, spread=0.3)
    cfg = LinearConfig(epochs=10, lrs=[0.1])
    got = linear_probe(train_f, train_y, test_f, test_y, 10, cfg)
    assert set(got) == {"linear.top1", "linear.top5"}
    assert got["linear.top1"] > 0.98 and got["linear.top5"] == 1.0
    assert linear_probe(train_f, train_y, test_f, test_y, 10, cfg) == got  # seeded: deterministic


def test_linear_probe_random_labels_is_chance():
    g = torch.Generator().manual_seed(3)
    train_f, test_f = torch.randn(1000, 32, generator=g), torch.randn(2000, 32, generator=g)
    train_y, test_y = torch.randint(0, 10, (1000,), generator=g), torch.randint(0, 10, (2000,), generator=g)
    got = linear_probe(train_f, train_y, test_f, test_y, 10, LinearConfig(epochs=10, optimizer="adam", lrs=[0.01]))
    assert abs(got["linear.top1"] - 0.1) < 0.03
    assert abs(got["linear.top5"] - 0.5) < 0.05


def test_linear_config_is_strict():
    with pytest.raises(ValueError):
        LinearConfig(optimiser="sgd")
    with pytest.raises(ValueError):
        LinearConfig(optimizer="lars")


# --- label fractions -------------------------------------------------------------------------------

FRACTION_LABELS = torch.cat(
    [torch.full((n,), c) for c, n in enumerate([10, 25, 3, 100])] + [torch.full((7,), -1)]
)[torch.randperm(145, generator=torch.Generator().manual_seed(0))]


def test_class_balanced_subset_counts_per_class():
    idx = class_balanced_subset(FRACTION_LABELS, 0.1, seed=0)
    # round half up, at least one: 10 -> 1, 25 -> 2.5 -> 3, 3 -> 0.3 -> 1, 100 -> 10
    assert torch.bincount(FRACTION_LABELS[idx]).tolist() == [1, 3, 1, 10]
    assert idx.dtype == torch.long and torch.equal(idx, idx.sort().values)
    assert idx.unique().numel() == idx.numel()  # no sample twice
    assert not (FRACTION_LABELS[idx] == -1).any()  # unlabeled samples are never picked


def test_class_balanced_subset_seeded_and_nested():
    a = class_balanced_subset(FRACTION_LABELS, 0.1, seed=0)
    assert torch.equal(a, class_balanced_subset(FRACTION_LABELS, 0.1, seed=0))
    assert not torch.equal(a, class_balanced_subset(FRACTION_LABELS, 0.1, seed=1))
    larger = class_balanced_subset(FRACTION_LABELS, 0.5, seed=0)
    assert set(a.tolist()) <= set(larger.tolist())
    rest = set(range(145)) - set(larger.tolist())
    assert rest.isdisjoint(larger.tolist()) and len(rest) == 145 - larger.numel()


def test_class_balanced_subset_full_fraction_and_bad_fraction():
    labeled = torch.nonzero(FRACTION_LABELS >= 0).flatten()
    assert torch.equal(class_balanced_subset(FRACTION_LABELS, 1.0, seed=5), labeled)
    plain = torch.tensor([2, 0, 1, 1, 0, 2])
    assert torch.equal(class_balanced_subset(plain, 1.0, seed=0), torch.arange(6))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="fraction"):
            class_balanced_subset(plain, bad, seed=0)


# --- diagnostics -----------------------------------------------------------------------------------


def test_effective_rank_isotropic_and_low_rank():
    g = torch.Generator().manual_seed(4)
    assert 15.0 < effective_rank(torch.randn(2000, 16, generator=g)) <= 16.0
    rank2 = torch.randn(500, 2, generator=g) @ torch.randn(2, 16, generator=g)
    assert 1.0 < effective_rank(rank2) <= 2.0 + 1e-3


def test_alignment_and_uniformity_match_formulas():
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(50, 8, generator=g)
    z2 = z1 + 0.3 * torch.randn(50, 8, generator=g)
    x, y = z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)
    # Wang & Isola 2020, direct transcription
    assert alignment(z1, z2) == pytest.approx(float((x - y).norm(p=2, dim=1).pow(2).mean()), rel=1e-5)
    assert alignment(z1, z2, alpha=1) == pytest.approx(float((x - y).norm(p=2, dim=1).mean()), rel=1e-5)
    ref = float(torch.pdist(x, p=2).pow(2).mul(-2).exp().mean().log())
    assert uniformity(z1, chunk=7) == pytest.approx(ref, rel=1e-5)
    assert uniformity(z1, t=1, chunk=64) == pytest.approx(float(torch.pdist(x).pow(2).neg().exp().mean().log()), rel=1e-5)


def test_normalized_std_healthy_and_collapsed():
    z = torch.randn(4000, 64, generator=torch.Generator().manual_seed(6))
    assert normalized_std(z) == pytest.approx(1 / 8, rel=0.05)
    assert normalized_std(torch.ones(100, 64) * torch.linspace(-1, 2, 64)) == 0.0


def test_dim_collapse_fraction():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(1000, 16, generator=g)
    assert dim_collapse_fraction(z) == 0.0
    z[:, 12:] = 3.0  # four constant dimensions: no variance there
    assert dim_collapse_fraction(z) == pytest.approx(0.25)


def test_diagnose_flags_collapse_only():
    g = torch.Generator().manual_seed(8)
    healthy = torch.randn(1000, 32, generator=g)
    report = diagnose(healthy, healthy + 0.1 * torch.randn(1000, 32, generator=g))
    assert report["collapsed"] is False
    assert set(report) == {
        "effective_rank", "uniformity", "normalized_std", "dim_collapse_fraction", "collapsed", "alignment"
    }
    assert report["alignment"] < 0.05 and report["uniformity"] < -3.5
    constant = torch.randn(32, generator=g) + 1e-4 * torch.randn(1000, 32, generator=g)
    assert diagnose(constant)["collapsed"] is True
    zeros = diagnose(torch.zeros(100, 8))
    assert zeros["collapsed"] is True and abs(zeros["uniformity"]) < 1e-5 and zeros["dim_collapse_fraction"] == 1.0
    # one line through the origin: per-dim std stays large (signs flip) but the rank is 1
    line = torch.randn(1000, 1, generator=g) * torch.randn(1, 32, generator=g)
    report = diagnose(line)
    assert report["collapsed"] is True and report["effective_rank"] < 1.01 and "alignment" not in report


# --- features and fine-tuning ----------------------------------------------------------------------


def test_extract_features_matches_manual_forward_and_restores_modes():
    torch.manual_seed(0)
    net = SmallCNN(3, width=4)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    net.net[1].eval()  # a module already in eval mode must stay so
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    split = ImageSet("t", images, torch.arange(10) % 3, ["a", "b", "c"], (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    feats, labels = extract_features(net, split, CPU, batch_size=3)
    assert net.training and not net.net[1].training and net.net[0].training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats untouched
    mean, std = torch.tensor(split.mean).view(1, 3, 1, 1), torch.tensor(split.std).view(1, 3, 1, 1)
    net.eval()
    with torch.no_grad():
        expected = net((images.float() / 255 - mean) / std)
    assert feats.dtype == torch.float32 and feats.shape == (10, 32)
    torch.testing.assert_close(feats, expected)
    assert torch.equal(labels, split.labels)


def two_colour_set(n: int, seed: int) -> ImageSet:
    """Class 0: reddish images, class 1: bluish images, with pixel noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    base = torch.tensor([[200.0, 40.0, 60.0], [50.0, 70.0, 210.0]])[labels].view(n, 3, 1, 1)
    images = (base + 40 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 255).to(torch.uint8)
    return ImageSet("colours", images, labels, ["red", "blue"], (0.5, 0.2, 0.5), (0.25, 0.15, 0.25))


def test_finetune_learns_tiny_separable_set_without_touching_caller():
    torch.manual_seed(0)
    net = SmallCNN(3, width=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train, test = two_colour_set(64, seed=0), two_colour_set(32, seed=1)
    cfg = FinetuneConfig(epochs=8, batch_size=16, lr=0.05, head_lr=0.5, seed=0)
    got = finetune(net, train, test, 2, cfg, CPU)
    assert set(got) == {"finetune.top1"}  # top-5 is meaningless with 2 classes
    assert got["finetune.top1"] >= 0.9
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert finetune(net, train, test, 2, cfg, CPU) == got  # seeded: deterministic
    quarter = finetune(net, train, test, 2, cfg.model_copy(update={"fraction": 0.25}), CPU)  # 8 labels per class
    assert quarter["finetune.top1"] >= 0.9
    untrained = finetune(net, train, test, 2, cfg.model_copy(update={"epochs": 1, "lr": 1e-6, "head_lr": 1e-6}), CPU)
    assert untrained["finetune.top1"] <= 0.6  # chance level without training
