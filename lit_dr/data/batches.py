"""Batches are dataclasses with named fields; Lightning moves them to the device through `to`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from torch import Tensor


def _to(value, device):
    if isinstance(value, dict):  # a feature channel: name -> tensor
        return {name: v.to(device) for name, v in value.items()}
    return None if value is None else value.to(device)


@dataclass
class _Movable:
    def to(self, device) -> _Movable:
        return type(self)(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})


@dataclass
class TokenBatch(_Movable):
    input_ids: Tensor  # (N, L) int64, padded to the longest row of this batch
    attention_mask: Tensor  # (N, L) int64


@dataclass
class TrainBatch(_Movable):
    """B queries, each with G documents: its positive first, then its hard negatives."""

    queries: TokenBatch  # (B, Lq)
    docs: TokenBatch  # (B * G, Ld); row i * G is query i's positive
    query_rows: Tensor  # (B,) row of each query in the query store
    doc_rows: Tensor  # (B * G,) corpus row of each document
    # (B, B * G) bool: doc j may not be a negative of query i (`RetrievalDataModule.exclude_from_negatives`: its
    # positives, or every document judged for it); the in-batch false-negative mask.
    excluded: Tensor
    # DANCE: for each query's positive document, K mined negative queries (rows i * K .. i * K + K - 1).
    negative_queries: TokenBatch | None = None  # (B * K, Lq)
    # Named tensors beside the tokens, for losses that need more than texts (MarginMSE: "teacher_score"). They
    # move with the batch and are gathered across processes like the rows they belong to.
    query_features: dict[str, Tensor] = field(default_factory=dict)  # name -> (B, ...)
    doc_features: dict[str, Tensor] = field(default_factory=dict)  # name -> (B * G, ...), aligned with `docs`

    @property
    def group_size(self) -> int:
        return self.docs.input_ids.shape[0] // self.queries.input_ids.shape[0]


@dataclass
class EncodeBatch(_Movable):
    """Texts to embed: queries or documents, with their store rows to put the embeddings back in place."""

    tokens: TokenBatch
    rows: Tensor  # (N,)


def excluded_mask(excluded: Sequence[Collection[int]], doc_rows: np.ndarray) -> np.ndarray:
    """(B, N) bool: doc_rows[j] is in excluded[i] (`RetrievalDataModule.excluded_docs`): `TrainBatch.excluded`."""
    mask = np.zeros((len(excluded), len(doc_rows)), dtype=bool)
    for i, rows in enumerate(excluded):
        if rows:
            mask[i] = np.isin(doc_rows, np.fromiter(rows, dtype=np.int64, count=len(rows)))
    return mask
