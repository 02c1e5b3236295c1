"""Baseline losses against loop transcriptions of their paper equations, plus method smoke tests."""

from __future__ import annotations

import math

import pytest
import torch

from bench.data.views import Views
from bench.errors import ConfigError
from bench.methods import Method, method_class
from bench.methods.barlow_twins import BarlowTwinsParams, barlow_twins_loss
from bench.methods.byol import BYOL, BYOLParams, byol_loss
from bench.methods.ema import cosine_momentum, ema_update_
from bench.methods.simclr import SimCLRParams, simclr_loss
from bench.methods.simsiam import SimSiamParams, simsiam_loss
from bench.methods.supervised import SupervisedParams, supervised_loss
from bench.methods.vicreg import VICRegParams, vicreg_loss
from bench.models.backbones import SmallCNN
from method_checks import forward_backward

Matrix = list[list[float]]


#: MethodParams fields of every method (tested in tests/test_vit.py): no preset, one encoder for both views
SHARED = {"preset", "branches"}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _cos(u: list[float], v: list[float]) -> float:
    return _dot(u, v) / math.sqrt(_dot(u, u) * _dot(v, v))


def _column(m: Matrix, j: int) -> list[float]:
    return [row[j] for row in m]


# ---------------------------------------------------------------- loop transcriptions of the papers


def simclr_reference(z1: Matrix, z2: Matrix, tau: float) -> float:
    """SimCLR Eq. 1 with the paper's ordering: views 2k and 2k+1 (0-based) come from image k."""
    views = [v for pair in zip(z1, z2) for v in pair]

    def ell(i: int, j: int) -> float:
        denominator = sum(math.exp(_cos(views[i], views[k]) / tau) for k in range(len(views)) if k != i)
        return -math.log(math.exp(_cos(views[i], views[j]) / tau) / denominator)

    n = len(z1)
    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def byol_reference(p: Matrix, z: Matrix) -> float:
    """BYOL Eq. 2 as written first: || p/|p| - z/|z| ||^2, averaged over the batch."""
    total = 0.0
    for pb, zb in zip(p, z):
        pn, zn = math.sqrt(_dot(pb, pb)), math.sqrt(_dot(zb, zb))
        total += sum((a / pn - b / zn) ** 2 for a, b in zip(pb, zb))
    return total / len(p)


def simsiam_reference(p1: Matrix, p2: Matrix, z1: Matrix, z2: Matrix) -> float:
    """SimSiam Eq. 4: 1/2 D(p1, z2) + 1/2 D(p2, z1), D = -cos, averaged over the batch."""
    n = len(p1)
    d12 = sum(-_cos(p1[b], z2[b]) for b in range(n)) / n
    d21 = sum(-_cos(p2[b], z1[b]) for b in range(n)) / n
    return 0.5 * d12 + 0.5 * d21


def barlow_reference(z1: Matrix, z2: Matrix, lambd: float) -> float:
    """Barlow Twins Eq. 1-2: C from batch-mean-centred embeddings normalised by column norms."""
    n, d = len(z1), len(z1[0])

    def centred(z: Matrix) -> Matrix:
        means = [sum(_column(z, j)) / n for j in range(d)]
        return [[z[b][j] - means[j] for j in range(d)] for b in range(n)]

    a, b = centred(z1), centred(z2)
    c = [
        [
            sum(a[s][i] * b[s][j] for s in range(n))
            / (math.sqrt(sum(a[s][i] ** 2 for s in range(n))) * math.sqrt(sum(b[s][j] ** 2 for s in range(n))))
            for j in range(d)
        ]
        for i in range(d)
    ]
    on = sum((1 - c[i][i]) ** 2 for i in range(d))
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lambd * off


