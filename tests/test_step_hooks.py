"""The method contract's step hook: declared EMA pairs follow their online modules at the method's momentum after
the optimizer step, before ``update_state``; a method cannot bypass it by overriding ``on_step_end``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.methods.base import Method, MethodParams, StepOutput
from bench.methods.ema import EmaPair, cosine_momentum, frozen_copy


class _Tiny(Method):
    """One linear layer and a batch norm as the online module, their frozen copy as the target."""

    name = "tiny"
    Params = MethodParams

    def __init__(self) -> None:
        super().__init__(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), MethodParams(name="tiny"), num_classes=2,
                         image_shape=(3, 2, 2))
        self.target = frozen_copy(self.backbone)
        self.register_buffer("target_weight_seen", torch.zeros(2, 2))

    def forward(self, views, step, total_steps):
        raise AssertionError("not called")

    def ema_pairs(self) -> list[EmaPair]:
        return [EmaPair(self.backbone, self.target)]

    def momentum(self, step: int, total_steps: int) -> float:
        return cosine_momentum(0.9, step, total_steps)

    def update_state(self, outputs: StepOutput, step: int, total_steps: int) -> None:
        self.target_weight_seen.copy_(self.target[0].weight)  # what the hook sees: the target after its EMA


def test_declared_ema_pair_gets_the_hand_computed_value_before_update_state() -> None:
    method = _Tiny()
    with torch.no_grad():
        method.backbone[0].weight.fill_(1.0)
        method.backbone[0].bias.fill_(-2.0)
        method.backbone[1].running_mean.fill_(5.0)
        for p in method.target.parameters():
            p.zero_()
    # step 3 of 10: tau = 1 - (1 - 0.9) (cos(pi 3/9) + 1) / 2 = 1 - 0.1 * 0.75 = 0.925
    assert cosine_momentum(0.9, 3, 10) == pytest.approx(0.925, abs=1e-15)
    method.on_step_end(StepOutput(torch.zeros(())), step=3, total_steps=10)
    torch.testing.assert_close(method.target[0].weight, torch.full((2, 2), 0.075))  # 0.925 * 0 + 0.075 * 1
    torch.testing.assert_close(method.target[0].bias, torch.full((2,), -0.15))  # 0.075 * -2
    torch.testing.assert_close(method.target[1].weight, torch.full((2,), 0.075))  # BN gamma 1
    assert torch.equal(method.target[1].running_mean, torch.full((2,), 5.0))  # buffers are copied
    assert torch.equal(method.target_weight_seen, method.target[0].weight)  # update_state ran after the EMA
    assert all(p.requires_grad for p in method.backbone.parameters())  # the online module is left alone
    torch.testing.assert_close(method.backbone[0].weight, torch.ones(2, 2))


def test_a_method_that_overrides_on_step_end_is_refused() -> None:
    with pytest.raises(TypeError, match="overrides Method.on_step_end; override ema_pairs, momentum or update_state"):
        type("Bypass", (_Tiny,), {"on_step_end": lambda self, outputs, step, total_steps: None})


def test_a_method_that_declares_ema_pairs_without_a_momentum_is_refused() -> None:
    with pytest.raises(TypeError, match="NoSchedule declares ema_pairs but no momentum schedule"):
        type("NoSchedule", (Method,), {"ema_pairs": lambda self: []})
