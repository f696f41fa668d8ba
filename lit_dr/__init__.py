"""lit_dr: dense retriever training with PyTorch Lightning."""

from lit_dr.data import RetrievalDataModule
from lit_dr.encoder import Encoder
from lit_dr.modules import ANCE, DANCE, BiEncoderModule, BM25Negatives, LTRe, SamToNe

__all__ = ["ANCE", "DANCE", "BiEncoderModule", "BM25Negatives", "Encoder", "LTRe", "RetrievalDataModule", "SamToNe"]
__version__ = "0.1.0"
