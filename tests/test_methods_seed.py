"""MVEB, SidAE and DAE: losses against loop transcriptions of their equations, properties, smoke tests."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.data.views import Views
from bench.errors import ConfigError
from bench.eval.diagnostics import uniformity
from bench.methods import Method
from bench.methods.ema import cosine_momentum
from bench.methods.mveb import (
    MVEB,
    MVEBParams,
    entropy_surrogate,
    mveb_loss,
    vmf_bandwidth,
    vmf_stein_score,
)
from bench.methods.sidae import (
    DAE,
    DAEParams,
    Decoder,
    SidAE,
    SidAEParams,
    dae_loss,
    sidae_loss,
)
from bench.methods.simsiam import simsiam_loss
from bench.models.backbones import SmallCNN
from method_checks import forward_backward

Matrix = list[list[float]]


#: MethodParams fields of every method (tested in tests/test_vit.py): no preset, one encoder for both views
SHARED = {"preset", "branches"}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(_randn(*shape, seed=seed), dim=-1)


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _cos(u: list[float], v: list[float]) -> float:
    return _dot(u, v) / math.sqrt(_dot(u, u) * _dot(v, v))


def _solve(a: Matrix, b: Matrix) -> Matrix:
    """X with A X = B, by Gauss-Jordan elimination with partial pivoting."""
    n = len(a)
    rows = [list(a[i]) + list(b[i]) for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        rows[col] = [v / rows[col][col] for v in rows[col]]
        for r in range(n):
            if r != col:
                factor = rows[r][col]
                rows[r] = [v - factor * p for v, p in zip(rows[r], rows[col])]
    return [row[n:] for row in rows]


# ---------------------------------------------------------------- MVEB transcriptions


def bandwidth_reference(z: Matrix, min_bw: float) -> float:
    """The (M^2 // 2)-th largest cosine distance 1 - z_i^T z_j over all ordered pairs, i = j included."""
    distances = sorted((1 - _dot(zi, zj) for zi in z for zj in z), reverse=True)
    return max(distances[len(distances) // 2 - 1], min_bw)


def stein_reference(z: Matrix, eta: float, min_bw: float) -> Matrix:
    """Spec Sec. 1.4: S = -(K + eta I)^-1 grad K, K_ij = exp(z_i^T z_j / Delta), grad K_i = sum_m dk(z_i, z_m)/dz_m."""
    m, d = len(z), len(z[0])
    delta = bandwidth_reference(z, min_bw)
    k = [[math.exp(_dot(z[i], z[j]) / delta) for j in range(m)] for i in range(m)]
    # d/dz_m exp(z_i^T z_m / Delta) = exp(z_i^T z_m / Delta) z_i / Delta
    grad_k = [[sum(k[i][j] * z[i][c] / delta for j in range(m)) for c in range(d)] for i in range(m)]
    a = [[k[i][j] + (eta if i == j else 0.0) for j in range(m)] for i in range(m)]
    return [[-v for v in row] for row in _solve(a, grad_k)]


def entropy_reference(z: Matrix, eta: float, min_bw: float) -> float:
    s = stein_reference(z, eta, min_bw)
    return -sum(_dot(si, zi) for si, zi in zip(s, z)) / len(z)


def mveb_reference(online: list[Matrix], t1: Matrix, t2: Matrix, beta: float, eta: float, min_bw: float) -> float:
    """Spec Sec. 1.5: -(1/V)[<g1, t2> + <g2, t1> + sum_l <z_l, (t1 + t2)/2>] - beta (1/V) sum_v H_surr(z_v)."""
    n, views = len(t1), len(online)
    align = sum(_dot(online[0][b], t2[b]) + _dot(online[1][b], t1[b]) for b in range(n)) / n
    for z in online[2:]:
        align += sum(_dot(z[b], [(p + q) / 2 for p, q in zip(t1[b], t2[b])]) for b in range(n)) / n
    entropy = sum(entropy_reference(z, eta, min_bw) for z in online)
    return -align / views - beta * entropy / views


def test_bandwidth_hand_computed() -> None:
    # cos(z1, z2) = 1/2: distances {0, 0, 1/2, 1/2}; the 2nd largest is 1/2 (torch.median would give 0)
    z = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=torch.float64)
    assert vmf_bandwidth(z @ z.T, 0.1).item() == pytest.approx(0.5, rel=1e-12)
    tight = F.normalize(torch.ones(5, 3, dtype=torch.float64) + 1e-3 * _randn(5, 3, seed=1), dim=1)
    assert vmf_bandwidth(tight @ tight.T, 0.1).item() == 0.1  # clamped


@pytest.mark.parametrize("m", [3, 4, 7])
def test_bandwidth_rank_includes_diagonal(m: int) -> None:
    z = _unit(m, 5, seed=m)
    assert vmf_bandwidth(z @ z.T, 0.1).item() == pytest.approx(bandwidth_reference(z.tolist(), 0.1), rel=1e-12)


@pytest.mark.parametrize("m,d,eta", [(4, 3, 0.01), (6, 5, 0.1)])
def test_stein_score_matches_formula(m: int, d: int, eta: float) -> None:
    z = _unit(m, d, seed=20 + m)
    expected = torch.tensor(stein_reference(z.tolist(), eta, 0.1), dtype=torch.float64)
    torch.testing.assert_close(vmf_stein_score(z, eta, 0.1), expected, rtol=1e-9, atol=1e-9)


def test_entropy_surrogate_gradient_is_minus_score() -> None:
    z = _unit(6, 4, seed=30).requires_grad_()
    h = entropy_surrogate(z, 0.01, 0.1)
    assert h.item() == pytest.approx(entropy_reference(z.tolist(), 0.01, 0.1), rel=1e-9)
    h.backward()
    torch.testing.assert_close(z.grad, -vmf_stein_score(z.detach(), 0.01, 0.1) / 6)


@pytest.mark.parametrize("views", [2, 4])
def test_mveb_loss_matches_eq11(views: int) -> None:
    online = _unit(views, 5, 4, seed=40)
    t1, t2 = _unit(5, 4, seed=41), _unit(5, 4, seed=42)
    loss, align = mveb_loss(online, t1, t2, 0.01, 0.01, 0.1)
    expected = mveb_reference([z.tolist() for z in online], t1.tolist(), t2.tolist(), 0.01, 0.01, 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    if views == 2:
        mean_cos = ((online[0] * t2).sum(-1).mean() + (online[1] * t1).sum(-1).mean()) / 2
        assert align.item() == pytest.approx(mean_cos.item(), rel=1e-12)


def test_entropy_ascent_spreads_a_tight_cluster() -> None:
    centre = _unit(8, seed=50)
    points = F.normalize(centre + 0.05 * _randn(64, 8, seed=51), dim=1).requires_grad_()

    def mean_cos(z: torch.Tensor) -> float:
        return float(((z @ z.T).sum() - z.shape[0]) / (z.shape[0] * (z.shape[0] - 1)))

    start_uniformity, start_cos = uniformity(points.detach()), mean_cos(points.detach())
    optimizer = torch.optim.SGD([points], lr=1.0)
    for _ in range(10):
        optimizer.zero_grad()
        (-entropy_surrogate(F.normalize(points, dim=1), 0.01, 0.1)).backward()  # ascent on H
        optimizer.step()
        with torch.no_grad():
            points.copy_(F.normalize(points, dim=1))
    assert start_cos > 0.95 and start_uniformity > -0.2
    assert mean_cos(points.detach()) < 0.1
    assert uniformity(points.detach()) < -3.0


def test_mveb_loss_float32_under_bf16_autocast() -> None:
    online = _unit(2, 16, 8, seed=60).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = mveb_loss(online.bfloat16(), online[1].bfloat16(), online[0].bfloat16(), 0.01, 0.01, 0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


# ---------------------------------------------------------------- SidAE / DAE transcriptions


def mse_reference(r: torch.Tensor, x: torch.Tensor) -> float:
    flat_r, flat_x = r.flatten().tolist(), x.flatten().tolist()
    return sum((a - b) ** 2 for a, b in zip(flat_r, flat_x)) / len(flat_r)


def sidae_reference(
    p1: Matrix,
    p2: Matrix,
    z1: Matrix,
    z2: Matrix,
    r1: torch.Tensor,
    r2: torch.Tensor,
    x1: torch.Tensor,
    x2: torch.Tensor,
    w: float,
) -> float:
    """Sec. 3: w (1/2 mse(x, x'_1) + 1/2 mse(x, x'_2)) + (1 - w)(1/2 D(p1, z2) + 1/2 D(p2, z1)), D = -cos."""
    n = len(p1)
    l_si = 0.5 * sum(-_cos(p1[b], z2[b]) for b in range(n)) / n + 0.5 * sum(-_cos(p2[b], z1[b]) for b in range(n)) / n
    l_dae = 0.5 * mse_reference(r1, x1) + 0.5 * mse_reference(r2, x2)
    return w * l_dae + (1 - w) * l_si


def _sidae_inputs() -> tuple[torch.Tensor, ...]:
    p1, p2, z1, z2 = (_randn(4, 6, seed=s) for s in range(70, 74))
    r1, r2, x1, x2 = (_randn(4, 3, 5, 5, seed=s) for s in range(74, 78))
    return p1, p2, z1, z2, r1, r2, x1, x2


@pytest.mark.parametrize("w", [0.125, 0.5])
def test_sidae_loss_matches_equation(w: float) -> None:
    p1, p2, z1, z2, r1, r2, x1, x2 = _sidae_inputs()
    loss, terms = sidae_loss(p1, p2, z1, z2, r1, r2, x1, x2, w)
    lists = (p1.tolist(), p2.tolist(), z1.tolist(), z2.tolist())
    assert loss.item() == pytest.approx(sidae_reference(*lists, r1, r2, x1, x2, w), rel=1e-10)
    assert terms["dae"].item() == pytest.approx(0.5 * mse_reference(r1, x1) + 0.5 * mse_reference(r2, x2), rel=1e-10)


def test_sidae_endpoints_are_simsiam_and_dae() -> None:
    p1, p2, z1, z2, r1, r2, x1, x2 = _sidae_inputs()
    assert sidae_loss(p1, p2, z1, z2, r1, r2, x1, x2, 0.0)[0].item() == simsiam_loss(p1, p2, z1, z2).item()
    assert sidae_loss(p1, p2, z1, z2, r1, r2, x1, x2, 1.0)[0].item() == dae_loss(r1, r2, x1, x2).item()


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 16, 16), (1, 28, 20)])
def test_decoder_output_has_input_shape(shape: tuple[int, int, int]) -> None:
    decoder = Decoder(16, shape[0])
    out = decoder(torch.randn(4, 16), shape[1:])
    assert out.shape == (4, *shape)
    convs = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 32),
        (32, shape[0]),
    ]


