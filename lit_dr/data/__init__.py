"""Data sets on disk: readers (BEIR, MS MARCO), judgments, token stores, batches and how examples are drawn."""

from lit_dr.data.batches import EncodeBatch, TokenBatch, TrainBatch
from lit_dr.data.sampling import NegativesTable

__all__ = ["EncodeBatch", "NegativesTable", "TokenBatch", "TrainBatch"]
