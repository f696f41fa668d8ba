"""BM25 retrieval with bm25s (cached on disk); its negatives are mined by `lit_dr.mining.miners` like any ranking.

`bm25s` and `Stemmer` (PyStemmer) are imported lazily, inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def bm25_cache_key(
    corpus_texts: Sequence[str], stemmer: str | None, stopwords: str | None, k1: float, b: float
) -> str:
    """sha256 over the parameters, the bm25s / PyStemmer versions and the corpus texts (streamed)."""
    h = hashlib.sha256()
    params = {
        "stemmer": stemmer, "stopwords": stopwords, "k1": k1, "b": b,
        "bm25s": _version("bm25s"), "PyStemmer": _version("PyStemmer"),
    }  # fmt: skip
    h.update(json.dumps(params, sort_keys=True).encode())
    for text in corpus_texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))  # length prefix: ["ab", "c"] must not hash like ["a", "bc"]
        h.update(data)
    return h.hexdigest()


def _save_atomic(retriever: Any, path: Path, show_progress: bool) -> None:
    # Save next to the final place, then rename: a reader never sees a half-written index.
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        retriever.save(str(tmp), show_progress=show_progress)
        tmp.chmod(0o755)  # mkdtemp creates 0700; a cache is meant to be shared
        os.replace(tmp, path)
    except OSError:
        if not path.is_dir():  # a concurrent writer won the rename: its index is the same, keep it
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bm25_search(
    corpus_texts: Sequence[str],
    query_texts: Sequence[str],
    k: int,
    cache_dir: str | Path | None = None,
    stemmer: str | None = "english",
    stopwords: str | None = "en",
    k1: float = 1.5,
    b: float = 0.75,
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k BM25 (bm25s, Lucene variant) of every query over the corpus.

    Args:
        stemmer: a PyStemmer algorithm ("english", ...) or None.  stopwords: a bm25s stopword list name or None.
        cache_dir: when given, the index lives in `cache_dir/<bm25_cache_key(...)>` and is loaded from there
            when present instead of re-indexing.
    Returns:
        (scores, rows): (Q, k) float32 scores and int64 corpus rows, best first; -inf / -1 padded when
        the corpus has fewer than k documents. Documents with score 0 (no shared term) may fill a row.
    """
    import bm25s

    from lit_dr.data.progress import on_terminal, progress

    # bm25s's own bars only where they redraw in place: in a log file they are fragments of carriage returns.
    bars = show_progress and on_terminal()
    stem = None
    if stemmer is not None:
        import Stemmer

        stem = Stemmer.Stemmer(stemmer)
    num_queries, n = len(query_texts), len(corpus_texts)
    scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
    rows = np.full((num_queries, k), -1, dtype=np.int64)
    if n == 0 or num_queries == 0:
        return scores, rows

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / bm25_cache_key(corpus_texts, stemmer, stopwords, k1, b)
    if path is not None and path.is_dir():
        retriever = bm25s.BM25.load(str(path), show_progress=bars)
    else:
        tokens = bm25s.tokenize(
            list(corpus_texts), stopwords=stopwords, stemmer=stem, show_progress=bars
        )
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(tokens, show_progress=bars)
        del tokens
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _save_atomic(retriever, path, bars)

    # Query tokens as strings: bm25s maps them through the index vocabulary and drops unknown words.
    with progress(f"BM25 top {k} over {n} documents", unit=" queries", show=show_progress and not bars) as count:
        q_tokens = bm25s.tokenize(
            list(query_texts), stopwords=stopwords, stemmer=stem, return_ids=False, show_progress=bars
        )
        kk = min(k, n)  # bm25s refuses k > corpus size
        docs, top = retriever.retrieve(q_tokens, k=kk, show_progress=bars)
        count.update(num_queries)
    scores[:, :kk] = top
    rows[:, :kk] = docs
    return scores, rows

