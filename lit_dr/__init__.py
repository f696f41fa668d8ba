"""lit_dr: dense retriever training with PyTorch Lightning.

The layers, lowest first (a module imports only from its own layer or lower ones):
`files` and `data` (data sets, token stores, batches) -> `evaluation`, `index`, `mining`, `models` (metrics; corpus
embeddings, FAISS and search; negatives from rankings; the encoder and the losses) -> `objectives` (the
LightningModules) -> `training` (the data module, the refresh callback, schedules) -> `commands` (the CLI, export,
index / search, pipelines).

The names below are imported when first used (PEP 562), not with the package: `import lit_dr` (which every
`lit-dr` command does) costs no torch or Lightning import, so `lit-dr export --help` answers at once.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

# name -> the module that defines it
_EXPORTS = {
    "ANCE": "lit_dr.objectives", "DANCE": "lit_dr.objectives", "BiEncoderModule": "lit_dr.objectives",
    "BM25Negatives": "lit_dr.objectives", "LTRe": "lit_dr.objectives", "MarginMSE": "lit_dr.objectives",
    "SamToNe": "lit_dr.objectives", "CorpusIndex": "lit_dr.index", "Encoder": "lit_dr.models.encoder",
    "ExportBest": "lit_dr.commands.export_best", "LinearWarmup": "lit_dr.training",
    "NegativeRefresh": "lit_dr.training", "RetrievalDataModule": "lit_dr.training", "fit": "lit_dr.commands.api",
}
__all__ = ["ANCE", "DANCE", "BiEncoderModule", "BM25Negatives", "CorpusIndex", "Encoder", "ExportBest", "LTRe",
           "LinearWarmup", "MarginMSE", "NegativeRefresh", "RetrievalDataModule", "SamToNe", "fit"]
__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see
    from lit_dr.commands.api import fit
    from lit_dr.commands.export_best import ExportBest
    from lit_dr.index import CorpusIndex
    from lit_dr.models.encoder import Encoder
    from lit_dr.objectives import ANCE, DANCE, BiEncoderModule, BM25Negatives, LTRe, MarginMSE, SamToNe
    from lit_dr.training import LinearWarmup, NegativeRefresh, RetrievalDataModule


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_dr' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


# Checkpoints written before the package had layers name their towers `lit_dr.encoder.Encoder`, their schedules
# `lit_dr.schedulers.LinearWarmup` and their objectives `lit_dr.modules.<file>.<Class>`; `load_from_checkpoint`
# imports those paths. A finder maps each old path to its new module when (and only when) something imports it.
_OLD_PATHS = {"lit_dr.encoder": "lit_dr.models.encoder", "lit_dr.schedulers": "lit_dr.training.schedulers",
              "lit_dr.callbacks": "lit_dr.training", "lit_dr.modules": "lit_dr.objectives",
              **{f"lit_dr.modules.{n}": f"lit_dr.objectives.{n}"
                 for n in ("ance", "base", "bm25neg", "dance", "ltre", "samtone")}}


class _OldPathAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _OLD_PATHS:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "lit_dr.modules")

    def create_module(self, spec):
        module = importlib.import_module(_OLD_PATHS[spec.name])  # the new module itself, under the old name too
        spec.loader_state = module.__spec__  # the import system is about to set `__spec__` to the old name's
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = module.__spec__.loader_state  # already executed, as its new name


if not any(isinstance(f, _OldPathAlias) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldPathAlias())  # first: `lit_dr.modules.x` would else load objectives/x.py again