def vicreg_reference(z1: Matrix, z2: Matrix, lam: float, mu: float, nu: float, gamma: float, eps: float) -> float:
    """VICReg Eq. 1-6, with the invariance as the element-wise mean squared error."""
    n, d = len(z1), len(z1[0])

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    def v(z: Matrix) -> float:
        total = 0.0
        for j in range(d):
            col = _column(z, j)
            var = sum((x - mean(col)) ** 2 for x in col) / (n - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
        return total / d

    def c(z: Matrix) -> float:
        means = [mean(_column(z, j)) for j in range(d)]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((z[s][i] - means[i]) * (z[s][j] - means[j]) for s in range(n)) / (n - 1)
                    total += cov**2
        return total / d

    s = sum((z1[b][j] - z2[b][j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    return lam * s + mu * (v(z1) + v(z2)) + nu * (c(z1) + c(z2))


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("n,d,tau", [(4, 3, 0.1), (5, 4, 0.5), (6, 5, 1.0)])
def test_simclr_matches_eq1(n: int, d: int, tau: float) -> None:
    z1, z2 = _randn(n, d, seed=1), _randn(n, d, seed=2)
    expected = simclr_reference(z1.tolist(), z2.tolist(), tau)
    assert simclr_loss(z1, z2, tau).item() == pytest.approx(expected, rel=1e-10)


def test_simclr_hand_computed() -> None:
    # views e1, e2 | 2 e1, 3 e2: each anchor's positive has cos 1, its two negatives cos 0
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    # l = -log(e^{1/0.5} / (e^{1/0.5} + 2 e^0)) = log(e^2 + 2) - 2 for all four anchors
    assert simclr_loss(z1, z2, 0.5).item() == pytest.approx(math.log(math.e**2 + 2) - 2, rel=1e-12)


def test_byol_matches_eq2() -> None:
    p, z = _randn(5, 4, seed=3), _randn(5, 4, seed=4)
    assert byol_loss(p, z).item() == pytest.approx(byol_reference(p.tolist(), z.tolist()), rel=1e-10)


def test_simsiam_matches_eq4_and_stops_gradient() -> None:
    p1, p2, z1, z2 = (_randn(6, 4, seed=s).requires_grad_() for s in range(5, 9))
    loss = simsiam_loss(p1, p2, z1, z2)
    expected = simsiam_reference(p1.tolist(), p2.tolist(), z1.tolist(), z2.tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p1.grad.abs().sum() > 0


@pytest.mark.parametrize("n,d,lambd", [(4, 3, 0.0051), (6, 5, 0.5)])
def test_barlow_twins_matches_eq1(n: int, d: int, lambd: float) -> None:
    z1, z2 = _randn(n, d, seed=9), _randn(n, d, seed=10)
    loss, terms = barlow_twins_loss(z1, z2, lambd)
    assert loss.item() == pytest.approx(barlow_reference(z1.tolist(), z2.tolist(), lambd), rel=1e-10)
    assert loss.item() == pytest.approx((terms["on_diag"] + lambd * terms["off_diag"]).item(), rel=1e-12)


def test_barlow_twins_hand_computed() -> None:
    # standardised over the batch: z1 -> [[-1, 1], [1, -1]], z2 -> [[-1, -1], [1, 1]]
    z1 = torch.tensor([[0.0, 5.0], [2.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[4.0, 7.0], [6.0, 7.5]], dtype=torch.float64)
    # C = z1n^T z2n / 2 = [[1, 1], [-1, -1]]: (1-1)^2 + (1+1)^2 + lambda (1 + 1)
    loss, terms = barlow_twins_loss(z1, z2, 0.0051)
    assert terms["on_diag"].item() == pytest.approx(4.0, rel=1e-12)
    assert terms["off_diag"].item() == pytest.approx(2.0, rel=1e-12)
    assert loss.item() == pytest.approx(4.0102, rel=1e-12)


@pytest.mark.parametrize("n,d", [(4, 3), (6, 5)])
def test_vicreg_matches_eq6(n: int, d: int) -> None:
    z1, z2 = _randn(n, d, seed=11) * 0.7, _randn(n, d, seed=12) * 1.5  # some dims below gamma, some above
    coeffs = (25.0, 25.0, 1.0, 1.0, 1e-4)
    loss, _ = vicreg_loss(z1, z2, *coeffs)
    assert loss.item() == pytest.approx(vicreg_reference(z1.tolist(), z2.tolist(), *coeffs), rel=1e-10)


def test_vicreg_variance_hinge() -> None:
    spread = _randn(64, 4, seed=13) * 5.0  # every per-dimension std far above gamma = 1
    _, terms = vicreg_loss(spread, spread, 25.0, 25.0, 1.0, 1.0, 1e-4)
    assert terms["variance"].item() == 0.0
    assert terms["invariance"].item() == 0.0
    collapsed = torch.ones(64, 4, dtype=torch.float64)  # std 0: hinge = 1 - sqrt(1e-4) per branch
    _, terms = vicreg_loss(collapsed, collapsed, 25.0, 25.0, 1.0, 1.0, 1e-4)
    assert terms["variance"].item() == pytest.approx(2 * (1 - 0.01), rel=1e-12)
    assert terms["covariance"].item() == 0.0


def test_supervised_loss_ignores_unlabelled() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 0.0]], dtype=torch.float64)
    # only sample 0 is labelled (class 0): -log(1 / (1 + 3)) = log 4
    assert supervised_loss(logits, torch.tensor([0, -1])).item() == pytest.approx(math.log(4.0), rel=1e-12)
    assert supervised_loss(logits, torch.tensor([-1, -1])).item() == 0.0


# ---------------------------------------------------------------- EMA


def test_cosine_momentum_endpoints() -> None:
    assert cosine_momentum(0.996, 0, 100) == pytest.approx(0.996, abs=1e-15)
    assert cosine_momentum(0.996, 99, 100) == 1.0
    assert cosine_momentum(0.996, 50, 101) == pytest.approx(0.998, abs=1e-15)  # cos(pi/2) = 0


# ---------------------------------------------------------------- methods

TINY_HEADS = {
    "simclr": {"projector": "32-16"},
    "byol": {"projector": "32-16", "predictor": "32-16"},
    "simsiam": {"projector": "32-16", "predictor": "8-16"},
    "barlow_twins": {"projector": "32-16"},
    "vicreg": {"projector": "32-16"},
    "supervised": {"projector": ""},
}


def _views(labels: torch.Tensor, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    return Views(crops=crops, clean=None, labels=labels, index=torch.arange(8))


def _build(name: str, **overrides: object) -> Method:
    cls = method_class(name)
    params = cls.Params(**{**TINY_HEADS[name], **overrides})
    torch.manual_seed(0)
    return cls(SmallCNN(3, 4), params, num_classes=10, image_shape=(3, 16, 16))


@pytest.mark.parametrize("name", sorted(TINY_HEADS))
def test_method_forward_backward(name: str) -> None:
    method = _build(name)
    # SSL methods get unlabelled batches; only the supervised baseline reads labels
    labels = torch.arange(8) % 10 if name == "supervised" else torch.full((8,), -1)
    forward_backward(method, _views(labels))


def test_byol_target_gets_no_gradient_and_follows_ema() -> None:
    method = _build("byol")
    assert isinstance(method, BYOL)
    out = method(_views(torch.full((8,), -1)), step=3, total_steps=10)
    out.loss.backward()
    targets = [*method.target_backbone.parameters(), *method.target_projector.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in targets)
    before = [p.detach().clone() for p in targets]
    with torch.no_grad():  # an SGD step on the online network
        for p in [*method.backbone.parameters(), *method.projector.parameters()]:
            p -= 0.5 * p.grad
    method.on_step_end(out, step=3, total_steps=10)
    tau = 1 - (1 - 0.996) * (math.cos(math.pi * 3 / 9) + 1) / 2
    online = [*method.backbone.parameters(), *method.projector.parameters()]
    for old, new, theta in zip(before, targets, online):
        torch.testing.assert_close(new, tau * old + (1 - tau) * theta.detach())
    assert any(not torch.equal(old, new) for old, new in zip(before, targets))
    for t_buf, o_buf in zip(method.target_backbone.buffers(), method.backbone.buffers()):
        assert torch.equal(t_buf, o_buf)  # BN running stats copied from the online network


def test_ema_update_at_tau_one_keeps_target() -> None:
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    kept = [p.detach().clone() for p in target.parameters()]
    ema_update_(target, online, 1.0)
    assert all(torch.equal(k, p) for k, p in zip(kept, target.parameters()))


def test_supervised_loss_decreases_on_fixed_batch() -> None:
    method = _build("supervised")
    views = _views(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(8):
        out = method(views, step=step, total_steps=8)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert out.logs["train_acc"].item() > 0.5


@pytest.mark.parametrize("name,predictor", [("byol", "32-8"), ("simsiam", "8-32")])
def test_predictor_must_end_at_projector_width(name: str, predictor: str) -> None:
    with pytest.raises(ConfigError, match="must end at the projector width 16"):
        _build(name, predictor=predictor)


def test_paper_defaults() -> None:
    assert SimCLRParams().model_dump(exclude=SHARED) == {
        "name": "simclr",
        "projector": "2048-128",
        "reading": "paper",
        "projector_last_bn": False,
        "temperature": 0.1,
    }
    assert BYOLParams().model_dump(exclude=SHARED) == {
        "name": "byol",
        "projector": "4096-256",
        "reading": "paper",
        "predictor": "4096-256",
        "tau_base": 0.996,
    }
    assert SimSiamParams().model_dump(exclude=SHARED) == {
        "name": "simsiam",
        "projector": "2048-2048-2048",
        "reading": "paper",
        "projector_last_bn_affine": False,
        "predictor": "512-2048",
        "fix_predictor_lr": False,
    }
    assert BarlowTwinsParams().model_dump(exclude=SHARED) == {"name": "barlow_twins", "projector": "8192-8192-8192",
                                                              "reading": "paper", "lambd": 0.005, "bias_lr": None}
    assert VICRegParams().model_dump(exclude=SHARED) == {
        "name": "vicreg",
        "projector": "8192-8192-8192",
        "reading": "paper",
        "sim_coeff": 25.0,
        "std_coeff": 25.0,
        "cov_coeff": 1.0,
        "gamma": 1.0,
        "eps": 1e-4,
        "variance_branches": "sum",
    }
    assert SupervisedParams().model_dump(exclude=SHARED) == {"name": "supervised", "projector": "", "reading": "paper"}


@pytest.mark.parametrize(
    "name,recipe,opt,lr,wd,exclude",
    [
        ("simclr", "simclr", "lars", 0.3, 1e-6, True),
        ("byol", "byol", "lars", 0.2, 1.5e-6, True),
        ("simsiam", "simsiam_cifar", "sgd", 0.05, 1e-4, False),
        ("barlow_twins", "byol", "lars", 0.2, 1.5e-6, True),
        ("vicreg", "byol", "lars", 0.2, 1e-6, True),
        ("supervised", "supervised", "sgd", 0.1, 1e-4, False),
    ],
)
def test_paper_recipe_and_optimizer(name: str, recipe: str, opt: str, lr: float, wd: float, exclude: bool) -> None:
    cls = method_class(name)
    assert cls.recipe == recipe
    assert cls.optimizer == {
        "name": opt,
        "lr": lr,
        "lr_scaling": "linear",
        "weight_decay": wd,
        "momentum": 0.9,
        "exclude_bias_bn": exclude,
    }


def test_losses_run_in_float32_under_bf16_autocast():
    from bench.methods.barlow_twins import barlow_twins_loss
    from bench.methods.simclr import simclr_loss

    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = z1.bfloat16(), z2.bfloat16()
        got = simclr_loss(a, b, 0.1)
        got_bt, _ = barlow_twins_loss(a, b, 0.005)
    assert got.dtype == torch.float32 and got_bt.dtype == torch.float32
    assert got.item() == pytest.approx(simclr_loss(a.float(), b.float(), 0.1).item(), rel=1e-6)
