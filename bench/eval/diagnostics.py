"""Collapse and representation-quality diagnostics: pure functions of an embedding matrix z (N, D).

- effective rank (RankMe): Garrido, Balestriero, Najman, LeCun 2023, "RankMe: Assessing the Downstream
  Performance of Pretrained Self-Supervised Representations by Their Rank".
- alignment and uniformity: Wang & Isola 2020, "Understanding Contrastive Representation Learning through
  Alignment and Uniformity on the Hypersphere".
- per-dimension std of L2-normalised embeddings: the complete-collapse monitor of Chen & He 2021,
  "Exploring Simple Siamese Representation Learning" (SimSiam, Sec. 4.1).
- dimensional collapse (singular-value spectrum of the embedding covariance): Jing, Vincent, LeCun, Tian
  2022, "Understanding Dimensional Collapse in Contrastive Self-supervised Learning".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.core.cost import timed

RANKME_EPS = 1e-7
DIM_COLLAPSE_REL = 1e-3


def effective_rank(z: torch.Tensor) -> float:
    """RankMe: exp of the Shannon entropy of p_k = sigma_k / ||sigma||_1 + 1e-7 (sigma: singular values of z).

    Between 1 (every embedding on one line, or all zero) and min(N, D) (a flat spectrum).
    """
    s = torch.linalg.svdvals(z.float())
    p = s / s.sum().clamp_min(torch.finfo(torch.float32).tiny) + RANKME_EPS
    return math.exp(float(-(p * p.log()).sum()))


def alignment(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2) -> float:
    """E ||f(x) - f(y)||^alpha over positive pairs (row i of z1 with row i of z2), on L2-normalised rows.

    0 when the two views of every sample map to the same point; at most 2^alpha.
    """
    d = F.normalize(z1.float(), dim=1) - F.normalize(z2.float(), dim=1)
    return float(d.norm(dim=1).pow(alpha).mean())


def uniformity(z: torch.Tensor, t: float = 2, chunk: int = 4096) -> float:
    """``uniformity_tensor`` read on the host."""
    return float(uniformity_tensor(z, t, chunk))


def uniformity_tensor(z: torch.Tensor, t: float = 2, chunk: int = 4096) -> torch.Tensor:
    """log E exp(-t ||f(x) - f(y)||^2) over all pairs of distinct rows, on L2-normalised rows.

    Lower is more uniform (about -4 for t=2 and well-spread embeddings in many dimensions); 0 under
    complete collapse. Computed ``chunk`` rows at a time (per-row log-sum-exps, combined at the end), so
    memory is O(chunk x N) instead of the O(N^2) of ``torch.pdist``.
    """
    x = F.normalize(z.float(), dim=1)
    sq_norm = x.pow(2).sum(dim=1)  # 1, or 0 for an all-zero row (which F.normalize leaves at 0)
    n = x.shape[0]
    parts = []
    for start in range(0, n, chunk):
        rows = x[start : start + chunk]
        sq = (sq_norm[start : start + chunk, None] + sq_norm[None, :] - 2 * rows @ x.T).clamp_min(0)
        logits = -t * sq
        own = torch.arange(rows.shape[0], device=x.device)
        logits[own, own + start] = -math.inf
        parts.append(logits.logsumexp(dim=1))
    return torch.cat(parts).logsumexp(dim=0) - math.log(n * (n - 1))


def normalized_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std of L2-normalised z: about 1/sqrt(D) when healthy, 0 under collapse."""
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean())


def dim_collapse_fraction(z: torch.Tensor, rel_threshold: float = DIM_COLLAPSE_REL) -> float:
    """Fraction of the D covariance directions of z whose std is below ``rel_threshold`` of the largest.

    The singular values of centred z are the stds of its principal directions (times sqrt(N - 1)). The
    default 1e-3 (a variance ratio of 1e-6) sits far above the float32 SVD noise floor (~1e-7 relative) and
    far below what a healthy embedding shows, provided N is several times D: with N close to D even an
    isotropic Gaussian has a few tiny singular values. Directions beyond N - 1 (D >= N) count as collapsed.
    """
    zc = z.float() - z.float().mean(dim=0)
    s = torch.linalg.svdvals(zc)
    kept = int((s > rel_threshold * s[0]).sum())
    return 1 - kept / z.shape[1]


@timed("diagnostics")
def diagnose(z1: torch.Tensor, z2: torch.Tensor | None = None) -> dict[str, float | bool]:
    """All diagnostics of z1 (alignment with z2 when given) and a ``collapsed`` flag.

    collapsed: complete collapse, i.e. normalized_std * sqrt(D) < 0.1 (a healthy embedding gives about 1),
    or an effective rank below 2 (when D > 2).
    """
    dim = z1.shape[1]
    rank, std = effective_rank(z1), normalized_std(z1)
    out: dict[str, float | bool] = {
        "effective_rank": rank,
        "uniformity": uniformity(z1),
        "normalized_std": std,
        "dim_collapse_fraction": dim_collapse_fraction(z1),
        "collapsed": std * math.sqrt(dim) < 0.1 or (dim > 2 and rank < 2),
    }
    if z2 is not None:
        out["alignment"] = alignment(z1, z2)
    return out
