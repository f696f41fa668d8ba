from lit_dr.data.batches import EncodeBatch, TokenBatch, TrainBatch
from lit_dr.data.datamodule import NegativesTable, RetrievalDataModule

__all__ = ["EncodeBatch", "NegativesTable", "RetrievalDataModule", "TokenBatch", "TrainBatch"]
