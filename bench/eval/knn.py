"""Weighted k-nearest-neighbour classification of frozen features.

The protocol of Wu et al. 2018 (InstDisc, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination") as used by solo-learn: cosine similarity on L2-normalised features, the k most similar
training samples vote for their class with weight exp(similarity / T). A class no neighbour votes for is
never counted as a top-5 hit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.core.cost import timed
from bench.eval.features import accuracy_metrics, check_labels, topk_correct


@timed("knn")
def knn_eval(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    ks: tuple[int, ...] = (20, 200),
    temperature: float = 0.07,
    chunk: int = 1024,
) -> dict[str, float]:
    """Accuracy of the weighted kNN classifier for every k in ``ks``, all from one neighbour search.

    Returns ``{"knn{k}.top1": .., "knn{k}.top5": ..}`` as fractions in [0, 1] (top-5 only with more
    than 5 classes). A k larger than the training set is clipped to its size. Test features are
    processed ``chunk`` rows at a time, so memory is O(chunk x N_train).
    """
    check_labels(train_y, num_classes, "kNN training features")
    check_labels(test_y, num_classes, "kNN test features")
    bank = F.normalize(train_f.float(), dim=1)
    kmax = min(max(ks), bank.shape[0])
    correct = torch.zeros(len(ks), 2, dtype=torch.long, device=test_f.device)
    for start in range(0, test_f.shape[0], chunk):
        query = F.normalize(test_f[start : start + chunk].float(), dim=1)
        sim, idx = (query @ bank.T).topk(kmax, dim=1)
        # exp((s - s_max) / T): the weights of one query scaled by a common factor, so no overflow at small T
        weight = ((sim - sim[:, :1]) / temperature).exp()
        neighbour_y = train_y[idx]
        y = test_y[start : start + chunk]
        for i, k in enumerate(ks):
            k = min(k, kmax)
            votes = torch.zeros(query.shape[0], num_classes, device=query.device)
            votes.scatter_add_(1, neighbour_y[:, :k], weight[:, :k])
            voted = torch.zeros_like(votes, dtype=torch.bool).scatter_(1, neighbour_y[:, :k], True)
            correct[i] += topk_correct(votes.masked_fill_(~voted, -math.inf), y, (1, 5))
    metrics: dict[str, float] = {}
    for i, k in enumerate(ks):
        metrics |= accuracy_metrics(f"knn{k}", correct[i], test_f.shape[0], num_classes)
    return metrics
