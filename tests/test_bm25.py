"""BM25 search (bm25s), its on-disk cache, and hard negatives from a ranking."""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np
import pytest
import Stemmer  # noqa: F401 (a dependency: a broken install fails here, never skips)

from lit_dr.mining.bm25 import bm25_cache_key, bm25_search
from lit_dr.mining.miners import Ranking, UniformMiner

CORPUS = [
    "The cat sat on the mat and purred.",
    "Dogs are loyal animals that love walks.",
    "Quantum computers use qubits to run algorithms.",
    "Photosynthesis converts sunlight into chemical energy in plants.",
    "The stock market fell sharply on Monday.",
    "Volcanoes erupt when magma rises to the surface.",
]
QUERIES = ["how do quantum computers work", "why do plants need sunlight", "erupting volcano magma"]


def test_obvious_top_document() -> None:
    scores, rows = bm25_search(CORPUS, QUERIES, k=3, show_progress=False)
    assert scores.shape == rows.shape == (3, 3) and scores.dtype == np.float32 and rows.dtype == np.int64
    assert rows[:, 0].tolist() == [2, 3, 5]
    assert (scores[:, 0] > 0).all() and (np.diff(scores, axis=1) <= 0).all()


def test_stemming_matters() -> None:
    # "erupting" only matches "erupt" after stemming.
    stemmed, _ = bm25_search(CORPUS, ["erupting"], k=1, show_progress=False)
    plain, _ = bm25_search(CORPUS, ["erupting"], k=1, stemmer=None, show_progress=False)
    assert stemmed[0, 0] > 0 and plain[0, 0] == 0


def test_unknown_and_empty_queries_score_zero() -> None:
    scores, rows = bm25_search(CORPUS, ["zzzz unknownword", "", "the and"], k=2, show_progress=False)
    assert (scores == 0).all() and ((rows >= 0) & (rows < len(CORPUS))).all()


def test_padding_when_k_exceeds_corpus() -> None:
    scores, rows = bm25_search(CORPUS, QUERIES, k=10, show_progress=False)
    assert scores.shape == (3, 10)
    assert (rows[:, 6:] == -1).all() and np.isneginf(scores[:, 6:]).all()
    assert (np.sort(rows[:, :6], axis=1) == np.arange(6)).all()
    scores, rows = bm25_search([], QUERIES, k=2, show_progress=False)
    assert (rows == -1).all() and np.isneginf(scores).all()


def test_cache_is_written_atomically_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = bm25_search(CORPUS, QUERIES, k=4, cache_dir=tmp_path, show_progress=False)
    entries = list(tmp_path.iterdir())  # the index only, no temp dir left behind
    assert [p.name for p in entries] == [bm25_cache_key(CORPUS, "english", "en", 1.5, 0.75)]
    assert any(entries[0].iterdir())

    def no_indexing(*args: object, **kwargs: object) -> None:
        raise AssertionError("re-indexed despite a cached index")

    monkeypatch.setattr(bm25s.BM25, "index", no_indexing)
    second = bm25_search(CORPUS, QUERIES, k=4, cache_dir=tmp_path, show_progress=False)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    with pytest.raises(AssertionError, match="re-indexed"):  # another corpus is another key
        bm25_search([*CORPUS, "one more document"], QUERIES, k=4, cache_dir=tmp_path, show_progress=False)


def test_cache_key_depends_on_texts_and_parameters() -> None:
    key = bm25_cache_key(["ab", "c"], "english", "en", 1.5, 0.75)
    assert key != bm25_cache_key(["a", "bc"], "english", "en", 1.5, 0.75)
    assert key != bm25_cache_key(["ab", "c"], None, "en", 1.5, 0.75)
    assert key != bm25_cache_key(["ab", "c"], "english", "en", 1.2, 0.75)
    assert key == bm25_cache_key(("ab", "c"), "english", "en", 1.5, 0.75)


def test_bm25_table_drops_relevant_and_empty_keeps_order() -> None:
    """The BM25 table's rule (`_bm25_negatives`): every usable row of the ranking, in rank order."""
    rows = np.array([[5, 3, -1, 8], [4, 1, 7, 0], [6, 2, 1, 3]])
    mined = UniformMiner()(Ranking([10, 11, 12], rows), [{3}, set(), [6, 2, 1]], [{3}, set(), {6}], num=None)
    assert [g.tolist() for g in mined.candidates.values()] == [[5, 8], [4, 1, 7, 0], [3]]
    assert list(mined.candidates) == [10, 11, 12]
    assert all(g.dtype == np.int64 for g in mined.candidates.values())
    with pytest.raises(ValueError, match="3 ranked lists but 1"):
        UniformMiner()(Ranking([10, 11, 12], rows), [{3}], [{3}] * 3, num=None)
