"""SwAV and DINO: Sinkhorn codes, swapped prediction, DINO loss, centre and teacher, against loop transcriptions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.data.views import Views
from bench.errors import ConfigError
from bench.methods.base import Method
from bench.methods.dino import DINO, DINOParams, dino_loss, teacher_temperature
from bench.methods.swav import SwAV, SwAVParams, sinkhorn_knopp, swav_loss
from bench.models.backbones import SmallCNN
from method_checks import forward_backward

Matrix = list[list[float]]


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(row: list[float], temp: float) -> list[float]:
    exps = [math.exp(x / temp) for x in row]
    return [e / sum(exps) for e in exps]


# ---------------------------------------------------------------- loop transcriptions


def sinkhorn_reference(scores: Matrix, eps: float, iterations: int) -> Matrix:
    """Q = exp(C^T Z / eps) (K x B), normalised to total 1, then rows to 1/K and columns to 1/B in turn; x B."""
    n, k = len(scores), len(scores[0])
    q = [[math.exp(scores[b][j] / eps) for b in range(n)] for j in range(k)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        q = [[x / sum(row) / k for x in row] for row in q]
        cols = [sum(q[j][b] for j in range(k)) for b in range(n)]
        q = [[q[j][b] / cols[b] / n for b in range(n)] for j in range(k)]
    return [[q[j][b] * n for j in range(k)] for b in range(n)]


def swav_reference(scores: list[Matrix], codes: list[Matrix], tau: float) -> float:
    """SwAV multi-crop loss: sum_i sum_{v != i} l(z_v, q_i), l = -sum_k q_i^(k) log p_v^(k), batch mean, pair mean."""
    total, pairs = 0.0, 0
    for i, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v == i:
                continue
            ell = 0.0
            for b in range(len(s)):
                p = _softmax(s[b], tau)
                ell -= sum(q[b][k] * math.log(p[k]) for k in range(len(p)))
            total += ell / len(s)
            pairs += 1
    return total / pairs


def dino_reference(student: list[Matrix], teacher: list[Matrix], centre: list[float], tau_s: float, tau_t: float) -> float:
    """DINO Eq. 3: mean over (t, s != t) of H(P_t, P_s) = -sum_k P_t^(k) log P_s^(k), batch mean."""
    total, pairs = 0.0, 0
    for t, out_t in enumerate(teacher):
        for s, out_s in enumerate(student):
            if s == t:
                continue
            h = 0.0
            for b in range(len(out_s)):
                pt = _softmax([x - c for x, c in zip(out_t[b], centre)], tau_t)
                ps = _softmax(out_s[b], tau_s)
                h -= sum(a * math.log(c) for a, c in zip(pt, ps))
            total += h / len(out_s)
            pairs += 1
    return total / pairs


# ---------------------------------------------------------------- Sinkhorn and losses


def test_sinkhorn_matches_transcription() -> None:
    scores = _randn(6, 4, seed=1).tanh()
    got = sinkhorn_knopp(scores, 0.05, 3)
    expected = torch.tensor(sinkhorn_reference(scores.tolist(), 0.05, 3), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,k", [(8, 5), (12, 3)])
def test_sinkhorn_equal_partition(n: int, k: int) -> None:
    scores = _randn(n, k, seed=n).tanh()
    codes = sinkhorn_knopp(scores, 0.5, 3)
    assert (codes >= 0).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)
    converged = sinkhorn_knopp(scores, 0.5, 200)  # rows of Q (prototypes) reach 1/K, i.e. B/K after x B
    torch.testing.assert_close(converged.sum(dim=0), torch.full((k,), n / k, dtype=torch.float64), rtol=0, atol=1e-8)
    torch.testing.assert_close(converged.sum(dim=1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)


def test_sinkhorn_float32_under_bf16_autocast() -> None:
    scores = _randn(16, 10, seed=3).float().tanh()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sinkhorn_knopp(scores.bfloat16(), 0.05, 3)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()


@pytest.mark.parametrize("views,globals_", [(2, 2), (4, 2), (3, 1)])
def test_swav_loss_matches_transcription(views: int, globals_: int) -> None:
    scores = _randn(views, 5, 4, seed=4).tanh()
    codes = torch.stack([sinkhorn_knopp(scores[i], 0.05, 3) for i in range(globals_)])
    expected = swav_reference(scores.tolist(), codes.tolist(), 0.1)
    assert swav_loss(scores, codes, 0.1).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("views", [2, 4])
def test_dino_loss_matches_transcription(views: int) -> None:
    student, teacher, centre = _randn(views, 5, 6, seed=5), _randn(2, 5, 6, seed=6), _randn(6, seed=7)
    expected = dino_reference(student.tolist(), teacher.tolist(), centre.tolist(), 0.1, 0.04)
    assert dino_loss(student, teacher, centre, 0.1, 0.04).item() == pytest.approx(expected, rel=1e-10)


def test_teacher_temperature_schedule() -> None:
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.3) == 0.04
    assert teacher_temperature(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055, abs=1e-15)
    assert teacher_temperature(30, 100, 0.04, 0.07, 0.3) == 0.07
    assert teacher_temperature(99, 100, 0.04, 0.07, 0.3) == 0.07
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.0) == 0.07  # no warm-up


# ---------------------------------------------------------------- methods

TINY = {"swav": (SwAV, {"projector": "32-16", "num_prototypes": 10}), "dino": (DINO, {"projector": "32-32-8", "out_dim": 12})}


def _views(seed: int = 0, local: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    crops += [torch.randn(8, 3, 8, 8, generator=g) for _ in range(local)]
    return Views(crops=crops, clean=None, labels=torch.full((8,), -1), index=torch.arange(8))


def _build(name: str, **overrides: object) -> Method:
    cls, heads = TINY[name]
    torch.manual_seed(0)
    return cls(SmallCNN(3, 4), cls.Params(**{**heads, **overrides}), num_classes=10, image_shape=(3, 16, 16))


@pytest.mark.parametrize("local", [0, 2])
@pytest.mark.parametrize("name", sorted(TINY))
def test_method_forward_backward_and_state(name: str, local: int) -> None:
    method = _build(name, freeze_prototypes_steps=0) if name == "swav" else _build(name)
    method.on_step_end(forward_backward(method, _views(local=local)), step=0, total_steps=10)
    state = method.state_dict()
    fresh = _build(name)
    fresh.load_state_dict(state)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())


def test_too_few_crops_is_a_config_error() -> None:
    views = _views()
    views.crops = views.crops[:1]
    with pytest.raises(ConfigError, match="method.global_crops=2"):
        _build("dino")(views, step=0, total_steps=10)


def test_swav_prototypes_normalised_and_frozen_early() -> None:
    method = _build("swav", freeze_prototypes_steps=3)
    assert isinstance(method, SwAV)
    method(_views(), step=2, total_steps=10).loss.backward()
    assert method.prototypes.weight.grad is None
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(10))
    method(_views(), step=3, total_steps=10).loss.backward()
    assert method.prototypes.weight.grad is not None and method.prototypes.weight.grad.abs().sum() > 0


def test_swav_queue_fills_newest_first_then_joins_codes() -> None:
    method = _build("swav", queue_length=16)
    assert isinstance(method, SwAV)
    method.eval()  # batch norm on running statistics, so embeddings can be recomputed crop by crop
    embeddings = []
    for step in range(3):
        views = _views(seed=step)
        out = method(views, step=step, total_steps=10)
        assert out.logs["queue_in_use"].item() == float(step >= 2)
        with torch.no_grad():
            embeddings.append(torch.stack([F.normalize(method.projector(method.backbone(x)), dim=1) for x in views.crops]))
        method.on_step_end(out, step=step, total_steps=10)
    torch.testing.assert_close(method.queue, torch.cat([embeddings[2], embeddings[1]], dim=1), rtol=1e-5, atol=1e-6)
    assert "queue" in method.state_dict()


def test_dino_teacher_gets_no_gradient_and_centre_follows_ema() -> None:
    method = _build("dino")
    assert isinstance(method, DINO)
    teacher = [*method.teacher_backbone.parameters(), *method.teacher_head.parameters()]
    expected = torch.zeros(12)
    for step in range(2):
        views = _views(seed=step, local=2)
        with torch.no_grad():  # the teacher's outputs on the two global crops, as one batch
            batch_mean = method.teacher_head(method.teacher_backbone(torch.cat(views.crops[:2]))).mean(dim=0)
        out = method(views, step=step, total_steps=10)
        out.loss.backward()
        assert all(p.grad is None and not p.requires_grad for p in teacher)
        assert method.head.last.weight.grad is not None
        with torch.no_grad():  # an SGD step on the student
            for p in [*method.backbone.parameters(), *method.head.parameters()]:
                p -= 0.5 * p.grad
                p.grad = None
        method.on_step_end(out, step=step, total_steps=10)
        expected = 0.9 * expected + 0.1 * batch_mean  # c <- m c + (1 - m) mean_b g_t(x_b)
    torch.testing.assert_close(method.centre, expected, rtol=1e-5, atol=1e-7)
    assert not all(torch.equal(t, s) for t, s in zip(method.teacher_head.parameters(), method.head.parameters()))


def test_dino_head_options_batch_norm_learned_norms_and_frozen_last_layer() -> None:
    plain, with_bn = _build("dino"), _build("dino", head_bn=True)
    assert isinstance(plain, DINO) and isinstance(with_bn, DINO)
    kinds = [type(m).__name__ for m in with_bn.head.mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]
    assert [type(m).__name__ for m in plain.head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    # fixed norms: logits are cosines; learned norms g scale each output's row
    x = torch.randn(5, plain.backbone.out_dim)
    assert plain.head(x).abs().max() <= 1 + 1e-6 and plain.head.last_g is None
    learned = _build("dino", norm_last_layer=False)
    assert isinstance(learned, DINO) and learned.head.last_g is not None
    with torch.no_grad():
        learned.head.last_g.fill_(3.0)
    torch.testing.assert_close(learned.head(x), 3.0 * plain.head(x))
    # frozen for the first 20 % of the steps: no gradient reaches the last layer (v and g), the rest trains
    method = _build("dino", freeze_last_layer=0.2, norm_last_layer=False)
    assert isinstance(method, DINO)
    method(_views(), step=1, total_steps=10).loss.backward()
    assert method.head.last.weight.grad is None and method.head.last_g.grad is None
    assert method.head.mlp[0].weight.grad.abs().sum() > 0
    method(_views(), step=2, total_steps=10).loss.backward()
    assert method.head.last.weight.grad.abs().sum() > 0 and method.head.last_g.grad.abs().sum() > 0


def test_paper_defaults_and_optimizers() -> None:
    swav = SwAVParams()
    assert (swav.projector, swav.num_prototypes, swav.temperature, swav.epsilon, swav.sinkhorn_iterations) == (
        "2048-128", 3000, 0.1, 0.05, 3)
    assert (swav.queue_length, swav.global_crops, swav.freeze_prototypes_steps) == (0, 2, 313)
    dino = DINOParams()
    assert (dino.projector, dino.out_dim, dino.momentum_base, dino.student_temp, dino.center_momentum) == (
        "2048-2048-256", 65536, 0.996, 0.1, 0.9)
    assert (dino.teacher_temp, dino.warmup_teacher_temp, dino.teacher_temp_warmup) == (0.04, 0.04, 0.0)
    assert (dino.head_bn, dino.norm_last_layer, dino.freeze_last_layer) == (False, True, 0.0)
    assert SwAV.recipe == DINO.recipe == "multicrop"
    assert SwAV.optimizer == {"name": "lars", "lr": 0.6, "lr_scaling": "linear", "weight_decay": 1e-6, "momentum": 0.9, "exclude_bias_bn": False}
    assert DINO.optimizer == {"name": "sgd", "lr": 0.03, "lr_scaling": "linear", "weight_decay": 1e-4, "momentum": 0.9, "exclude_bias_bn": True}
