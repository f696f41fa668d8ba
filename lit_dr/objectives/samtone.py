"""SamToNe: InfoNCE whose denominator also holds the batch's other queries (same-tower negatives)."""

from __future__ import annotations

from torch import Tensor

from lit_dr.data.batches import TrainBatch
from lit_dr.models.losses import same_tower_info_nce, shared_positive_pairs
from lit_dr.objectives.base import BiEncoderModule


class SamToNe(BiEncoderModule):
    """Moiseev et al., Findings of ACL 2023. Same data as `BM25Negatives`; hard negatives join the cross-tower sum.

    Args:
        temperature: tau; the paper uses cosine similarity, so pair this with `Encoder(normalize=True)`.
        symmetric: also the document -> query direction with the other documents as same-tower negatives.
        exclude_judged_relevant: drop from a query's softmax the in-batch documents the data module excludes from
            its negatives (`exclude_from_negatives`: its positives, or every judged document).
        mask_shared_positive_queries: drop from the same-tower sums the pairs of queries of which one's positive
            is excluded from the other's negatives (`shared_positive_pairs`): two claims about one abstract are
            not pushed apart. Not in the paper (MS MARCO's queries rarely share a passage; SciFact's often do).
        **kwargs: the towers, optimizer and evaluation options of `BiEncoderModule`.
    """

    def __init__(
        self,
        temperature: float = 0.05,
        symmetric: bool = False,
        exclude_judged_relevant: bool = False,
        mask_shared_positive_queries: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.mask_shared_positive_queries = mask_shared_positive_queries
        self.temperature = temperature
        self.symmetric = symmetric
        self.exclude_judged_relevant = exclude_judged_relevant

    def compute_loss(self, q: Tensor, d: Tensor, batch: TrainBatch) -> Tensor:
        exclude = batch.excluded if self.exclude_judged_relevant else None
        same = shared_positive_pairs(batch.excluded, batch.group_size) if self.mask_shared_positive_queries else None
        return same_tower_info_nce(q, d, batch.group_size, self.temperature, exclude, self.symmetric, same)
