from lit_dr.modules.base import BiEncoderModule
from lit_dr.modules.bm25neg import BM25Negatives
from lit_dr.modules.samtone import SamToNe

__all__ = ["BiEncoderModule", "BM25Negatives", "SamToNe"]
