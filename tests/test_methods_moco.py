"""MoCo v2 and v3: losses against loop transcriptions, the FIFO queue, the key-encoder EMA, smoke tests."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.data.views import Views
from bench.errors import ConfigError
from bench.methods import Method
from bench.methods.base import StepOutput
from bench.methods.mocov2 import MoCoV2, MoCoV2Params, moco_loss
from bench.methods.mocov3 import MoCoV3, MoCoV3Params, mocov3_loss
from bench.models.backbones import SmallCNN
from method_checks import forward_backward, reassigned

Matrix = list[list[float]]


#: MethodParams fields of every method (tested in tests/test_vit.py): no preset, one encoder for both views
SHARED = {"preset", "branches"}


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v))


def _unit(u: list[float]) -> list[float]:
    norm = math.sqrt(_dot(u, u))
    return [a / norm for a in u]


# ---------------------------------------------------------------- loop transcriptions


def moco_reference(q: Matrix, k: Matrix, queue: Matrix, tau: float) -> float:
    """MoCo Eq. 1, L_q = -log exp(q.k+/tau) / sum_{i=0}^{K} exp(q.k_i/tau), averaged over the queries."""
    total = 0.0
    for qb, kb in zip(q, k):
        qn, kn = _unit(qb), _unit(kb)
        positive = math.exp(_dot(qn, kn) / tau)
        denominator = positive + sum(math.exp(_dot(qn, negative) / tau) for negative in queue)
        total += -math.log(positive / denominator)
    return total / len(q)


def mocov3_reference(q1: Matrix, q2: Matrix, k1: Matrix, k2: Matrix, tau: float) -> float:
    """MoCo v3 Algorithm 1: ctr(q1, k2) + ctr(q2, k1), ctr = 2 tau CE(q k^T / tau, diagonal targets)."""

    def ctr(q: Matrix, k: Matrix) -> float:
        total = 0.0
        for i in range(len(q)):
            logits = [_dot(_unit(q[i]), _unit(k[j])) / tau for j in range(len(k))]
            total += -math.log(math.exp(logits[i]) / sum(math.exp(x) for x in logits))
        return 2 * tau * total / len(q)

    return ctr(q1, k2) + ctr(q2, k1)


# ---------------------------------------------------------------- losses


@pytest.mark.parametrize("n,d,size,tau", [(3, 4, 5, 0.2), (5, 3, 7, 0.07), (4, 6, 2, 1.0)])
def test_moco_loss_matches_eq1(n: int, d: int, size: int, tau: float) -> None:
    q, k = _randn(n, d, seed=1), _randn(n, d, seed=2) * 3.0  # the loss normalises q and k itself
    queue = F.normalize(_randn(size, d, seed=3), dim=1)
    expected = moco_reference(q.tolist(), k.tolist(), queue.tolist(), tau)
    assert moco_loss(q, k, queue, tau).item() == pytest.approx(expected, rel=1e-10)


def test_moco_loss_hand_computed() -> None:
    # q parallel to its key, orthogonal to all three negatives: logits (1/tau, 0, 0, 0)
    q = torch.tensor([[2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    k = torch.tensor([[0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    queue = torch.eye(4, dtype=torch.float64)[1:]
    assert moco_loss(q, k, queue, 0.5).item() == pytest.approx(math.log(math.e**2 + 3) - 2, rel=1e-12)


@pytest.mark.parametrize("n,d,tau", [(3, 4, 1.0), (5, 3, 0.2)])
def test_mocov3_loss_matches_algorithm1(n: int, d: int, tau: float) -> None:
    q1, q2, k1, k2 = (_randn(n, d, seed=s) for s in range(4, 8))
    expected = mocov3_reference(q1.tolist(), q2.tolist(), k1.tolist(), k2.tolist(), tau)
    assert mocov3_loss(q1, q2, k1, k2, tau).item() == pytest.approx(expected, rel=1e-10)


def test_mocov3_loss_hand_computed() -> None:
    # q = k = orthonormal rows, tau 1: every ctr row has logits (1, 0) -> 2 (log(e + 1) - 1) per ctr
    e = torch.eye(2, dtype=torch.float64)
    assert mocov3_loss(e, e, e, e, 1.0).item() == pytest.approx(4 * (math.log(math.e + 1) - 1), rel=1e-12)


def test_losses_stop_the_key_gradient() -> None:
    q1, q2, k1, k2 = (_randn(4, 3, seed=s).requires_grad_() for s in range(8, 12))
    queue = F.normalize(_randn(5, 3, seed=12), dim=1).requires_grad_()
    (moco_loss(q1, k2, queue, 0.2) + mocov3_loss(q1, q2, k1, k2, 1.0)).backward()
    assert k1.grad is None and k2.grad is None and queue.grad is None
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in (q1, q2))


def test_losses_run_in_float32_under_bf16_autocast() -> None:
    q, k = torch.randn(6, 4).bfloat16(), torch.randn(6, 4).bfloat16()
    queue = F.normalize(torch.randn(8, 4), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert moco_loss(q, k, queue, 0.2).dtype == torch.float32
        assert mocov3_loss(q, q, k, k, 1.0).dtype == torch.float32


# ---------------------------------------------------------------- methods

TINY = {
    "mocov2": (MoCoV2, {"projector": "16-8", "queue_size": 32}),
    "mocov2_symmetric": (MoCoV2, {"projector": "16-8", "queue_size": 32, "symmetric": True}),
    "mocov3": (MoCoV3, {"projector": "16-16-8", "predictor": "16-8"}),
}


def _views(n: int = 8, seed: int = 0) -> Views:
    g = torch.Generator().manual_seed(seed)
    crops = [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]
    return Views(crops=crops, clean=None, labels=torch.full((n,), -1), index=torch.arange(n))


def _build(kind: str, seed: int = 0, **overrides: object) -> Method:
    cls, tiny = TINY[kind]
    torch.manual_seed(seed)
    return cls(SmallCNN(3, 4), cls.Params(**{**tiny, **overrides}), num_classes=10, image_shape=(3, 16, 16))


def _key_modules(method: Method) -> list[torch.nn.Module]:
    return [method.key_backbone, method.key_projector]


def _query_modules(method: Method) -> list[torch.nn.Module]:
    return [method.backbone, method.projector]


@pytest.mark.parametrize("kind", sorted(TINY))
def test_method_forward_backward_and_state_dict(kind: str) -> None:
    method = _build(kind)
    out = forward_backward(method, _views())
    keys = [p for m in _key_modules(method) for p in m.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in keys)  # keys carry no gradient
    method.on_step_end(out, step=0, total_steps=10)

    fresh = _build(kind, seed=1)
    fresh.load_state_dict(method.state_dict())
    restored = fresh.state_dict()
    assert all(torch.equal(v, restored[name]) for name, v in method.state_dict().items())
    if isinstance(method, MoCoV2):
        assert {"queue", "queue_ptr"} <= set(restored)


@pytest.mark.parametrize("symmetric", [False, True])
def test_mocov2_queue_holds_the_last_keys_in_fifo_order(symmetric: bool) -> None:
    method = _build("mocov2", queue_size=16, symmetric=symmetric, bn_splits=1)
    assert isinstance(method, MoCoV2)
    history = list(method.queue.clone())  # the random unit vectors it starts with
    assert all(row.norm().item() == pytest.approx(1.0, rel=1e-6) for row in history)
    for step in range(4):  # 6 (or 12) keys per step: the 16 slots wrap
        views = _views(n=6, seed=step)
        queue_before = method.queue.clone()
        out = method(views, step, total_steps=4)
        with torch.no_grad():
            q1, q2 = (method.projector(method.backbone(x)) for x in views.crops)
            k1, k2 = (F.normalize(method.key_projector(method.key_backbone(x)), dim=1) for x in views.crops)
        if symmetric:
            expected = (moco_loss(q1, k2, queue_before, 0.2) + moco_loss(q2, k1, queue_before, 0.2)) / 2
            history += [*k1, *k2]
        else:
            expected = moco_loss(q1, k2, queue_before, 0.2)  # query from crop 1, key from crop 2
            history += list(k2)
        torch.testing.assert_close(out.loss, expected)  # the negatives are the queue before this step's keys
        method.on_step_end(out, step, total_steps=4)
        assert method.queue_ptr.item() == (len(history) - 16) % 16
        oldest_first = method.queue.roll(-method.queue_ptr.item(), dims=0)
        torch.testing.assert_close(oldest_first, torch.stack(history[-16:]))


def test_mocov2_enqueues_the_keys_of_the_step_outputs_and_keeps_none_on_the_module() -> None:
    method = _build("mocov2", queue_size=16, bn_splits=1)
    kept = dict(vars(method))
    out = method(_views(n=6), step=0, total_steps=4)
    assert reassigned(method, kept) == []  # the step's keys live in its outputs only
    assert out.state["keys"].shape == (6, 8) and "keys" not in out.logs
    keys = _randn(6, 8, seed=5).float()  # the hook enqueues what the outputs hold
    method.on_step_end(StepOutput(out.loss, out.logs, {"keys": keys}), step=0, total_steps=4)
    torch.testing.assert_close(method.queue[:6], F.normalize(keys, dim=1))
    assert method.queue_ptr.item() == 6


def test_mocov2_shuffled_bn_keeps_each_key_with_its_image_but_not_its_bn_group() -> None:
    method = _build("mocov2", queue_size=16, bn_splits=2)
    x = _views(n=8, seed=0).crops[1]
    torch.manual_seed(3)
    keys = method._key(x)
    torch.manual_seed(3)
    order = torch.randperm(8)
    with torch.no_grad():  # each half of the shuffled batch normalised by its own statistics
        groups = [method.key_projector(method.key_backbone(x[order[i:i + 4]])) for i in (0, 4)]
    torch.testing.assert_close(keys, torch.cat(groups)[order.argsort()])
    method.eval()  # without batch statistics the shuffling is invisible: key i is f_k(x_i)
    with torch.no_grad():
        torch.testing.assert_close(method._key(x), method.key_projector(method.key_backbone(x)))


@pytest.mark.parametrize(
    "kind,overrides,m",
    [
        ("mocov2", {"momentum": 0.9}, 0.9),
        ("mocov2", {"momentum": 0.9, "momentum_schedule": "cosine"}, 1 - 0.1 * (math.cos(math.pi * 3 / 9) + 1) / 2),
        ("mocov3", {"momentum": 0.9}, 1 - 0.1 * (math.cos(math.pi * 3 / 9) + 1) / 2),
    ],
)
def test_key_encoder_follows_ema(kind: str, overrides: dict[str, object], m: float) -> None:
    method = _build(kind, **overrides)
    out = method(_views(), step=3, total_steps=10)
    assert out.logs["momentum"].item() == pytest.approx(m, rel=1e-6)
    out.loss.backward()
    keys = [p for mod in _key_modules(method) for p in mod.parameters()]
    before = [p.detach().clone() for p in keys]
    with torch.no_grad():  # an SGD step on the query encoder
        for p in method.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    method.on_step_end(out, step=3, total_steps=10)
    queries = [p for mod in _query_modules(method) for p in mod.parameters()]
    for old, new, theta in zip(before, keys, queries):
        torch.testing.assert_close(new, m * old + (1 - m) * theta.detach())
    assert any(not torch.equal(old, new) for old, new in zip(before, keys))
    for key_module, query_module in zip(_key_modules(method), _query_modules(method)):
        assert all(torch.equal(a, b) for a, b in zip(key_module.buffers(), query_module.buffers()))


def test_mocov3_predictor_must_end_at_projector_width() -> None:
    with pytest.raises(ConfigError, match="must end at the projector width 8"):
        _build("mocov3", predictor="16-4")


def test_mocov3_heads_follow_the_paper() -> None:
    method = _build("mocov3")
    last_bn = method.projector[-1]
    assert isinstance(last_bn, torch.nn.BatchNorm1d) and not last_bn.affine
    assert isinstance(method.predictor[-1], torch.nn.BatchNorm1d) and method.predictor[-1].affine  # the paper: BN on every layer
    code = _build("mocov3", reading="code")  # the official code: a plain Linear last
    assert isinstance(code.predictor[-1], torch.nn.Linear) and code.predictor[-1].bias is not None


def test_paper_defaults_recipes_and_optimizers() -> None:
    assert MoCoV2Params().model_dump(exclude=SHARED) == {
        "name": "mocov2",
        "projector": "2048-128",
        "reading": "paper",
        "queue_size": 65536,
        "temperature": 0.2,
        "momentum": 0.999,
        "momentum_schedule": "constant",
        "symmetric": False,
        "bn_splits": 8,
    }
    assert MoCoV3Params().model_dump(exclude=SHARED) == {
        "name": "mocov3",
        "projector": "4096-4096-256",
        "reading": "paper",
        "predictor": "4096-256",
        "predictor_last_bn": True,
        "temperature": 1.0,
        "momentum": 0.99,
    }
    assert (MoCoV2.recipe, MoCoV3.recipe) == ("simclr", "byol")
    common = {"lr_scaling": "linear", "momentum": 0.9}
    assert MoCoV2.optimizer == {**common, "name": "sgd", "lr": 0.03, "weight_decay": 1e-4, "exclude_bias_bn": False}
    assert MoCoV3.optimizer == {**common, "name": "lars", "lr": 0.3, "weight_decay": 1.5e-6, "exclude_bias_bn": True}
