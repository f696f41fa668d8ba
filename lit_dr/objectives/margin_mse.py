"""MarginMSE: distil a teacher's score margins (positive minus each negative) into the bi-encoder."""

from __future__ import annotations

from torch import Tensor

from lit_dr.data.batches import TrainBatch
from lit_dr.models.losses import margin_mse
from lit_dr.objectives.base import BiEncoderModule


class MarginMSE(BiEncoderModule):
    """Hofstätter et al. 2020 (arXiv 2010.02666). The teacher's scores come from the data module
    (`teacher_scores`: `TrainBatch.doc_features["teacher_score"]`); negatives from any source (`negatives:
    teacher` for the teacher's own ranking).

    Where lit_dr differs from the paper: the teacher may be any scorer written to the file (SciFact's is a
    bi-encoder, `benchmarks/teacher_scores.py`), not an ensemble of BERT cross-encoders; each query brings G - 1
    negatives (the paper: one MS MARCO triple); a negative the teacher did not score is left out of the mean.
    Student and teacher scores must be on one scale (the paper: raw dot products): a cosine teacher wants a
    cosine student (`Encoder(normalize=True)`), as here.

    Its arguments are `BiEncoderModule`'s (the towers, optimizer and evaluation options): the loss has none.
    """

    def compute_loss(self, q: Tensor, d: Tensor, batch: TrainBatch) -> Tensor:
        if "teacher_score" not in batch.doc_features:
            raise ValueError("MarginMSE needs teacher scores in every batch: set the data module's teacher_scores")
        return margin_mse(q, d, batch.group_size, batch.doc_features["teacher_score"])
