"""Contrastive losses as pure tensor functions.

Shared layout: `q` is (B, H) query embeddings; `d` is (B * G, H) documents grouped per query, where row
`i * G` is query i's positive and rows `i * G + 1 .. i * G + G - 1` are its hard negatives (G = group size).
`exclude` is an optional (B, B * G) bool mask of candidates to drop from query i's softmax (in-batch
documents judged relevant to it, i.e. false negatives); a query's own positive is never dropped.
Similarity is the dot product; cosine similarity comes from L2-normalised embeddings (`Encoder.normalize`).
"""

from __future__ import annotations

import math

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
    same_tower_exclude: Tensor | None = None,
) -> Tensor:
    """InfoNCE with the batch's other queries as extra negatives (SamToNe).

    L_i = -log e^{s(q_i,p_i)/tau} / ( sum_c e^{s(q_i,c)/tau} + sum_{j != i} e^{s(q_i,q_j)/tau} )

    c runs over every document of the batch (positives and hard negatives). With `symmetric`, the p -> q
    direction is added and the two are averaged:
    L'_i = -log e^{s(p_i,q_i)/tau} / ( sum_j e^{s(p_i,q_j)/tau} + sum_{j != i} e^{s(p_i,p_j)/tau} ),
    where the p_j are the batch's positives. `same_tower_exclude[i, j]` removes the pair (i, j) from both
    same-tower sums (q_i, q_j there; p_i, p_j in the reverse direction): e.g. two queries that share a positive,
    which the q-q term would otherwise push apart (`shared_positive_pairs`).

    Args:
        q: (B, H).  d: (B * G, H), row i * G is q_i's positive.  exclude: (B, B * G) bool or None.
        same_tower_exclude: (B, B) bool or None.
    Reference: Moiseev et al., Findings of ACL 2023 (arXiv 2306.02516): cosine similarity, no extra weight.
    Relation: without the q-q terms (one query, B = 1) this is `info_nce`.
    """
    b = q.shape[0]
    targets = positive_columns(b, group_size, q.device)  # (B,)
    self_pairs = torch.eye(b, dtype=torch.bool, device=q.device)  # (B, B)
    if same_tower_exclude is not None:
        self_pairs = self_pairs | same_tower_exclude

    def direction(anchor: Tensor, cross: Tensor, same: Tensor, target: Tensor, drop: Tensor | None) -> Tensor:
        logits = _drop(anchor @ cross.T / temperature, drop, target)  # (B, C)
        same_scores = (anchor @ same.T / temperature).masked_fill(self_pairs, float("-inf"))  # (B, B)
        return F.cross_entropy(torch.cat([logits, same_scores], dim=1), target)

    loss = direction(q, d, q, targets, exclude)
    if not symmetric:
        return loss
    p = d[targets]  # (B, H) positives
    drop_pq = None if exclude is None else exclude[:, targets].T  # (B, B): query j judged relevant to p_i
    reverse = direction(p, q, p, torch.arange(b, device=q.device), drop_pq)
    return (loss + reverse) / 2


def shared_positive_pairs(exclude: Tensor, group_size: int) -> Tensor:
    """(B, B) bool: queries i != j of which one's batch positive is excluded from the other's negatives.

    With `exclude_from_negatives: positives` that is "q_j's positive is also a positive of q_i, or the reverse":
    the pairs of queries that share a positive, as far as the batch shows (a shared positive that neither query
    drew is not seen). `exclude` is `TrainBatch.excluded` (B, B * G).
    """
    b = exclude.shape[0]
    of_positives = exclude[:, positive_columns(b, group_size, exclude.device)]  # (B, B): [i, j] = p_j excluded for q_i
    return (of_positives | of_positives.T) & ~torch.eye(b, dtype=torch.bool, device=exclude.device)


def two_way_nll(q: Tensor, d: Tensor, group_size: int, temperature: float = 1.0) -> Tensor:
    """ANCE's loss as released: a 2-way softmax {positive, one negative} per (query, hard negative) triple.

    L = 1/(B (G-1)) sum_i sum_{k=1}^{G-1} softplus( (s(q_i,d_{iG+k}) - s(q_i,d_{iG})) / tau )

    softplus(x) = log(1 + e^x), so each term is -log( e^{s+/tau} / (e^{s+/tau} + e^{s-/tau}) ).

    Args:
        q: (B, H).  d: (B * G, H), row i * G is q_i's positive, the next G - 1 rows its negatives.
    Reference: Xiong et al., ICLR 2021 (arXiv 2007.00808); code microsoft/ANCE: tau 1, no in-batch negatives.
    Relation: `dual_two_way_nll` (DANCE) adds the document -> query direction. ANCE's "add in-batch negatives"
    option (one softmax per query over every document of the batch) is `info_nce`.
    """
    if group_size < 2:
        raise ValueError(f"two_way_nll needs at least one hard negative per query (group_size {group_size})")
    b, h = q.shape
    scores = torch.einsum("bh,bgh->bg", q, d.reshape(b, group_size, h)) / temperature  # (B, G)
    return F.softplus(scores[:, 1:] - scores[:, :1]).mean()


