"""Checks every method test shares: one training step gives a finite loss and gradients in the backbone (its trainable part)."""

import torch

from bench.methods.base import StepOutput


def forward_backward(method, views) -> StepOutput:
    """Step 0 of ``method`` on ``views`` and its backward pass; returns the method's outputs.

    The loss is a finite scalar, the logged values and the step state are detached and finite, and every backbone
    parameter gets a finite gradient, not all zero.
    """
    out = method(views, step=0, total_steps=10)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert all(not v.requires_grad and torch.isfinite(v).all() for v in (*out.logs.values(), *out.state.values()))
    out.loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.requires_grad]  # frozen ones (a fixed position embedding) get none
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    return out


def reassigned(method, kept: dict) -> list[str]:
    """The plain attributes of ``method`` (not its parameters, buffers or submodules) added, removed or rebound since
    ``kept = dict(vars(method))``: a method keeps nothing of a step on the module (it returns it in its outputs)."""
    now = vars(method)
    return sorted(k for k in {*kept, *now} if now.get(k, reassigned) is not kept.get(k, reassigned))
