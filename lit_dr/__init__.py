"""lit_dr: dense retriever training with PyTorch Lightning.

The layers, lowest first (a module imports only from its own layer or lower ones):
`files` and `data` (data sets, token stores, batches) -> `evaluation`, `index`, `mining`, `models` (metrics; corpus
embeddings, FAISS and search; negatives from rankings; the encoder and the losses) -> `objectives` (the
LightningModules) -> `training` (the data module, the refresh callback, schedules) -> `commands` (the CLI, export,
index / search, pipelines).
"""

from lit_dr.commands.export_best import ExportBest
from lit_dr.index import CorpusIndex
from lit_dr.models.encoder import Encoder
from lit_dr.objectives import ANCE, DANCE, BiEncoderModule, BM25Negatives, LTRe, MarginMSE, SamToNe
from lit_dr.training import LinearWarmup, NegativeRefresh, RetrievalDataModule

__all__ = ["ANCE", "DANCE", "BiEncoderModule", "BM25Negatives", "CorpusIndex", "Encoder", "ExportBest", "LTRe",
           "LinearWarmup", "MarginMSE", "NegativeRefresh", "RetrievalDataModule", "SamToNe"]
__version__ = "0.1.0"


def _alias_old_module_paths() -> None:
    # Checkpoints written before the package had layers name their towers `lit_dr.encoder.Encoder`, their schedules
    # `lit_dr.schedulers.LinearWarmup` and their objectives `lit_dr.modules.<file>.<Class>`; `load_from_checkpoint`
    # imports those paths.
    import sys

    from lit_dr import objectives, training
    from lit_dr.models import encoder
    from lit_dr.training import schedulers

    sys.modules.setdefault("lit_dr.encoder", encoder)
    sys.modules.setdefault("lit_dr.schedulers", schedulers)
    sys.modules.setdefault("lit_dr.callbacks", training)
    sys.modules.setdefault("lit_dr.modules", objectives)
    for name in ("ance", "base", "bm25neg", "dance", "ltre", "samtone"):
        sys.modules.setdefault(f"lit_dr.modules.{name}", sys.modules[f"lit_dr.objectives.{name}"])


_alias_old_module_paths()
