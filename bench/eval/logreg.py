"""Logistic regression on cached features: multinomial, full-batch L-BFGS, C chosen on validation, refit on train + val.

DINOv2 / DINOv3 (``dinov2/eval/log_regression.py``) and ssl-transfer: standardised features, the regularisation
C swept over DINOv2's 45-value grid ``10 ** linspace(-6, 5, 45)``, the C with the best validation top-1 (ties: the
smaller C) refitted on train + val and scored on test once. The objective is scikit-learn's lbfgs one,
``C * sum_i CE_i + ||W||^2 / 2`` divided by ``C * N``: the mean cross-entropy plus ``||W||^2 / (2 C N)``, the
intercept not penalised. It is solved in torch on the features' device (zero start, strong-Wolfe line search,
gradients written by hand), so the probe is deterministic. The sweep runs from small to large C, each fit
starting from the previous solution (ssl-transfer's ``warm_start``), and stops once ``patience`` grid steps in a
row bring neither a better validation top-1 nor a lower validation cross-entropy. The top-1 alone can stay flat
for a while at small C (every fit predicts about the same), the cross-entropy falls there; past the best C the
top-1 falls off or stays on a plateau (where a larger C could only tie, and ties keep the smaller C) and the
cross-entropy rises as the weights grow. The large-C fits are the slow ones, so this saves most of the sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.core.cost import timed
from bench.eval.features import Choice, Features, check_labels, standardizer, topk_correct
from bench.eval.fractions import class_balanced_subset
from bench.schema import ConfigModel

#: DINOv2's C grid (``C_POWER_RANGE = torch.linspace(-6, 5, 45)``): 1e-6 .. 1e5, a quarter decade apart
C_GRID: tuple[float, ...] = tuple((10 ** torch.linspace(-6, 5, 45, dtype=torch.float64)).tolist())

Weights = tuple[torch.Tensor, torch.Tensor]  #: W (K, D), as nn.Linear's, and intercept (K,)


class LogRegConfig(ConfigModel):
    """L-BFGS logistic regression over DINOv2's C grid."""

    name: Literal["logreg"] = "logreg"
    max_iter: int = Field(1000, ge=1, description="L-BFGS iterations per C (DINOv2: 1000)")
    tolerance: float = Field(1e-4, gt=0, le=1, description="a fit stops once no gradient entry exceeds this "
                             "(scikit-learn's tol on the same mean-loss objective)")
    patience: int | None = Field(4, ge=1, description="stop the C sweep after this many grid steps (4: a decade) "
                                 "without a better validation top-1 or a lower validation loss; null sweeps all 45")
    fit_subsample: int | None = Field(150_000, ge=100, description="cost guard: fit on a class-balanced subsample of at "
                                      "most this many samples (e.g. ImageNet-1k); null fits on all")


@dataclass(frozen=True)
class Problem:
    """Standardised features in the two layouts that make both products of a step fast, and the labels one-hot (K, N)."""

    x: torch.Tensor
    xt: torch.Tensor
    onehot: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> Problem:
        return cls(x, x.T.contiguous(), F.one_hot(y, num_classes).T.to(x.dtype).contiguous())

    def objective(self, w: torch.Tensor, b: torch.Tensor, penalty: float) -> torch.Tensor:
        """``mean CE + penalty * ||W||^2``; its gradient is written into ``w.grad`` and ``b.grad`` (no autograd)."""
        z = torch.addmm(b[:, None], w, self.xt)  # (K, N) logits
        n = z.shape[1]
        loss = (torch.logsumexp(z, dim=0) - (z * self.onehot).sum(dim=0)).mean() + penalty * w.pow(2).sum()
        g = torch.softmax(z, dim=0).sub_(self.onehot).div_(n)
        w.grad = torch.addmm(w, g, self.x, beta=2 * penalty)
        b.grad = g.sum(dim=1)
        return loss


def fit_logreg(problem: Problem, c: float, cfg: LogRegConfig, start: Weights) -> Weights:
    """Minimise ``mean CE(W x + b, y) + ||W||^2 / (2 c N)`` by full-batch L-BFGS from ``start``."""
    w, b = start[0].clone(), start[1].clone()
    penalty = 1.0 / (2.0 * c * problem.x.shape[0])
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=cfg.max_iter, tolerance_grad=cfg.tolerance, tolerance_change=1e-9,
                            history_size=10, line_search_fn="strong_wolfe")
    with torch.no_grad():
        opt.step(lambda: problem.objective(w, b, penalty))
    return w, b


def guarded(feats: Features, limit: int | None) -> Features:
    """``feats``, or a class-balanced subsample (seed 0) of about ``limit`` samples when there are more."""
    if limit is None or len(feats) <= limit:
        return feats
    return feats.subset(class_balanced_subset(feats.y, limit / len(feats), seed=0))


@timed("logreg")
def select_logreg(train: Features, val: Features, num_classes: int, cfg: LogRegConfig, refit_on: Features | None) -> Choice:
    """Sweep C on ``train``, choose it by validation top-1, refit on ``refit_on`` (when given) with that C."""
    check_labels(train.y, num_classes, "logistic-regression training features")
    dtype = precision(train.x.device)
    fit = guarded(train, cfg.fit_subsample)
    standardize = standardizer(fit.x, dtype=dtype)
    problem, xv = Problem.of(standardize(fit.x), fit.y, num_classes), standardize(val.x)
    weights = (xv.new_zeros(num_classes, xv.shape[1]), xv.new_zeros(num_classes))
    best: tuple[float, torch.Tensor, Weights] | None = None
    lowest, swept, stale = math.inf, 0, 0
    for c in C_GRID:
        weights = fit_logreg(problem, c, cfg, weights)
        logits = torch.addmm(weights[1], xv, weights[0].T)
        correct, loss = topk_correct(logits, val.y, (1, 5)), float(F.cross_entropy(logits, val.y))
        swept, stale = swept + 1, stale + 1
        if best is None or correct[0] > best[1][0]:
            best, stale = (c, correct, weights), 0
        if loss < lowest:
            lowest, stale = loss, 0
        if cfg.patience is not None and stale >= cfg.patience:
            break
    c, correct, weights = best
    accuracy = (correct.double() / len(val)).tolist()
    if refit_on is not None:
        fit = guarded(refit_on, cfg.fit_subsample)
        standardize = standardizer(fit.x, dtype=dtype)
        weights = fit_logreg(Problem.of(standardize(fit.x), fit.y, num_classes), c, cfg, weights)
    w, b = weights
    params = {"C": c, "swept": swept, "fit_n": len(fit)}
    val_acc = {"top1": accuracy[0], **({"top5": accuracy[1]} if num_classes > 5 else {})}
    return Choice(params, val_acc, lambda f: torch.addmm(b, standardize(f), w.T))


def precision(device: torch.device) -> torch.dtype:
    """float64 on CUDA (where float32 products may run in TF32), float32 on the CPU (3x faster; within 1 point of
    scikit-learn's float64 solver in the tests)."""
    return torch.float64 if device.type == "cuda" else torch.float32
