from lit_dr.modules.ance import ANCE
from lit_dr.modules.base import BiEncoderModule
from lit_dr.modules.bm25neg import BM25Negatives
from lit_dr.modules.dance import DANCE
from lit_dr.modules.ltre import LTRe
from lit_dr.modules.samtone import SamToNe

__all__ = ["ANCE", "BiEncoderModule", "BM25Negatives", "DANCE", "LTRe", "SamToNe"]
