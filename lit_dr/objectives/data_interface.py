"""What an objective needs from its data module: one documented interface (`RetrievalData`), so that any data
module that has these members can train and evaluate a `BiEncoderModule` (`lit_dr.RetrievalDataModule` is one)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from lit_dr.index.corpus_index import CorpusIndex


class RetrievalData(Protocol):
    """The data side of a fit, as the objectives see it.

    - `corpus_index`: the corpus embeddings on disk, their FAISS index and search (`lit_dr.index.CorpusIndex`),
      filled with this process's place in the job and its encoding settings.
    - `relevance_for(query_rows, split)`: {corpus row: grade} per query, as judged in `split` (None: training's).
    - `excluded_docs(query_rows)`: per query, the corpus rows that may never be its negatives (the false-negative
      mask, also across processes).
    - `query_ids(rows)`: the queries' ids, for run files and error messages.
    """

    corpus_index: CorpusIndex

    def relevance_for(self, query_rows: np.ndarray, split: str | None = None) -> list[dict[int, int]]: ...

    def excluded_docs(self, query_rows) -> list[set[int]]: ...

    def query_ids(self, rows) -> list[str]: ...


MEMBERS = ("corpus_index", "relevance_for", "excluded_docs", "query_ids")


def retrieval_data(trainer) -> RetrievalData:
    """The trainer's data module, checked against `RetrievalData` (a clear error instead of an AttributeError
    deep inside evaluation)."""
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    # Looked up on the class, as Python 3.12's `isinstance` does for protocols: 3.11's would evaluate the
    # `corpus_index` property (and build the index) just to check that it exists.
    if dm is None or not all(hasattr(type(dm), name) for name in MEMBERS):
        raise TypeError(f"lit_dr objectives need a data module with corpus_index, relevance_for, excluded_docs and "
                        f"query_ids (lit_dr.objectives.data_interface.RetrievalData), got {type(dm).__name__}")
    return dm
