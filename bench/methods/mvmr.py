"""MV-MR: Kinakh, Drozdova & Voloshynovskiy, "MV-MR: Multi-Views and Multi-Representations for
Self-Supervised Learning and Knowledge Distillation", Entropy 26, 466 (2024).

The clean image x and one augmented view x~ go through the same backbone and projector (no
stop-gradient) to z and z~. L1 is VICReg's invariance plus variance hinge (no covariance), L2 is
1 - dCor(z~, z), and L3 sums 1 - dCor(z~, z*_k) over fixed, non-learnable representations z*_k of
the clean image (flattened image, scattering, a fresh augmentation, HOG, local std; or a frozen
teacher's embedding for distillation). dCor is the batch distance correlation, which compares
vectors of any dimensions, so the representations get no head. Deterministic representations of
the pre-training split are computed once and cached on disk (bench.representations.cache); they are
kept as read-only memory maps on the CPU and the batch's rows are gathered and copied to the device
at each step.

Code reading (``reading: code``, the authors' ``self_supervised_module.py``; ``docs/mvmr.md`` §3), all at once:
- L3 sign: the paper's Eq. 11 adds beta_k (1 - dCor) (maximise dependence); the code adds + dCor for the
  hand-crafted representations: ``l3_mode=minimize``.
- R^2 vs R: the paper's Eq. 5 (squared dCor); the code's square root: ``dcor_squared=false``.
- MSE scale: Eq. 6 sums over D and averages over B; the code's mean over B*D: ``mse_reduction=mean``.
- variance: eps 1e-4 inside the sqrt of the unbiased variance (Eq. 7-8); the code's ``z.std(dim=0)`` has
  none: ``eps=0``.

Ambiguities resolved (``docs/mvmr.md`` §3), the same in both readings:
- distances: d^2 clamped at 1e-4 before the sqrt as in the code (``dcor_eps``), in fp32; no /32 scaling.
- batch statistics: per process, as in the code (no all-gather); over the batch gathered from all
  processes (the one-process loss of the global batch): ``dcor_global=true``.
- views: z~ from crops[0] of the "simclr" recipe (crop, flip, jitter 0.8/0.8/0.8/0.2 p .8, grey p .2,
  blur p .5; the paper gives no blur probability); z from views.clean (normalise only).
- representations on the dataset-normalised images, as in the code; per RGB channel for scattering/HOG.
- HOG: scikit-image per channel (24 bins, 8x8 cells, 1x1 blocks), not the code's torch HOG layer.
- augmented representation: a fresh draw with per-sample parameters and blur always on; the code
  draws one set per batch. Its generator is seeded by the step, so a resumed run repeats it.
- KD: the hand-crafted terms are replaced by the teacher: ``representations=[teacher]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from bench.data.views import Views
from bench.methods.base import Method, MethodParams, StepOutput, fp32_loss
from bench.methods.vicreg import variance_hinge
from bench.models.heads import HeadSpec, mlp
from bench.core.collectives import gather_with_grad
from bench.representations import (
    AUGMENTED,
    REPRESENTATIONS,
    augmented,
    cached_representation,
)
from bench.representations.cache import CacheDtype
from bench.representations.features import (
    AugmentedParams,
    HogParams,
    LbpParams,
    LsdParams,
    RawParams,
    ScatteringParams,
)
from bench.representations.teacher import TeacherParams

RepName = Literal["raw", "scattering", "augmented", "hog", "lsd", "lbp", "teacher"]
Term = Literal["l1", "l2", "l3"]


class MVMRParams(MethodParams):
    name: Literal["mvmr"] = "mvmr"
    projector: HeadSpec = Field("8192-8192-8192", description="projector widths (Linear without bias, BN+ReLU hidden, plain last)")
    representations: list[RepName] = Field(
        ["raw", "scattering", "augmented", "hog", "lsd"], description="the z*_k of L3 (the paper's five by default)"
    )
    raw: RawParams = Field(RawParams(), description="flattened image")
    scattering: ScatteringParams = Field(ScatteringParams(), description="kymatio 2-D scattering per channel")
    augmented: AugmentedParams = Field(AugmentedParams(), description="a fresh random augmentation, flattened")
    hog: HogParams = Field(HogParams(), description="scikit-image HOG per channel")
    lsd: LsdParams = Field(LsdParams(), description="local standard deviation")
    lbp: LbpParams = Field(LbpParams(), description="local binary pattern histograms (not in the paper)")
    teacher: TeacherParams | None = Field(None, description="frozen teacher for distillation (needed when 'teacher' is listed)")
    lambd: float = Field(1.0, ge=0, description="lambda, weight of the invariance term (Eq. 9)")
    mu: float = Field(1.0, ge=0, description="mu, weight of the variance hinge (Eq. 9)")
    alpha: float = Field(1.0, ge=0, description="alpha, weight of L2 (Eq. 10)")
    beta: float | dict[str, float] = Field(1.0, description="beta_k of L3 (Eq. 11): one value or one per representation")
    gamma: float = Field(1.0, gt=0, description="target std of each embedding dimension")
    eps: float = Field(1e-4, ge=0, description="added to the variance before the square root")
    mse_reduction: Literal["sum", "mean"] = Field("sum", description="invariance: sum over D (paper) or mean over D (code)")
    l3_mode: Literal["maximize", "minimize"] = Field("maximize", description="L3 adds 1 - dCor (paper) or + dCor (code)")
    dcor_squared: bool = Field(True, description="dCor as the paper's Eq. 5 (R^2) or its square root (code)")
    dcor_eps: float = Field(1e-4, gt=0, description="squared distances are clamped at this before the sqrt")
    terms: list[Term] = Field(["l1", "l2", "l3"], min_length=1, description="loss terms in use (Table 6 ablation)")
    dcor_global: bool = Field(False, description="several processes: dCor and variance over the gathered global batch "
                              "(false: per process, as the paper's code)")
    cache_dtype: CacheDtype = Field("float16", description="storage type of the cached representations")
    cache: bool = Field(True, description="compute the deterministic representations once and cache them on disk; "
                        "false recomputes them from each batch's clean images (for timing the cache's gain)")

    code_reading: ClassVar[dict[str, Any]] = {"mse_reduction": "mean", "l3_mode": "minimize", "dcor_squared": False, "eps": 0.0}

    @model_validator(mode="after")
    def _consistent(self) -> MVMRParams:
        if len(set(self.representations)) != len(self.representations):
            raise ValueError(f"representations {self.representations} lists a name twice")
        if len(set(self.terms)) != len(self.terms):
            raise ValueError(f"terms {self.terms} lists a term twice")
        if "teacher" in self.representations and self.teacher is None:
            raise ValueError("'teacher' is listed in representations: set teacher.source (and teacher.path)")
        if isinstance(self.beta, dict) and set(self.beta) != set(self.representations):
            raise ValueError(f"beta names {sorted(self.beta)}; give one weight for each of {self.representations}")
        return self

    def rep_params(self, name: str) -> Any:
        """The typed params of representation ``name``."""
        return getattr(self, name)

    def betas(self) -> dict[str, float]:
        """beta_k of each listed representation."""
        return {n: self.beta[n] if isinstance(self.beta, dict) else self.beta for n in self.representations}


def _distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] - 2 * x @ x.T + sq[None, :]  # ||a||^2 - 2 a.b + ||b||^2 (Gram trick)
    d2 = d2 - torch.diag_embed(d2.diagonal())  # exact zeros on the diagonal (the trick leaves rounding there)
    return d2.clamp(min=eps).sqrt()  # clamp before the sqrt: finite gradients on the diagonal


def _double_centred(a: torch.Tensor) -> torch.Tensor:
    return a - a.mean(dim=0, keepdim=True) - a.mean(dim=1, keepdim=True) + a.mean()  # Eq. 4: A = a - row - col + grand mean


@fp32_loss
def dcor(x: torch.Tensor, y: torch.Tensor, squared: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Batch distance correlation of (B, Dx) and (B, Dy): Eq. 5's R^2, or R when ``squared`` is False."""
    a = _double_centred(_distances(x.flatten(1).float(), eps))
    b = _double_centred(_distances(y.flatten(1).float(), eps))
    dcov2 = (a * b).mean()  # Eq. 4: dCov^2 = 1/B^2 sum_ji A_ji C_ji
    r2 = dcov2 / ((a * a).mean() * (b * b).mean()).clamp_min(1e-12).sqrt()  # Eq. 5: dCov^2 / sqrt(dVar dVar)
    return r2 if squared else r2.clamp_min(0).sqrt()