# ---------------------------------------------------------------- methods


def _views(crop_sizes: tuple[int, ...] = (16, 16), seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(8, 3, s, s, generator=g) for s in crop_sizes]
    clean = torch.randn(8, 3, 16, 16, generator=g)
    return Views(crops=crops, clean=clean, labels=torch.full((8,), -1), index=torch.arange(8))


def _build(cls: type[Method], seed: int = 0, **overrides: object) -> Method:
    heads = {"projector": "32-16"} if cls is MVEB or cls is DAE else {"projector": "32-16", "predictor": "8-16"}
    torch.manual_seed(seed)
    return cls(SmallCNN(3, 4), cls.Params(**{**heads, **overrides}), num_classes=10, image_shape=(3, 16, 16))


CASES = [
    (MVEB, {}, (16, 16)),
    (MVEB, {"target": "shared"}, (16, 16)),
    (MVEB, {}, (16, 16, 8, 8)),  # 2 global + 2 local crops
    (SidAE, {}, (16, 16)),
    (SidAE, {"target": "view"}, (16, 16)),
    (DAE, {}, (16, 16)),
]


@pytest.mark.parametrize("cls,overrides,sizes", CASES)
def test_method_forward_backward_and_state_dict(
    cls: type[Method], overrides: dict[str, object], sizes: tuple[int, ...]
) -> None:
    method = _build(cls, **overrides)
    views = _views(sizes)
    forward_backward(method, views)
    copy = _build(cls, seed=1, **overrides)
    copy.load_state_dict(method.state_dict())
    for (name, a), (_, b) in zip(method.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name
    assert copy(views, step=0, total_steps=10).loss.item() == pytest.approx(
        method(views, step=0, total_steps=10).loss.item(), rel=1e-6
    )


def test_mveb_momentum_target_is_ema_and_shared_has_none() -> None:
    method = _build(MVEB)
    out = method(_views(), step=2, total_steps=10)
    out.loss.backward()
    targets = [*method.target_backbone.parameters(), *method.target_projector.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in targets)
    before = [p.detach().clone() for p in targets]
    with torch.no_grad():
        for p in [*method.backbone.parameters(), *method.projector.parameters()]:
            p -= 0.5 * p.grad
    method.on_step_end(out, step=2, total_steps=10)
    tau = cosine_momentum(0.996, 2, 10)
    online = [*method.backbone.parameters(), *method.projector.parameters()]
    for old, new, theta in zip(before, targets, online):
        torch.testing.assert_close(new, tau * old + (1 - tau) * theta.detach())

    shared = _build(MVEB, target="shared")
    assert not any(name.startswith("target_") for name in shared.state_dict())
    out = shared(_views(), step=0, total_steps=10)
    assert "tau" not in out.logs and out.logs["align"].item() <= 1.0


def test_sidae_reconstruction_target_option() -> None:
    views = _views()
    for target, x in (("clean", views.clean), ("view", None)):
        method = _build(SidAE, target=target)
        out = method(views, step=0, total_steps=10)
        with torch.no_grad():  # train-mode BN: the same batch gives the same z and reconstructions
            z1, z2 = (method.projector(method.backbone(c)) for c in views.crops)
            r1, r2 = method.decoder(z1, (16, 16)), method.decoder(z2, (16, 16))
        x1, x2 = (x, x) if x is not None else (views.crops[0], views.crops[1])
        assert out.logs["dae"].item() == pytest.approx(dae_loss(r1, r2, x1, x2).item(), rel=1e-6)
        other = views.crops if x is not None else (views.clean, views.clean)
        assert abs(out.logs["dae"].item() - dae_loss(r1, r2, *other).item()) > 1e-3


def test_clean_target_without_clean_view_is_a_config_error() -> None:
    views = _views()
    views.clean = None
    with pytest.raises(ConfigError, match="no clean view"):
        _build(DAE)(views, step=0, total_steps=10)


def test_paper_defaults_and_optimizers() -> None:
    assert MVEBParams().model_dump(exclude=SHARED) == {
        "name": "mveb",
        "projector": "2048-2048-2048",
        "reading": "paper",
        "beta": 0.01,
        "target": "momentum",
        "tau_base": 0.996,
        "eta": 0.01,
        "min_bandwidth": 0.1,
    }
    assert SidAEParams().model_dump(exclude=SHARED) == {
        "name": "sidae",
        "projector": "2048-2048-2048",
        "reading": "paper",
        "projector_last_bn_affine": False,
        "predictor": "512-2048",
        "fix_predictor_lr": False,
        "w": 0.5,
        "target": "clean",
    }
    assert DAEParams().model_dump(exclude=SHARED) == {
        "name": "dae",
        "projector": "2048-2048-2048",
        "reading": "paper",
        "projector_last_bn_affine": False,
        "target": "clean",
    }
    assert (MVEB.recipe, MVEB.needs_clean_view) == ("byol", False)
    assert MVEB.optimizer == {
        "name": "lars",
        "lr": 0.4,
        "lr_scaling": "linear",
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "exclude_bias_bn": True,
    }
    for cls in (SidAE, DAE):
        assert (cls.recipe, cls.needs_clean_view) == ("simsiam_cifar", True)
        assert cls.optimizer == {
            "name": "sgd",
            "lr": 0.03,
            "lr_scaling": "none",
            "weight_decay": 5e-4,
            "momentum": 0.9,
            "exclude_bias_bn": False,
        }
    assert not hasattr(_build(DAE), "predictor")
