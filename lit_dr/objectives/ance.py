"""ANCE: a 2-way NLL per (query, positive, mined negative) triple; negatives are refreshed during training."""

from __future__ import annotations

from torch import Tensor

from lit_dr.data.batches import TrainBatch
from lit_dr.models.losses import info_nce, two_way_nll
from lit_dr.objectives.base import BiEncoderModule


class ANCE(BiEncoderModule):
    """Xiong et al., ICLR 2021 (arXiv 2007.00808). The hard negatives are mined with the model being trained
    by the refresh callback (`lit_dr.training.NegativeRefresh`); this module only computes the loss on them.

    The paper's setting: one shared RoBERTa tower, first token -> Linear -> LayerNorm
    (`Encoder(pooling="cls", projection_dim=768)`), raw dot product (tau 1), LAMB at lr 1e-6, 20 negatives per
    query sampled from the top 200 retrieved, and a warm start from a model trained with BM25 negatives
    (`init_checkpoint`, e.g. a `BM25Negatives` checkpoint).

    Args:
        temperature: divides the scores; ANCE uses 1 with the dot product.
        in_batch_negatives: one softmax per query over the whole batch (`info_nce`) instead of the released
            code's separate 2-way softmaxes.
        **kwargs: the towers, optimizer and evaluation options of `BiEncoderModule`.
    """

    def __init__(self, temperature: float = 1.0, in_batch_negatives: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.temperature = temperature
        self.in_batch_negatives = in_batch_negatives

    def compute_loss(self, q: Tensor, d: Tensor, batch: TrainBatch) -> Tensor:
        if self.in_batch_negatives:
            return info_nce(q, d, batch.group_size, self.temperature)
        return two_way_nll(q, d, batch.group_size, self.temperature)