def dual_two_way_nll(
    q: Tensor,
    d: Tensor,
    neg_q: Tensor,
    group_size: int,
    query_group_size: int,
    temperature: float = 1.0,
    dual_weight: float = 0.1,
) -> Tensor:
    """DANCE: ANCE's 2-way NLL plus the dual query-retrieval direction with mined negative queries.

    L = L_q2d + lambda * L_d2q, with L_q2d = `two_way_nll` and, for p_i = d_{iG} the positive of q_i,
    L_d2q = 1/(B K) sum_i sum_{k<K} softplus( (s(p_i,q-_{iK+k}) - s(p_i,q_i)) / tau )

    Each term is averaged over its own count (B (G-1) triples, B K triples), so K need not equal G - 1.

    Args:
        q: (B, H).  d: (B * G, H), row i * G is q_i's positive.
        neg_q: (B * K, H), rows i * K .. i * K + K - 1 are negative queries mined for p_i; K = query_group_size.
        dual_weight: lambda; 0 leaves exactly `two_way_nll`.
    Reference: Li, Liu et al., ICTIR 2021 (arXiv 2107.07773); code thunlp/DANCE: cosine, tau 0.01, lambda 0.1.
    """
    b, h = q.shape
    q2d = two_way_nll(q, d, group_size, temperature)
    p = d[positive_columns(b, group_size, q.device)]  # (B, H)
    pos = (p * q).sum(-1, keepdim=True) / temperature  # (B, 1)
    neg = torch.einsum("bh,bkh->bk", p, neg_q.reshape(b, query_group_size, h)) / temperature  # (B, K)
    return q2d + dual_weight * F.softplus(neg - pos).mean()


