"""BM25 negatives (DPR): InfoNCE over in-batch positives plus every BM25 hard negative in the batch."""

from __future__ import annotations

from torch import Tensor

from lit_dr.data.batches import TrainBatch
from lit_dr.models.losses import info_nce
from lit_dr.objectives.base import BiEncoderModule


class BM25Negatives(BiEncoderModule):
    """Karpukhin et al., EMNLP 2020. The hard negatives come from the data module (`negatives: bm25`).

    Args:
        temperature: divides the scores; DPR uses 1 with dot product. With normalised (cosine) embeddings
            use a small value such as 0.05.
        exclude_judged_relevant: drop from a query's softmax the in-batch documents the data module excludes from
            its negatives (false negatives; `exclude_from_negatives`: its positives, or every judged document;
            STAR's variant masks positives). DPR masks nothing.
        **kwargs: the towers, optimizer and evaluation options of `BiEncoderModule`.
    """

    def __init__(self, temperature: float = 1.0, exclude_judged_relevant: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.temperature = temperature
        self.exclude_judged_relevant = exclude_judged_relevant

    def compute_loss(self, q: Tensor, d: Tensor, batch: TrainBatch) -> Tensor:
        exclude = batch.excluded if self.exclude_judged_relevant else None
        return info_nce(q, d, batch.group_size, self.temperature, exclude)
