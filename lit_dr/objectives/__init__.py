"""The objectives: LightningModules that are towers and a loss (one small file per paper)."""

from lit_dr.objectives.ance import ANCE
from lit_dr.objectives.base import BiEncoderModule
from lit_dr.objectives.bm25neg import BM25Negatives
from lit_dr.objectives.dance import DANCE
from lit_dr.objectives.ltre import LTRe
from lit_dr.objectives.margin_mse import MarginMSE
from lit_dr.objectives.samtone import SamToNe

__all__ = ["ANCE", "BiEncoderModule", "BM25Negatives", "DANCE", "LTRe", "MarginMSE", "SamToNe"]
