"""MV-MR: dCor against the dcor package, the loss against a loop transcription, the representations,
the disk cache (once, keyed, cross-process, atomic), the teacher sources and a smoke test."""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data.base import ImageSet
from bench.data.registry import DatasetConfig, load_dataset
from bench.data.views import RECIPES, ViewMaker
from bench.errors import ConfigError
from bench.methods.mvmr import MVMR, MVMRParams, dcor, mvmr_loss
from bench.models.backbones import BackboneConfig, SmallCNN
from bench.representations import REPRESENTATIONS, augmented, cached_representation
from bench.representations.cache import cache_path, dataset_identity
from bench.representations.features import AugmentedParams, ScatteringParams
from bench.representations.teacher import TeacherParams, teacher

Matrix = list[list[float]]


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- loop transcriptions


def dcor_reference(x: Matrix, y: Matrix) -> float:
    """Eq. 4-5: Euclidean distances, double centring, dCov^2 / sqrt(dVar dVar)."""
    n = len(x)

    def centred(m: Matrix) -> Matrix:
        d = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(m[j], m[i]))) for i in range(n)] for j in range(n)]
        row = [sum(d[j]) / n for j in range(n)]
        col = [sum(d[j][i] for j in range(n)) / n for i in range(n)]
        grand = sum(row) / n
        return [[d[j][i] - row[j] - col[i] + grand for i in range(n)] for j in range(n)]

    a, c = centred(x), centred(y)

    def v2(p: Matrix, q: Matrix) -> float:
        return sum(p[j][i] * q[j][i] for j in range(n) for i in range(n)) / n**2

    return v2(a, c) / math.sqrt(v2(a, a) * v2(c, c))


