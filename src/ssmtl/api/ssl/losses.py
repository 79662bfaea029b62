"""InfoNCE (van den Oord et al., 2018) as used by MoCo (He et al., CVPR 2020; Chen et al., 2020).

Shapes:
    query: (N, D), positive: (N, D), negatives: (K, D); all L2-normalised.

The logits are ``[q.k+, q.k-_1 .. q.k-_K] / T`` and the loss is the cross-entropy
with the positive at index 0, averaged over the N queries::

    >>> q = F.normalize(torch.randn(4, 8), dim=1)
    >>> k = F.normalize(torch.randn(4, 8), dim=1)
    >>> queue = F.normalize(torch.randn(16, 8), dim=1)
    >>> info_nce(q, k, queue, temperature=0.2)  # scalar
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _check(query: torch.Tensor, temperature: float) -> None:
    if query.dim() != 2:
        raise ValueError(f"query must be (N, D), got {tuple(query.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Mean InfoNCE loss of N queries, each with one positive and K shared negatives."""
    _check(query, temperature)
    if positive.shape != query.shape:
        raise ValueError(f"positive must match query {tuple(query.shape)}, got {tuple(positive.shape)}")
    if negatives.dim() != 2 or negatives.shape[1] != query.shape[1]:
        raise ValueError(f"negatives must be (K, {query.shape[1]}), got {tuple(negatives.shape)}")
    pos = (query * positive).sum(dim=1, keepdim=True)
    neg = query @ negatives.t()
    logits = torch.cat([pos, neg], dim=1).float() / temperature
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, target)


def multi_positive_info_nce(query: torch.Tensor, keys: torch.Tensor, positive_mask: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE with several positives per query (Khosla et al., 2020; Zeng et al., MICCAI 2021).

    ``keys`` is (M, D) and ``positive_mask`` (N, M) is True where key m is a positive
    of query n. The loss is the mean, over queries and their positives, of
    ``-log softmax(q.k / T)`` over all M keys. Every query needs at least one positive.
    """
    _check(query, temperature)
    if positive_mask.shape != (query.shape[0], keys.shape[0]):
        raise ValueError(f"positive_mask must be ({query.shape[0]}, {keys.shape[0]}), got {tuple(positive_mask.shape)}")
    counts = positive_mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("every query needs at least one positive")
    log_prob = F.log_softmax((query @ keys.t()).float() / temperature, dim=1)
    per_query = -(log_prob * positive_mask).sum(dim=1) / counts
    return per_query.mean()
