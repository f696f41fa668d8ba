"""DANCE: ANCE on the unit sphere plus a dual loss that retrieves each positive document's query among mined
negative queries; reports the alignment and uniformity of the embedding space at evaluation."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lit_dr.data.batches import TrainBatch
from lit_dr.index.corpus_index import CorpusIndex
from lit_dr.index.embeddings import EmbeddingShards
from lit_dr.models.losses import alignment, dual_two_way_nll, two_way_nll, uniformity
from lit_dr.objectives.base import BiEncoderModule


def embedding_geometry(
    queries: Tensor, docs: Tensor | EmbeddingShards, relevance: list[dict[int, int]], sample: int = 4096,
    seed: int = 0,
) -> dict[str, float]:
    """Alignment of queries with their relevant documents, and uniformity of each side (Wang & Isola 2020).

    Args:
        queries: (Q, H).  docs: (N, H) the whole corpus, in memory or on disk (only the rows used are read).
        relevance: per query, {corpus row: grade}; grade > 0 is relevant. `align` averages over these pairs.
        sample: uniformity costs N^2 / 2 pairs, so each side uses at most this many rows, drawn with `seed`.
    Returns:
        {"align", "unif_q", "unif_d"}; a figure with too few points (no relevant pair, one row) is NaN.
    """
    queries = queries.float()

    def rows(x, idx: Tensor) -> Tensor:  # (n, H) float32 rows of a tensor or of embedding files
        return (x[idx] if isinstance(x, Tensor) else torch.from_numpy(x[idx.numpy()])).float()

    pairs = [(i, row) for i, rel in enumerate(relevance) for row, grade in rel.items() if grade > 0]
    q_idx = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    d_idx = torch.tensor([row for _, row in pairs], dtype=torch.long)

    def unif(x) -> float:
        if len(x) < 2:
            return float("nan")
        if len(x) > sample:
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:sample]
        else:
            idx = torch.arange(len(x))
        return uniformity(rows(x, idx)).item()

    return {
        "align": alignment(queries[q_idx], rows(docs, d_idx)).item() if pairs else float("nan"),
        "unif_q": unif(queries),
        "unif_d": unif(docs),
    }


class DANCE(BiEncoderModule):
    """Li, Liu et al., ICTIR 2021 (arXiv 2107.07773). Negative documents are mined as in ANCE; negative
    queries (for each positive document, queries near it to which it is not relevant) arrive in
    `batch.negative_queries`.

    The paper's setting: the ANCE tower with L2-normalised output (`Encoder(pooling="cls", projection_dim=768,
    normalize=True)`), cosine / tau = 0.01, lambda = 0.1, in two stages from an ANCE checkpoint: (1)
    "normalisation tuning" with the q -> d loss alone (no negative queries, or `dual_weight: 0`), (2) the dual
    loss added. The released code skips the document side's LayerNorm under normalisation while the query side
    keeps it; here both sides go through the same tower, deliberately.

    Evaluation also logs `align`, `unif_q` and `unif_d` (see `embedding_geometry`).

    Args:
        temperature: tau for the cosine scores.
        dual_weight: lambda, the weight of the document -> query loss.
        **kwargs: the towers, optimizer and evaluation options of `BiEncoderModule`.
    """

    def __init__(self, temperature: float = 0.01, dual_weight: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.temperature = temperature
        self.dual_weight = dual_weight

    def extra_texts(self, batch: TrainBatch) -> dict:
        if batch.negative_queries is None or self.dual_weight == 0:  # stage 1
            return {}
        return {"negative_queries": ("query", batch.negative_queries)}

    def compute_loss(self, q: Tensor, d: Tensor, batch: TrainBatch, negative_queries: Tensor | None = None) -> Tensor:
        """`negative_queries`: (B * K, H) embeddings of `batch.negative_queries` (embedded by the base module,
        `extra_texts`); None in stage 1."""
        if negative_queries is None:  # stage 1: no negative queries, or dual_weight 0 (`extra_texts`)
            return two_way_nll(q, d, batch.group_size, self.temperature)
        k = negative_queries.shape[0] // q.shape[0]
        return dual_two_way_nll(q, d, negative_queries, batch.group_size, k, self.temperature, self.dual_weight)

    def extra_eval_metrics(self, query_rows: np.ndarray, queries: Tensor, index: CorpusIndex) -> dict[str, float]:
        return embedding_geometry(queries, index.embeddings, self.data.relevance_for(query_rows))
