"""CorInfoMax and W-MSE: losses against loop transcriptions of their equations, properties, smoke tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.data.views import Views
from bench.errors import ConfigError, DivergedError
from bench.methods import Method
from bench.methods.corinfomax import (
    CorInfoMax,
    CorInfoMaxParams,
    CorInfoMaxState,
    corinfomax_loss,
    initial_state,
)
from bench.methods.wmse import WMSE, WMSEParams, cholesky_whiten, wmse_loss
from bench.models.backbones import SmallCNN

Matrix = list[list[float]]


#: MethodParams fields of every method (tested in tests/test_vit.py): no preset, one encoder for both views
SHARED = {"preset", "branches"}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit_rows(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------- plain-Python linear algebra


def _solve_augmented(a: Matrix, b: Matrix) -> tuple[Matrix, float]:
    """Gauss-Jordan with partial pivoting: (A^{-1} B, det A)."""
    n = len(a)
    m = [list(a[i]) + list(b[i]) for i in range(n)]
    det = 1.0
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if pivot != col:
            m[col], m[pivot] = m[pivot], m[col]
            det = -det
        det *= m[col][col]
        m[col] = [x / m[col][col] for x in m[col]]
        for r in range(n):
            if r != col:
                factor = m[r][col]
                m[r] = [x - factor * y for x, y in zip(m[r], m[col])]
    return [row[n:] for row in m], det


def _logdet(a: Matrix) -> float:
    _, det = _solve_augmented(a, [[0.0] for _ in a])
    return math.log(det)


def _inv(a: Matrix) -> Matrix:
    eye = [[float(i == j) for j in range(len(a))] for i in range(len(a))]
    return _solve_augmented(a, eye)[0]


def _matmul(a: Matrix, b: Matrix) -> Matrix:
    return [[sum(a[i][k] * b[k][j] for k in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def _transpose(a: Matrix) -> Matrix:
    return [list(col) for col in zip(*a)]


def _plus_eps(a: Matrix, eps: float) -> Matrix:
    return [[a[i][j] + (eps if i == j else 0.0) for j in range(len(a))] for i in range(len(a))]


# ---------------------------------------------------------------- CorInfoMax transcription


def corinfomax_reference(
    z1: Matrix, z2: Matrix, state: dict[str, list], alpha: float, lambd: float, eps: float
) -> tuple[float, dict[str, list], float]:
    """Thesis Eqs. 4.3-4.6 and Algorithm 1 (with eps I in the logdets); returns loss, new state, 4 LDMI / D."""
    n, d = len(z1), len(z1[0])

    def update(z: Matrix, mu: list[float], r: Matrix) -> tuple[list[float], Matrix, Matrix]:
        mu_new = [lambd * mu[j] + (1 - lambd) * sum(z[b][j] for b in range(n)) / n for j in range(d)]
        zc = [[z[b][j] - mu_new[j] for j in range(d)] for b in range(n)]
        r_new = [
            [lambd * r[i][j] + (1 - lambd) * sum(zc[b][i] * zc[b][j] for b in range(n)) / n for j in range(d)]
            for i in range(d)
        ]
        return mu_new, r_new, zc

    mu1, r1, zc1 = update(z1, state["mu1"], state["r1"])
    mu2, r2, zc2 = update(z2, state["mu2"], state["r2"])
    mse = sum((z1[b][j] - z2[b][j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    loss = -(_logdet(_plus_eps(r1, eps)) + _logdet(_plus_eps(r2, eps))) / d + alpha * mse
    r12 = [
        [lambd * state["r12"][i][j] + (1 - lambd) * sum(zc1[b][i] * zc2[b][j] for b in range(n)) / n for j in range(d)]
        for i in range(d)
    ]
    # Eq. 3.6 times 4 / D: Re12 = R1 - R12 (R2 + eps I)^-1 R12^T, Re21 = R2 - R12^T (R1 + eps I)^-1 R12
    p12 = _matmul(_matmul(r12, _inv(_plus_eps(r2, eps))), _transpose(r12))
    p21 = _matmul(_matmul(_transpose(r12), _inv(_plus_eps(r1, eps))), r12)
    re12 = [[r1[i][j] - p12[i][j] for j in range(d)] for i in range(d)]
    re21 = [[r2[i][j] - p21[i][j] for j in range(d)] for i in range(d)]
    ldmi = (
        _logdet(_plus_eps(r1, eps))
        + _logdet(_plus_eps(r2, eps))
        - _logdet(_plus_eps(re12, eps))
        - _logdet(_plus_eps(re21, eps))
    ) / d
    return loss, {"mu1": mu1, "r1": r1, "mu2": mu2, "r2": r2, "r12": r12}, ldmi


def _state_lists(state: CorInfoMaxState) -> dict[str, list]:
    return {key: value.tolist() for key, value in state._asdict().items()}


def test_corinfomax_matches_algorithm1_over_two_steps() -> None:
    n, d, alpha, lambd, eps = 6, 3, 7.0, 0.3, 1e-3
    state = initial_state(d)
    ref_state = _state_lists(state)
    for step in range(2):  # the second step starts from a non-trivial history
        z1, z2 = _unit_rows(_randn(n, d, seed=2 * step)), _unit_rows(_randn(n, d, seed=2 * step + 1))
        loss, state, terms = corinfomax_loss(z1, z2, state, alpha, lambd, eps)
        ref_loss, ref_state, ref_ldmi = corinfomax_reference(z1.tolist(), z2.tolist(), ref_state, alpha, lambd, eps)
        assert loss.item() == pytest.approx(ref_loss, rel=1e-10)
        assert terms["ldmi"].item() == pytest.approx(ref_ldmi, rel=1e-9)
        for key, value in ref_state.items():
            np.testing.assert_allclose(getattr(state, key).numpy(), np.array(value), rtol=1e-12, atol=1e-15)


def test_corinfomax_hand_computed() -> None:
    # lambda 0: R is the batch covariance. z1 = z2 = [[1, 0], [-1, 0], [0, 1], [0, -1]] has mean 0 and R = I / 2
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    loss, state, terms = corinfomax_loss(z, z, initial_state(2), 1000.0, 0.0, 0.0)
    torch.testing.assert_close(state.r1, torch.eye(2, dtype=torch.float64) / 2)
    # -(2 log(1/4)) / 2 = log 4; the views agree, so the attraction is 0
    assert loss.item() == pytest.approx(math.log(4.0), rel=1e-12)
    assert terms["attraction"].item() == 0.0


def test_corinfomax_logdet_term_prefers_whitened_embeddings() -> None:
    base = _randn(512, 4, seed=20)
    mixing = torch.tensor([[1.0, 0.9, 0.9, 0.9], [0, 0.3, 0, 0], [0, 0, 0.3, 0], [0, 0, 0, 0.3]], dtype=torch.float64)
    whitened, correlated = _unit_rows(base), _unit_rows(base @ mixing)
    _, _, white = corinfomax_loss(whitened, whitened, initial_state(4), 1.0, 0.0, 1e-8)
    _, _, corr = corinfomax_loss(correlated, correlated, initial_state(4), 1.0, 0.0, 1e-8)
    # the logdet rises for spread-out embeddings, so the (negated) big-bang term falls
    assert white["big_bang"].item() < corr["big_bang"].item() - 1.0


def test_corinfomax_gradient_flows_through_current_batch_only() -> None:
    z1, z2 = _unit_rows(_randn(8, 3, seed=30)).requires_grad_(), _unit_rows(_randn(8, 3, seed=31)).requires_grad_()
    state = initial_state(3)
    loss, new_state, _ = corinfomax_loss(z1, z2, state, 1.0, 0.5, 1e-8)
    loss.backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    assert all(not t.requires_grad for t in new_state)
    torch.testing.assert_close(state.r1, torch.eye(3, dtype=torch.float64))  # the input state is not modified


def test_corinfomax_float64_statistics_under_bf16_autocast() -> None:
    z1, z2 = _unit_rows(torch.randn(16, 4)).bfloat16(), _unit_rows(torch.randn(16, 4)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, state, _ = corinfomax_loss(z1, z2, initial_state(4), 1000.0, 0.01, 1e-8)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(t.dtype == torch.float64 for t in state)


# ---------------------------------------------------------------- W-MSE transcription


def _cholesky(a: Matrix) -> Matrix:
    n = len(a)
    lower = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            s = a[i][j] - sum(lower[i][k] * lower[j][k] for k in range(j))
            lower[i][j] = math.sqrt(s) if i == j else s / lower[j][j]
    return lower


def whiten_reference(v: Matrix, eps: float) -> Matrix:
    """z = L^{-1} (v - mu), Sigma = 1/(M-1) sum (v - mu)(v - mu)^T shrunk to (1 - eps) Sigma + eps I = L L^T."""
    m, k = len(v), len(v[0])
    mu = [sum(row[j] for row in v) / m for j in range(k)]
    vc = [[row[j] - mu[j] for j in range(k)] for row in v]
    sigma = [[sum(r[i] * r[j] for r in vc) / (m - 1) for j in range(k)] for i in range(k)]
    lower = _cholesky([[(1 - eps) * sigma[i][j] + eps * (i == j) for j in range(k)] for i in range(k)])
    out = []
    for row in vc:  # forward substitution: L z = v - mu
        z: list[float] = []
        for i in range(k):
            z.append((row[i] - sum(lower[i][j] * z[j] for j in range(i))) / lower[i][i])
        out.append(z)
    return out


def wmse_reference(v: list[Matrix], perm: list[int], w_size: int, eps: float) -> float:
    """L = 2 / (N d (d-1)) sum over positive pairs of |z_i/|z_i| - z_j/|z_j||^2, whitening per slice and view."""
    d, n = len(v), len(v[0])
    z: list[dict[int, list[float]]] = [{} for _ in range(d)]
    for start in range(0, n, w_size):
        idx = perm[start : start + w_size]
        for view in range(d):
            for image, row in zip(idx, whiten_reference([v[view][b] for b in idx], eps)):
                norm = math.sqrt(sum(x * x for x in row))
                z[view][image] = [x / norm for x in row]
    total = 0.0
    for image in range(n):
        for i in range(d):
            for j in range(i + 1, d):
                total += sum((a - b) ** 2 for a, b in zip(z[i][image], z[j][image]))
    return 2 * total / (n * d * (d - 1))


@pytest.mark.parametrize("views,n,k,w_size,eps", [(2, 8, 3, 4, 0.0), (3, 12, 2, 6, 0.1)])
def test_wmse_matches_loss_definition(views: int, n: int, k: int, w_size: int, eps: float) -> None:
    v = _randn(views, n, k, seed=40)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(41))
    expected = wmse_reference(v.tolist(), perm.tolist(), w_size, eps)
    assert wmse_loss(v, perm, w_size, eps).item() == pytest.approx(expected, rel=1e-10)


def test_whitened_slice_has_identity_covariance() -> None:
    mixing = torch.tensor([[2.0, 0.5, 0.0], [0.0, 1.0, 0.7], [0.3, 0.0, 0.5]])
    v = torch.randn(3, 64, 3, generator=torch.Generator().manual_seed(42)) @ mixing + 5.0  # 3 slices, float32
    z = cholesky_whiten(v, 0.0)
    for s in range(3):
        zc = z[s] - z[s].mean(0)
        torch.testing.assert_close(zc.T @ zc / 63, torch.eye(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(z[s].mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    # W = L^{-1} is lower triangular: the first coordinate is only standardised
    first = v[0, :, 0] - v[0, :, 0].mean()
    torch.testing.assert_close(z[0, :, 0], first / first.std(), atol=1e-5, rtol=1e-5)


def test_whitening_full_shrinkage_only_centres() -> None:
    v = _randn(10, 3, seed=43)
    torch.testing.assert_close(cholesky_whiten(v, 1.0), v - v.mean(0))


def test_whitening_is_differentiable() -> None:
    v = _randn(7, 2, seed=44).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: cholesky_whiten(x, 0.0), (v,))


# ---------------------------------------------------------------- methods

HEADS: dict[type[Method], dict[str, object]] = {
    CorInfoMax: {"projector": "32-32-8"},
    WMSE: {"projector": "16-4", "w_size": 8},
}


def _views(seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    return Views(crops=crops, clean=None, labels=torch.full((8,), -1), index=torch.arange(8))


def _build(cls: type[Method], **overrides: object) -> Method:
    params = cls.Params(**{**HEADS[cls], **overrides})
    torch.manual_seed(0)
    return cls(SmallCNN(3, 4), params, num_classes=10, image_shape=(3, 16, 16))


@pytest.mark.parametrize("cls", [CorInfoMax, WMSE])
def test_method_forward_backward_and_state_dict(cls: type[Method]) -> None:
    method = _build(cls)
    out = method(_views(), step=0, total_steps=10)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(not v.requires_grad and torch.isfinite(v) for v in out.logs.values())
    out.loss.backward()
    for module in (method.backbone, method.projector):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    clone = _build(cls)
    clone.load_state_dict(method.state_dict())
    for key, value in method.state_dict().items():
        assert torch.equal(clone.state_dict()[key], value), key


def test_corinfomax_running_covariance_follows_ema_recursion() -> None:
    lambd = 0.5
    method = _build(CorInfoMax, lambd=lambd)
    assert isinstance(method, CorInfoMax)
    batches = [_views(seed) for seed in range(3)]
    for step, views in enumerate(batches):
        method(views, step, 3)
    with torch.no_grad():  # the network is unchanged, so the projections are the ones the steps saw
        zs = [[F.normalize(method.projector(method.backbone(x)), dim=1).double() for x in v.crops] for v in batches]
    for branch, (mu_buf, r_buf) in enumerate([(method.mu1, method.r1), (method.mu2, method.r2)]):
        z = [batch[branch].numpy() for batch in zs]
        # unrolled: mu_l = sum_{t<=l} (1-lam) lam^(l-t) zbar_t; R_3 = lam^3 I + sum_l (1-lam) lam^(3-l) C_l
        mus = [sum((1 - lambd) * lambd ** (l - t) * z[t].mean(0) for t in range(l + 1)) for l in range(3)]
        covs = [(z[l] - mus[l]).T @ (z[l] - mus[l]) / 8 for l in range(3)]
        r3 = lambd**3 * np.eye(8) + sum((1 - lambd) * lambd ** (2 - l) * covs[l] for l in range(3))
        np.testing.assert_allclose(mu_buf.numpy(), mus[2], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r_buf.numpy(), r3, rtol=1e-10, atol=1e-12)


def test_corinfomax_state_buffers_are_float64_constants() -> None:
    method = _build(CorInfoMax)
    assert isinstance(method, CorInfoMax)
    method(_views(), step=0, total_steps=10).loss.backward()
    buffers = dict(method.named_buffers())
    for key in CorInfoMaxState._fields:
        assert buffers[key].dtype == torch.float64
        assert not buffers[key].requires_grad and buffers[key].grad_fn is None and buffers[key].grad is None
        assert key in method.state_dict()
    assert not torch.equal(method.r1, torch.eye(8, dtype=torch.float64))  # advanced by the training step
    kept = [t.clone() for t in method.state]
    method.eval()
    method(_views(seed=1), step=1, total_steps=10)
    assert all(torch.equal(a, b) for a, b in zip(kept, method.state))  # evaluation leaves the state alone


def test_corinfomax_projector_layout() -> None:
    plain = _build(CorInfoMax)
    assert [type(m).__name__ for m in plain.projector] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert plain.projector[-1].bias is None and plain.projector[0].bias is not None
    with_bn = _build(CorInfoMax, projector_bn=True)
    assert [type(m).__name__ for m in with_bn.projector][:3] == ["Linear", "BatchNorm1d", "ReLU"]


def test_wmse_rejects_bad_slice_sizes() -> None:
    with pytest.raises(ConfigError, match="must exceed the embedding width 4"):
        _build(WMSE, w_size=4)
    method = _build(WMSE, w_size=6)
    with pytest.raises(ConfigError, match="not a multiple of method.w_size 6"):
        method(_views(), step=0, total_steps=10)


def test_wmse_names_the_fix_when_a_slice_covariance_is_singular() -> None:
    v = torch.randn(2, 8, 3, dtype=torch.float64)
    v[1, :, 2] = 1.0  # a constant dimension in the second slice: zero variance
    z = cholesky_whiten(v, 0.0)
    assert torch.isfinite(z[0]).all() and torch.isnan(z[1]).all()  # no host read: the loss turns NaN
    assert torch.isfinite(cholesky_whiten(v, 0.01)).all()
    assert "method.w_eps" in DivergedError(epoch=1, step=3, hint=WMSE.divergence_hint).fix  # what the engine then raises


def test_paper_defaults_recipes_and_optimizers() -> None:
    assert CorInfoMaxParams().model_dump(exclude=SHARED) == {
        "name": "corinfomax",
        "projector": "4096-4096-128",
        "reading": "paper",
        "projector_bn": False,
        "alpha": 1000.0,
        "lambd": 0.01,
        "eps": 1e-8,
    }
    assert WMSEParams().model_dump(exclude=SHARED) == {
        "name": "wmse",
        "projector": "1024-64",
        "reading": "paper",
        "w_size": 128,
        "w_iter": 1,
        "w_eps": 0.0,
    }
    assert CorInfoMax.recipe == "byol" and WMSE.recipe == "cifar"
    assert CorInfoMax.optimizer == {
        "name": "sgd",
        "lr": 0.5,
        "lr_scaling": "none",
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "exclude_bias_bn": False,
    }
    assert WMSE.optimizer == {
        "name": "adam",
        "lr": 1e-3,
        "lr_scaling": "none",
        "weight_decay": 1e-6,
        "exclude_bias_bn": False,
    }
