"""lit_dr: dense retriever training with PyTorch Lightning.

The layers, lowest first (a module imports only from its own layer or lower ones):
`files` and `data` (data sets, token stores, batches) -> `evaluation`, `index`, `mining`, `models` (metrics; corpus
embeddings, FAISS and search; negatives from rankings; the encoder and the losses) -> `objectives` (the
LightningModules) -> `training` (the data module, the refresh callback, schedules) -> `commands` (the CLI, export,
index / search, pipelines).
"""

from lit_dr.commands.export_best import ExportBest
from lit_dr.models.encoder import Encoder
from lit_dr.objectives import ANCE, DANCE, BiEncoderModule, BM25Negatives, LTRe, MarginMSE, SamToNe
from lit_dr.training import LinearWarmup, NegativeRefresh, RetrievalDataModule

__all__ = ["ANCE", "DANCE", "BiEncoderModule", "BM25Negatives", "Encoder", "ExportBest", "LTRe", "LinearWarmup",
           "MarginMSE", "NegativeRefresh", "RetrievalDataModule", "SamToNe"]
__version__ = "0.1.0"