def mvmr_reference(z: Matrix, za: Matrix, reps: list[Matrix], lambd: float, mu: float, alpha: float,
                   betas: list[float], gamma: float, eps: float) -> float:
    """Eq. 6-12 with the paper's choices (sum over D, maximise dCor in L3)."""
    n, d = len(z), len(z[0])
    invariance = sum(sum((a - b) ** 2 for a, b in zip(z[i], za[i])) for i in range(n)) / n

    def v(m: Matrix) -> float:
        total = 0.0
        for j in range(d):
            col = [row[j] for row in m]
            mean = sum(col) / n
            var = sum((c - mean) ** 2 for c in col) / (n - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
        return total / d

    l1 = lambd * invariance + mu * (v(z) + v(za))
    l2 = alpha * (1 - dcor_reference(za, z))
    l3 = sum(b * (1 - dcor_reference(za, r)) for b, r in zip(betas, reps))
    return l1 + l2 + l3


# ---------------------------------------------------------------- dCor and the loss


def test_dcor_matches_the_dcor_package_for_different_dimensions():
    import dcor as dcor_package  # imported here: it JIT-compiles for seconds, and spawned cache workers import this module

    x, y = _randn(12, 5, seed=1), _randn(12, 3, seed=2)
    y = y + x[:, :3] ** 2  # dependent, non-linearly
    r2 = dcor(x, y, squared=True, eps=1e-12)
    r = dcor(x, y, squared=False, eps=1e-12)
    assert r2.dtype == torch.float32
    assert r2.item() == pytest.approx(dcor_package.distance_correlation_sqr(x.numpy(), y.numpy()), abs=1e-5)
    assert r.item() == pytest.approx(dcor_package.distance_correlation(x.numpy(), y.numpy()), abs=1e-5)
    assert r2.item() == pytest.approx(dcor_reference(x.tolist(), y.tolist()), abs=1e-5)


def test_dcor_gradients_are_finite_with_the_clamp():
    x = _randn(6, 4, seed=3).float().requires_grad_()
    dcor(x, _randn(6, 9, seed=4).float()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _loss_kwargs(**overrides):
    kw = {"lambd": 0.7, "mu": 1.3, "alpha": 0.9, "gamma": 1.0, "eps": 1e-4, "mse_reduction": "sum", "l3_mode": "maximize",
              "dcor_squared": True, "dcor_eps": 1e-12, "terms": ["l1", "l2", "l3"]}
    return {**kw, **overrides}


def test_mvmr_loss_matches_loop_transcription():
    z, za = _randn(8, 6, seed=5), _randn(8, 6, seed=6) * 0.5
    reps = {"raw": _randn(8, 11, seed=7), "hog": _randn(8, 3, seed=8)}
    betas = {"raw": 0.4, "hog": 1.5}
    loss, logs = mvmr_loss(z, za, reps, betas, **_loss_kwargs())
    expected = mvmr_reference(z.tolist(), za.tolist(), [r.tolist() for r in reps.values()], 0.7, 1.3, 0.9, [0.4, 1.5], 1.0, 1e-4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(logs) == {"invariance", "variance", "dcor_views", "dcor_raw", "dcor_hog"}


def test_mvmr_loss_switches():
    z, za = _randn(8, 6, seed=9), _randn(8, 6, seed=10)
    reps, betas = {"raw": _randn(8, 5, seed=11)}, {"raw": 2.0}
    r_rep = dcor_reference(za.tolist(), reps["raw"].tolist())
    r_views = dcor_reference(za.tolist(), z.tolist())
    only_l3, _ = mvmr_loss(z, za, reps, betas, **_loss_kwargs(terms=["l3"]))
    assert only_l3.item() == pytest.approx(2.0 * (1 - r_rep), rel=1e-5)
    minimize, _ = mvmr_loss(z, za, reps, betas, **_loss_kwargs(terms=["l3"], l3_mode="minimize"))
    assert minimize.item() == pytest.approx(2.0 * r_rep, rel=1e-5)
    only_l2, logs = mvmr_loss(z, za, reps, betas, **_loss_kwargs(terms=["l2"], dcor_squared=False))
    assert only_l2.item() == pytest.approx(0.9 * (1 - math.sqrt(r_views)), rel=1e-5)
    assert set(logs) == {"dcor_views"}
    full, _ = mvmr_loss(z, za, reps, betas, **_loss_kwargs())
    l1, _ = mvmr_loss(z, za, reps, betas, **_loss_kwargs(terms=["l1"]))
    l2, _ = mvmr_loss(z, za, reps, betas, **_loss_kwargs(terms=["l2"]))
    assert full.item() == pytest.approx((l1 + l2 + only_l3).item(), rel=1e-6)
    mean, _ = mvmr_loss(z, za, reps, betas, **_loss_kwargs(terms=["l1"], mu=0.0, mse_reduction="mean"))
    assert mean.item() == pytest.approx(0.7 * ((z - za) ** 2).mean().item(), rel=1e-6)


def test_params_validation():
    with pytest.raises(ValueError, match="teacher"):
        MVMRParams(representations=["teacher"])
    with pytest.raises(ValueError, match="beta"):
        MVMRParams(representations=["raw", "hog"], beta={"raw": 1.0})
    assert MVMRParams(representations=["raw", "hog"], beta={"raw": 1.0, "hog": 2.0}).betas() == {"raw": 1.0, "hog": 2.0}


# ---------------------------------------------------------------- representations

DIMS_32 = {"raw": 1024, "scattering": 81 * 8 * 8, "hog": 24 * 4 * 4, "lbp": 10 * 16, "lsd": 1024}


@pytest.mark.parametrize("channels", [3, 1])
def test_representation_shapes(channels):
    x = _randn(2, channels, 32, 32, seed=12).float()
    for name, per_channel in DIMS_32.items():
        rep = REPRESENTATIONS[name]
        out = rep.compute(x, rep.Params())
        assert out.shape == (2, channels * per_channel), name
        assert torch.isfinite(out).all(), name
    mean, std = torch.full((1, channels, 1, 1), 0.5), torch.full((1, channels, 1, 1), 0.25)
    out = augmented(x.clamp(-1.9, 1.9), mean, std, AugmentedParams(), step=3)
    assert out.shape == (2, channels * 1024)
    assert torch.equal(out, augmented(x.clamp(-1.9, 1.9), mean, std, AugmentedParams(), step=3))


def test_scattering_through_the_direct_frontend():
    from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

    x = _randn(2, 3, 16, 16, seed=13).float()
    out = REPRESENTATIONS["scattering"].compute(x, ScatteringParams(J=2, L=4))
    direct = ScatteringTorch2D(J=2, shape=(16, 16), L=4)(x)
    assert direct.shape == (2, 3, 1 + 2 * 4 + 16, 4, 4)
    torch.testing.assert_close(out, direct.flatten(1))


def test_lsd_matches_a_direct_window_std():
    x = _randn(1, 1, 6, 6, seed=14).float()
    out = REPRESENTATIONS["lsd"].compute(x, REPRESENTATIONS["lsd"].Params()).view(6, 6)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")[0, 0]
    window = padded[2:5, 3:6]  # the 3x3 window around pixel (2, 3)
    assert out[2, 3].item() == pytest.approx(math.sqrt(window.var(unbiased=False).item() + 1e-8), rel=1e-4)


# ---------------------------------------------------------------- cache


def _split(seed: int = 0, n: int = 10, size: int = 8) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return ImageSet("toy", images, torch.zeros(n), ["a"], (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _counted_mean(log: Path, x: torch.Tensor, delay: float = 0.0) -> torch.Tensor:
    with open(log, "a") as f:
        f.write("x\n")
    time.sleep(delay)
    return x.flatten(2).mean(dim=2)


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_cache_computes_once_per_key(tmp_path):
    split, log = _split(), tmp_path / "calls.txt"
    compute = functools.partial(_counted_mean, log)
    first = cached_representation(split, "mean", {"k": 1}, compute, tmp_path, dtype="float32", chunk=4)
    assert _calls(log) == 3  # 10 images in chunks of 4
    expected = ((split.images.float() / 255 - 0.5) / 0.25).flatten(2).mean(dim=2)
    np.testing.assert_allclose(first, expected.numpy(), rtol=1e-6)
    second = cached_representation(split, "mean", {"k": 1}, compute, tmp_path, dtype="float32", chunk=4)
    assert _calls(log) == 3 and isinstance(second, np.memmap)
    cached_representation(split, "mean", {"k": 2}, compute, tmp_path, dtype="float32", chunk=4)
    cached_representation(_split(seed=1), "mean", {"k": 1}, compute, tmp_path, dtype="float32", chunk=4)
    assert _calls(log) == 9
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert dataset_identity(_split(seed=0))["sha1"] != dataset_identity(_split(seed=1))["sha1"]
    assert dataset_identity(_split(size=8))["sha1"] != dataset_identity(_split(size=6))["sha1"]


def _fail_on_second_chunk(log: Path, final: Path, x: torch.Tensor) -> torch.Tensor:
    assert not final.exists()  # nothing is visible under the final name while computing
    if _calls(log) == 1:
        raise RuntimeError("interrupted")
    return _counted_mean(log, x)


def test_cache_never_shows_a_partial_file(tmp_path):
    split, log = _split(), tmp_path / "calls.txt"
    final = cache_path(tmp_path, dataset_identity(split), "mean", {}, "float16")
    with pytest.raises(RuntimeError, match="interrupted"):
        cached_representation(split, "mean", {}, functools.partial(_fail_on_second_chunk, log, final), tmp_path, chunk=4)
    assert not final.exists() and list(tmp_path.glob("*.npy")) == []
    out = cached_representation(split, "mean", {}, functools.partial(_counted_mean, log), tmp_path, chunk=4)
    assert final.exists() and out.dtype == np.float16 and out.shape == (10, 3)


def _worker(cache_dir: Path, log: Path) -> None:
    cached_representation(_split(), "mean", {}, functools.partial(_counted_mean, log, delay=1.0), cache_dir, chunk=16)


def test_cache_two_processes_compute_once(tmp_path):
    log = tmp_path / "calls.txt"
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_worker, args=(tmp_path, log)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(600)  # a hang, not a slow machine: spawning two processes under load takes minutes
    assert [w.exitcode for w in workers] == [0, 0]
    assert _calls(log) == 1
    assert len(list(tmp_path.glob("*.npy"))) == 1


# ---------------------------------------------------------------- teacher


def test_teacher_from_our_checkpoint(tmp_path):
    torch.manual_seed(0)
    backbone = SmallCNN(3, width=4)
    path = tmp_path / "model.pt"
    torch.save({"backbone": backbone.state_dict(), "config": {"backbone": BackboneConfig(width=4).model_dump(mode="json")}}, path)
    x = _randn(3, 3, 16, 16, seed=15).float()
    params = TeacherParams(source="checkpoint", path=path)
    out = teacher(x, params)
    with torch.no_grad():
        expected = backbone.eval()(x)
    torch.testing.assert_close(out, expected)
    assert "sha1" in params.identity()


def test_teacher_from_torchvision_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    x = _randn(2, 1, 8, 8, seed=16).float()
    out = teacher(x, TeacherParams(source="torchvision", arch="resnet18", path=path, input_size=32))
    model.fc = torch.nn.Identity()
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(x.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", align_corners=False)
        expected = model.eval()(resized)
    assert out.shape == (2, 512)
    torch.testing.assert_close(out, expected)


def test_teacher_open_clip_missing_is_a_clear_error():
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="open_clip_torch"):
            teacher(torch.zeros(1, 3, 8, 8), TeacherParams(source="open_clip"))
    else:
        pytest.skip("open_clip is installed; the error path cannot be exercised")


# ---------------------------------------------------------------- smoke


def test_mvmr_smoke_on_shapes(tmp_path):
    torch.manual_seed(0)
    split = load_dataset(DatasetConfig(name="shapes", n_train=64, n_test=20)).pretrain
    params = MVMRParams(projector="16-16", representations=["raw", "scattering", "augmented", "hog", "lsd", "lbp"],
                        beta={"raw": 1, "scattering": 1, "augmented": 1, "hog": 0.5, "lsd": 1, "lbp": 1})
    method = MVMR(SmallCNN(split.channels, width=4), params, num_classes=10, image_shape=(split.channels, 32, 32))
    method.prepare(split, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 5  # all but 'augmented'
    maker = ViewMaker(RECIPES[MVMR.recipe], split.mean, split.std, split.image_size, clean=True)
    index = torch.arange(8, 16)
    views = maker(split.images[index], split.labels[index], index, torch.Generator().manual_seed(0))
    out = method(views, step=0, total_steps=10)
    assert torch.isfinite(out.loss)
    assert {"invariance", "variance", "dcor_views", "dcor_scattering", "dcor_augmented"} <= set(out.logs)
    out.loss.backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    clone = MVMR(SmallCNN(split.channels, width=4), params, num_classes=10, image_shape=(split.channels, 32, 32))
    clone.load_state_dict(method.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(clone.state_dict().values(), method.state_dict().values()))


def test_cached_representations_equal_recomputed_ones(tmp_path):
    from bench.data.registry import DatasetConfig, load_dataset
    from bench.data.views import ViewMaker, build_recipe
    from bench.methods.mvmr import MVMR, MVMRParams
    from bench.models.backbones import SmallCNN

    split = load_dataset(DatasetConfig(name="shapes", n_train=64, n_test=20)).pretrain
    reps = ["raw", "lsd", "hog"]
    cached = MVMR(SmallCNN(3, 4), MVMRParams(projector="16-16", representations=reps), num_classes=10, image_shape=(3, 32, 32))
    fresh = MVMR(SmallCNN(3, 4), MVMRParams(projector="16-16", representations=reps, cache=False), num_classes=10, image_shape=(3, 32, 32))
    cached.prepare(split, tmp_path)
    fresh.prepare(split, tmp_path / "unused")
    assert not (tmp_path / "unused").exists() or not list((tmp_path / "unused").glob("*.npy"))
    maker = ViewMaker(build_recipe("simclr"), split.mean, split.std, 32, clean=True)
    views = maker(split.images[:16], split.labels[:16], torch.arange(16), torch.Generator().manual_seed(0))
    a, b = cached._representations(views, step=0), fresh._representations(views, step=0)
    for name in reps:
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=2e-3, atol=2e-3)