def alignment(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared distance between paired embeddings: align = (1/N) sum_i ||x_i - y_i||^2.

    The measure is defined on the unit sphere, so both inputs are L2-normalised here first.

    Args:
        x: (N, H), row i of x is paired with row i of y (a query and a document relevant to it).
        y: (N, H).
    Reference: Wang & Isola, ICML 2020 (arXiv 2005.10242), alpha = 2. Lower is better aligned.
    """
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    return (x - y).pow(2).sum(-1).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """Log of the mean Gaussian potential over all pairs of points (Wang & Isola's uniformity).

    unif = log (2 / (N (N-1))) sum_{i<j} e^{-t ||x_i - x_j||^2}

    The measure is defined on the unit sphere, so `x` is L2-normalised here first. 0 when all points
    coincide, down to about -2t for points spread evenly over a high-dimensional sphere. Lower is more uniform.

    Args:
        x: (N, H) with N >= 2. Memory grows with N^2 / 2: subsample large sets.
    Reference: Wang & Isola, ICML 2020 (arXiv 2005.10242).
    """
    if x.shape[0] < 2:
        raise ValueError(f"uniformity needs at least two points, got {x.shape[0]}")
    sq = torch.pdist(F.normalize(x, dim=-1)).pow(2)  # (N (N-1) / 2,)
    return torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel())


# Ranking losses over a retrieved list (LTRe / ADORE). Shared layout: each query's list holds its top `depth`
# retrieved documents plus any appended unretrieved positives, padded to length L. `scores` (B, L) are
# s(q, d) with gradient; `relevant` (B, L) bool; `valid` (B, L) bool marks real entries (None = all real).
# Padded entries are ignored whatever their score (even -inf or NaN), rank or relevance.


def ltre_pairwise_loss(
    scores: Tensor, relevant: Tensor, ranks: Tensor, cut: int, valid: Tensor | None = None
) -> Tensor:
    """LambdaRank-weighted RankNet for reciprocal rank, as trained by LTRe / ADORE.

    L_q = sum_{i rel, j non-rel} w_ij softplus(-(s_i - s_j)) / (n_rel n_non-rel),   L = (1/B) sum_q L_q
    w_ij = |g(r_i) - g(r_j)|,  g(r) = 1/r for r <= cut else 0 (LambdaRank's |delta| of 1/rank on a swap).

    The denominator counts every (relevant, non-relevant) pair, zero-weight ones included. The released code
    sums both orientations of each pair and divides by 2 x that count, which is the same value. Weights are
    constants (ranks carry no gradient). A query without a pair contributes 0 and still counts in the mean
    over B, as the released code divides by the batch size. cut <= 0 zeroes every weight (loss 0, zero
    gradient), which is what the released default `--metric_cut None` does; pass the retrieval depth (its
    README passes 200) so appended positives (rank > depth) get g = 0 and pair with a retrieved
    non-relevant document at rank r with weight 1/r.

    Args:
        scores: (B, L) float.  relevant: (B, L) bool.  valid: (B, L) bool or None (all entries real).
        ranks: (B, L) long, 1-based rank in the retrieval, depth + 1, depth + 2, ... for appended positives;
            any value at padded entries.
        cut: ranks beyond it get reciprocal rank 0.
    Reference: Zhan et al., arXiv 2010.10469 (LTRe) and SIGIR 2021 (arXiv 2104.08051, ADORE);
        code jingtaozhan/DRhard adore/train.py (sigma 1). The released code appends the positives only
        when none was retrieved; that choice is the caller's.
    Relation: each pair term is the 2-way softmax term of `two_way_nll`; `listwise_softmax_loss` is the
        unweighted listwise alternative.
    """
    if valid is None:
        valid = torch.ones_like(relevant)
    pos = relevant & valid  # (B, L)
    neg = ~relevant & valid  # (B, L)
    pairs = pos.unsqueeze(2) & neg.unsqueeze(1)  # (B, L, L): [b, i, j] = i relevant, j non-relevant
    s = scores.masked_fill(~valid, 0.0)  # (B, L) keeps padding's -inf / NaN out of the products
    cost = F.softplus(s.unsqueeze(1) - s.unsqueeze(2))  # (B, L, L): log(1 + e^{-(s_i - s_j)})
    gain = torch.where(ranks <= cut, ranks.clamp(min=1).to(s.dtype).reciprocal(), 0.0)  # (B, L)
    weights = (gain.unsqueeze(2) - gain.unsqueeze(1)).abs() * pairs  # (B, L, L)
    n_pairs = pos.sum(1) * neg.sum(1)  # (B,)
    per_query = (weights * cost).sum((1, 2)) / n_pairs.clamp(min=1)  # (B,)
    return per_query.mean()


def listwise_softmax_loss(
    scores: Tensor, relevant: Tensor, valid: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Softmax cross-entropy over the retrieved list with every relevant document as a target.

    L_q = -log( sum_{i rel} e^{s_i/tau} / sum_{i valid} e^{s_i/tau} ), averaged over queries with a relevant
    entry; 0 (and zero gradient) when no query has one.

    Args:
        scores: (B, L) float.  relevant: (B, L) bool.  valid: (B, L) bool or None (all entries real).
    Relation: with one relevant document it is `info_nce` with the retrieved list as the negatives;
        `ltre_pairwise_loss` is the pairwise, metric-weighted alternative of LTRe / ADORE.
    """
    if valid is None:
        valid = torch.ones_like(relevant)
    floor = torch.finfo(scores.dtype).min  # finite, so empty rows give finite gradients
    logits = (scores / temperature).masked_fill(~valid, floor)  # (B, L)
    has_pos = (relevant & valid).any(1)  # (B,)
    log_den = torch.logsumexp(logits, 1)  # (B,)
    log_num = torch.logsumexp(logits.masked_fill(~relevant, floor), 1)  # (B,)
    per_query = torch.where(has_pos, log_den - log_num, 0.0)  # (B,)
    return per_query.sum() / has_pos.sum().clamp(min=1)


def margin_mse(q: Tensor, d: Tensor, group_size: int, teacher: Tensor) -> Tensor:
    """Margin MSE: the student's score margin between a query's positive and each of its negatives regresses
    onto the teacher's margin.

    L = mean_{i, k} ( (s(q_i,p_i) - s(q_i,n_ik)) - (t(q_i,p_i) - t(q_i,n_ik)) )^2

    over every query i and each of its G - 1 group negatives n_ik (no in-batch documents: the teacher scored only
    the query's own group). A pair whose teacher margin is NaN (a document the teacher did not score) is left out
    of the mean; the loss is 0 when no pair remains.

    Args:
        q: (B, H).  d: (B * G, H), row i * G is q_i's positive.  teacher: (B * G,) t(q_i, d) for d's row, aligned
            with `d` (`TrainBatch.doc_features["teacher_score"]`).
    Reference: Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge
        Distillation" (arXiv 2010.02666), with one negative per query (G = 2) and a cross-encoder ensemble teacher.
    Relation: the pairwise regression counterpart of `two_way_nll`; it needs scores, not just labels.
    """
    if group_size < 2:
        raise ValueError(f"margin_mse needs at least one negative per query (group size {group_size})")
    b = q.shape[0]
    s = (q.unsqueeze(1) * d.view(b, group_size, -1)).sum(-1)  # (B, G): s(q_i, group doc j)
    t = teacher.view(b, group_size).to(s.dtype)  # (B, G)
    student, target = s[:, :1] - s[:, 1:], t[:, :1] - t[:, 1:]  # (B, G - 1) margins
    valid = ~target.isnan()  # (B, G - 1)
    sq = (student - target.nan_to_num(0.0)).pow(2) * valid  # (B, G - 1)
    return sq.sum() / valid.sum().clamp(min=1)
