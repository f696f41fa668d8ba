"""`CorpusIndex`: the embeddings of a token store's texts on disk, the FAISS indexes built from them, and search
for every process's queries. One object behind evaluation, the negative refresh, LTRe's fixed index and
`lit-dr index` / `search`; the data module holds the corpus's.

    index = CorpusIndex(corpus_store, "embeddings/")            # or CorpusIndex.open("embeddings/corpus-step0000040")
    index.embed(Tower(encode_docs, 384), name="corpus-step0000040", version=40)
    scores, rows = index.search(query_embeddings, k=100)         # (Q, k), best first; rows -1 where short

The towers come in as plain callables (`Tower`: tokens -> (n, H) embeddings): nothing here imports a
LightningModule. Each process encodes its share of the rows into its own shard (`encoding.encode_to_shards`);
only the newest embeddings are kept. Search follows `search.search_backend` (FAISS on the CPU, torch or FAISS's
GPU build on a GPU), ranks in float32 with autocast off, and builds a non-exact index once per embeddings and
factory: process 0 writes it as `index-<factory>.faiss` beside the shards (the one file name), the others read it.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_dr.data.batches import TokenBatch
from lit_dr.data.token_store import TokenStore
from lit_dr.index.embeddings import EmbeddingDtype, EmbeddingShards
from lit_dr.index.encoding import AutocastFactory, encode_to_shards
from lit_dr.index.search import (
    FixedIndex,
    Processes,
    even_share,
    gather_results,
    index_file,
    warn_short_results,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tower:
    """One side of a model as a plain callable: (n, L) tokens -> (n, H) embeddings, with its width H."""

    encode: Callable[[TokenBatch], Tensor]
    dim: int


@dataclass
class Encoding:
    """How a process runs a tower over a store: batch size, autocast (the trainer's precision on a GPU), progress."""

    batch_size: int = 128
    autocast: AutocastFactory | None = None
    show_progress: bool = False


class CorpusIndex:
    """The embeddings of `store`'s rows (`rows`, default all) under `root`, and search over them.

    Args:
        store: the texts (a corpus, or DANCE's training queries); None for an index opened from files.
        root: where embedding directories go (a path, or a callable giving it when first needed: a run directory
            is known only once the fit runs).
        rows: the store rows embedded, in order (None: every row). Search returns store rows.
        dtype: how embeddings are stored (float16 halves the files; search is float32 whatever it is).
        procs: this process's place in the job (settable later: the data module fills it from its trainer).
        encoding: how it encodes (settable later, as `procs`).
    """

    def __init__(self, store: TokenStore | None, root: str | Path | Callable[[], Path] | None = None,
                 rows: np.ndarray | None = None, dtype: EmbeddingDtype = "float32", procs: Processes | None = None,
                 encoding: Encoding | None = None) -> None:
        self.store, self._root, self.dtype = store, root, dtype
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.procs, self.encoding = procs or Processes(), encoding or Encoding()
        self.embeddings: EmbeddingShards | None = None
        self.version: object | None = None  # what the current embeddings were made from (e.g. an optimizer step)
        self._searchers: dict[tuple, FixedIndex] = {}

    @classmethod
    def open(cls, directory: str | Path, procs: Processes | None = None) -> CorpusIndex:
        """An index over embeddings already on disk (`lit-dr search`, LTRe's reused index); never re-embedded."""
        index = cls(None, Path(directory).parent, procs=procs)
        index.adopt(EmbeddingShards(directory))
        return index

    @property
    def root(self) -> Path:
        if self._root is None:
            raise ValueError("CorpusIndex has no root directory for its embedding files")
        if callable(self._root):
            self._root = Path(self._root())
        return Path(self._root)

    def __len__(self) -> int:
        if self.embeddings is not None:
            return len(self.embeddings)
        return len(self.store) if self.rows is None else len(self.rows)

    # -- embeddings -------------------------------------------------------------------------------------
    def embed(self, tower: Tower, name: str, version: object | None = None) -> EmbeddingShards:
        """Embed the rows with `tower` into `root/name`, each process its share, and make them current (the previous
        embeddings are deleted). With a `version` equal to the current one, the current embeddings are returned as
        they are: a refresh and a validation at the same optimizer step encode once. Collective."""
        if version is not None and version == self.version and self.embeddings is not None:
            return self.embeddings
        if self.store is None:
            raise ValueError("this CorpusIndex was opened from files: it has no texts to embed")
        directory = self.root / name
        if self.procs.rank == 0 and directory.exists():  # a leftover of an interrupted run
            shutil.rmtree(directory)
        if self.procs.barrier is not None and self.procs.world_size > 1:
            self.procs.barrier()
        embeddings = encode_to_shards(
            tower.encode, self.store, directory, tower.dim, self.procs.rank, self.procs.world_size,
            self.procs.barrier, rows=self.rows, dtype=self.dtype, batch_size=self.encoding.batch_size,
            device=self.procs.device, autocast=self.encoding.autocast, show_progress=self.encoding.show_progress,
            desc=f"encode {name}")
        previous = self.embeddings
        self.adopt(embeddings, version)
        if previous is not None and previous.directory != embeddings.directory:
            self._delete(previous.directory)
        return embeddings

    def adopt(self, embeddings: EmbeddingShards, version: object | None = None, owned: bool = True) -> None:
        """Make embeddings already on disk the current ones (LTRe's `doc_embeddings`, a checkpoint's record).
        owned=False: another run's files (a validate reusing its fit's), never deleted from here."""
        self.embeddings, self.version, self._searchers = embeddings, version, {}
        self._borrowed = None if owned else embeddings.directory

    def forget_version(self) -> None:
        """The next `embed` encodes whatever its version (a fit starts: the weights may come from a checkpoint)."""
        self.version = None

    def remove(self) -> None:
        """Delete the current embedding files (process 0; call after the last collective that used them)."""
        if self.embeddings is not None:
            self._delete(self.embeddings.directory)
        self.embeddings, self.version, self._searchers = None, None, {}

    def _delete(self, directory: Path) -> None:
        if self.procs.rank == 0 and directory != getattr(self, "_borrowed", None):
            shutil.rmtree(directory, ignore_errors=True)

    def _current(self) -> EmbeddingShards:
        if self.embeddings is None:
            raise ValueError("CorpusIndex has no embeddings yet: call `embed` (or `open` a directory) first")
        return self.embeddings

    def to_store_rows(self, positions: np.ndarray) -> np.ndarray:
        """Embedding positions (-1 kept) -> store rows."""
        if self.rows is None:
            return positions
        return np.where(positions >= 0, self.rows[np.maximum(positions, 0)], -1)

    # -- search ---------------------------------------------------------------------------------------------
    def searcher(self, factory: str = "Flat", params: dict[str, float] | None = None,
                 resident: bool | None = False) -> FixedIndex:
        """The search handle of the current embeddings for `factory` with `params`, built once (`FixedIndex`: a
        non-exact index is built by process 0 and read by the others). resident: hold an exact index's matrix on
        the GPU (None: when the model runs there; LTRe searches every step), else stream over the files."""
        key = (factory, json.dumps(params, sort_keys=True), resident)
        if key not in self._searchers:
            self._searchers[key] = FixedIndex(self._current(), factory, self.procs, resident=resident, params=params)
        return self._searchers[key]

    def load_faiss(self, factory: str, params: dict[str, float] | None = None) -> None:
        """Search `factory` with the FAISS index `save_faiss` wrote beside these embeddings, not a new one."""
        from lit_dr.index.faiss_index import import_faiss

        path = index_file(self._current().directory, factory)
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: no {factory} index was written over these embeddings")
        key = (factory, json.dumps(params, sort_keys=True), False)
        self._searchers[key] = FixedIndex(self._current(), factory, self.procs, resident=False, params=params,
                                          built=import_faiss().read_index(str(path)))

    def search_local(self, queries: np.ndarray, k: int, factory: str = "Flat", params: dict[str, float] | None = None,
                     resident: bool | None = False) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and store rows for this process's (Q, H) queries only: no collective (LTRe's step)."""
        searcher = self.searcher(factory, params, resident)
        scores, positions = searcher.search(queries, k)
        if not getattr(searcher, "warned_short", False) and self.procs.rank == 0:  # once: LTRe searches every step
            searcher.warned_short = warn_short_results(positions, min(k, len(self)), f"{factory} (warned once)") > 0
        return scores, self.to_store_rows(positions)

    def search(self, queries: np.ndarray, k: int, factory: str = "Flat", params: dict[str, float] | None = None,
               share: bool = True, resident: bool | None = False) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and store rows, best first (-inf / -1 where a search came back short), on every process.

        share: `queries` are the same on every process, each searches its contiguous share and the results are
        gathered; False: they are this process's own and every process's come back, in rank order. Process 0
        warns when some queries got fewer than k results. Collective."""
        k = min(k, len(self._current()))
        if share:
            queries = queries[even_share(len(queries), self.procs.rank, self.procs.world_size)]
        searcher = self.searcher(factory, params, resident)
        scores, positions = searcher.search(queries, k) if len(queries) else _empty(k)
        scores, positions = gather_results(scores, positions, k, f"{factory} search", self.procs)
        return scores, self.to_store_rows(positions)

    def vectors(self, rows: np.ndarray, device: torch.device, factory: str = "Flat",
                params: dict[str, float] | None = None, resident: bool | None = None) -> Tensor:
        """(len(rows), H) float32 stored embeddings of store rows, on `device` (LTRe recomputes scores with them)."""
        if self.rows is not None:
            raise ValueError("vectors() reads rows of an index over a whole store")
        return self.searcher(factory, params, resident).vectors(rows, device)

    def save_faiss(self, factory: str) -> Path:
        """Write the FAISS index of a non-exact `factory` beside the embeddings (`search.index_file`; process 0 of a
        job of several has written it already), for `lit-dr search` to read (`load_faiss`). Collective."""
        from lit_dr.index.faiss_index import import_faiss

        index, path = self.searcher(factory).index, index_file(self._current().directory, factory)
        if index is None:
            raise ValueError(f"{factory!r} is exact search: it has no FAISS index to write")
        if self.procs.rank == 0 and not path.exists():
            faiss = import_faiss()
            on_gpu = hasattr(faiss, "index_gpu_to_cpu") and type(index).__name__.startswith("Gpu")
            faiss.write_index(faiss.index_gpu_to_cpu(index) if on_gpu else index, str(path))
        return path


def _empty(k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