@fp32_loss
def mvmr_loss(
    z: torch.Tensor,
    z_aug: torch.Tensor,
    reps: Mapping[str, torch.Tensor],
    betas: Mapping[str, float],
    *,
    lambd: float,
    mu: float,
    alpha: float,
    gamma: float,
    eps: float,
    mse_reduction: str,
    l3_mode: str,
    dcor_squared: bool,
    dcor_eps: float,
    terms: Sequence[str],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MV-MR loss L1 + L2 + L3 (the ``terms`` in use) and its unweighted parts for logging.

    ``z``: clean-view embeddings, ``z_aug``: augmented-view embeddings, ``reps``: name -> z*_k (B, D_k); ``betas``: name -> beta_k.
    """
    loss = z.new_zeros(())
    logs: dict[str, torch.Tensor] = {}
    if "l1" in terms:
        sq = (z - z_aug).pow(2)
        invariance = sq.sum(dim=1).mean() if mse_reduction == "sum" else sq.mean()  # Eq. 6: 1/B sum_i ||z_i - z~_i||^2
        variance = variance_hinge(z, gamma, eps) + variance_hinge(z_aug, gamma, eps)  # Eq. 7-8: v(Z) + v(Z~)
        loss = loss + lambd * invariance + mu * variance  # Eq. 9
        logs |= {"invariance": invariance.detach(), "variance": variance.detach()}
    if "l2" in terms:
        r = dcor(z_aug, z, dcor_squared, dcor_eps)
        loss = loss + alpha * (1 - r)  # Eq. 10: alpha (1 - dCor(Z~, Z))
        logs["dcor_views"] = r.detach()
    if "l3" in terms:
        for name, rep in reps.items():
            r = dcor(z_aug, rep, dcor_squared, dcor_eps)
            loss = loss + betas[name] * ((1 - r) if l3_mode == "maximize" else r)  # Eq. 11: beta_k (1 - dCor(Z~, Z*_k))
            logs[f"dcor_{name}"] = r.detach()
    return loss, logs


class MVMR(Method):
    name: ClassVar[str] = "mvmr"
    Params: ClassVar[type[MethodParams]] = MVMRParams
    recipe: ClassVar[str] = "simclr"
    needs_clean_view: ClassVar[bool] = True
    optimizer: ClassVar[dict[str, Any]] = {"name": "adam", "lr": 1e-4, "lr_scaling": "none", "weight_decay": 1e-6}

    def __init__(self, backbone: nn.Module, params: MVMRParams, *, num_classes: int, image_shape: tuple[int, int, int]):
        super().__init__(backbone, params, num_classes=num_classes, image_shape=image_shape)
        self.projector = mlp(backbone.out_dim, params.projector, last_bias=False)
        self._cached: dict[str, np.ndarray] = {}
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def _uses_reps(self) -> bool:
        return "l3" in self.params.terms and bool(self.params.representations)

    def prepare(self, split: Any, cache_dir: Path) -> None:
        """Load (or compute once) the cached representations of ``split``; keep the statistics for 'augmented'."""
        if not self._uses_reps():
            return
        device = split.images.device
        self._stats = (torch.tensor(split.mean, device=device).view(1, -1, 1, 1), torch.tensor(split.std, device=device).view(1, -1, 1, 1))
        for name in self.params.representations:
            if name == AUGMENTED:
                continue
            if not self.params.cache:
                continue
            params = self.params.rep_params(name)
            compute = REPRESENTATIONS[name].compute
            self._cached[name] = cached_representation(
                split, name, params.identity(), lambda x, c=compute, p=params: c(x, p), cache_dir, dtype=self.params.cache_dtype
            )

    def _representations(self, views: Views, step: int) -> dict[str, torch.Tensor]:
        if self._stats is None:
            raise RuntimeError("MVMR.prepare(split, cache_dir) must run before training (the engine calls it)")
        index = views.index.cpu().numpy()
        reps = {}
        for name in self.params.representations:
            if name == AUGMENTED:
                reps[name] = augmented(views.clean, *self._stats, self.params.augmented, step)
            elif not self.params.cache:
                reps[name] = REPRESENTATIONS[name].compute(views.clean, self.params.rep_params(name)).to(views.clean.device)
            else:
                reps[name] = torch.from_numpy(self._cached[name][index]).to(views.clean.device, non_blocking=True)
        return reps

    def forward(self, views: Views, step: int, total_steps: int) -> StepOutput:
        """MV-MR loss of the clean view and crops[0]; logs the unweighted terms and each dCor."""
        z = self.projector(self.backbone(views.clean))
        z_aug = self.projector(self.backbone(views.crops[0]))
        p = self.params
        reps = self._representations(views, step) if self._uses_reps() else {}
        if p.dcor_global:
            z, z_aug = gather_with_grad(z), gather_with_grad(z_aug)
            reps = {name: gather_with_grad(rep) for name, rep in reps.items()}
        loss, logs = mvmr_loss(
            z, z_aug, reps, p.betas(), lambd=p.lambd, mu=p.mu, alpha=p.alpha, gamma=p.gamma, eps=p.eps,
            mse_reduction=p.mse_reduction, l3_mode=p.l3_mode, dcor_squared=p.dcor_squared, dcor_eps=p.dcor_eps, terms=p.terms,
        )
        return StepOutput(loss, logs=logs)
