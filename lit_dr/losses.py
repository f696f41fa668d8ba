"""Contrastive losses as pure tensor functions.

Shared layout: `q` is (B, H) query embeddings; `d` is (B * G, H) documents grouped per query, where row
`i * G` is query i's positive and rows `i * G + 1 .. i * G + G - 1` are its hard negatives (G = group size).
`exclude` is an optional (B, B * G) bool mask of candidates to drop from query i's softmax (in-batch
documents judged relevant to it, i.e. false negatives); a query's own positive is never dropped.
Similarity is the dot product; cosine similarity comes from L2-normalised embeddings (`Encoder.normalize`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def positive_columns(batch_size: int, group_size: int, device: torch.device | None = None) -> Tensor:
    """(B,) column of each query's positive in the (B, B * G) score matrix."""
    return torch.arange(batch_size, device=device) * group_size


def _drop(scores: Tensor, exclude: Tensor | None, targets: Tensor) -> Tensor:
    if exclude is None:
        return scores
    exclude = exclude.clone()
    exclude[torch.arange(len(targets), device=targets.device), targets] = False
    return scores.masked_fill(exclude, float("-inf"))


def info_nce(q: Tensor, d: Tensor, group_size: int, temperature: float = 1.0, exclude: Tensor | None = None) -> Tensor:
    """InfoNCE over every document of the batch: in-batch positives plus all hard negatives (DPR).

    L = -(1/B) sum_i log( e^{s(q_i,p_i)/tau} / sum_{c in batch} e^{s(q_i,c)/tau} )

    Args:
        q: (B, H).  d: (B * G, H), row i * G is q_i's positive.  exclude: (B, B * G) bool or None.
    Reference: Karpukhin et al., EMNLP 2020 (arXiv 2004.04906); DPR uses tau = 1, nothing excluded.
    Relation: `same_tower_info_nce` adds the other queries to the denominator.
    """
    targets = positive_columns(q.shape[0], group_size, q.device)  # (B,)
    scores = q @ d.T / temperature  # (B, B * G)
    return F.cross_entropy(_drop(scores, exclude, targets), targets)


def same_tower_info_nce(
    q: Tensor,
    d: Tensor,
    group_size: int,
    temperature: float = 0.05,
    exclude: Tensor | None = None,
    symmetric: bool = False,
    same_tower: bool = True,
) -> Tensor:
    """InfoNCE with the batch's other queries as extra negatives (SamToNe).

    L_i = -log e^{s(q_i,p_i)/tau} / ( sum_c e^{s(q_i,c)/tau} + sum_{j != i} e^{s(q_i,q_j)/tau} )

    c runs over every document of the batch (positives and hard negatives). With `symmetric`, the p -> q
    direction is added and the two are averaged:
    L'_i = -log e^{s(p_i,q_i)/tau} / ( sum_j e^{s(p_i,q_j)/tau} + sum_{j != i} e^{s(p_i,p_j)/tau} ),
    where the p_j are the batch's positives.

    Args:
        q: (B, H).  d: (B * G, H), row i * G is q_i's positive.  exclude: (B, B * G) bool or None.
        same_tower: False drops the same-tower terms, which leaves exactly `info_nce` (used as a test oracle).
    Reference: Moiseev et al., Findings of ACL 2023 (arXiv 2306.02516): cosine similarity, no extra weight.
    """
    b = q.shape[0]
    targets = positive_columns(b, group_size, q.device)  # (B,)
    self_pairs = torch.eye(b, dtype=torch.bool, device=q.device)  # (B, B)

    def direction(anchor: Tensor, cross: Tensor, same: Tensor, target: Tensor, drop: Tensor | None) -> Tensor:
        logits = _drop(anchor @ cross.T / temperature, drop, target)  # (B, C)
        if same_tower:
            same_scores = (anchor @ same.T / temperature).masked_fill(self_pairs, float("-inf"))  # (B, B)
            logits = torch.cat([logits, same_scores], dim=1)
        return F.cross_entropy(logits, target)

    loss = direction(q, d, q, targets, exclude)
    if not symmetric:
        return loss
    p = d[targets]  # (B, H) positives
    drop_pq = None if exclude is None else exclude[:, targets].T  # (B, B): query j judged relevant to p_i
    reverse = direction(p, q, p, torch.arange(b, device=q.device), drop_pq)
    return (loss + reverse) / 2
