"""Retrieval metrics against pytrec_eval (trec_eval) on the same runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval  # noqa: F401 (a dependency: a broken install fails here, never skips)

from lit_dr.evaluation.metrics import (
    METRIC_NAMES,
    ndcg_values,
    read_trec_run,
    retrieval_metrics,
    trec_eval_metrics,
    write_trec_run,
)


def _random_run(
    seed: int, num_queries: int = 50, k: int = 1000, num_docs: int = 5000
) -> tuple[np.ndarray, np.ndarray, list[dict[int, int]]]:
    """A run with distinct scores (some negative), -1 slots, graded qrels, unretrieved relevant docs."""
    rng = np.random.default_rng(seed)
    scores = np.empty((num_queries, k))
    rows = np.empty((num_queries, k), dtype=np.int64)
    relevance: list[dict[int, int]] = []
    for q in range(num_queries):
        rows[q] = rng.choice(num_docs, size=k, replace=False)
        # Distinct scores, best first like a FAISS result, centred on 0 so some relevant scores are negative.
        scores[q] = np.sort(rng.permutation(k * 10)[:k] / 100.0 - 50.0)[::-1]
        empty = rng.integers(0, k // 5) if q % 3 == 0 else 0  # short result lists padded with -1
        if empty:
            rows[q, -empty:] = -1
            scores[q, -empty:] = -np.inf
        retrieved = rows[q][rows[q] >= 0]
        unretrieved = np.setdiff1d(np.arange(num_docs), retrieved)
        # Relevant docs: some near the top (so @10 metrics are not all 0), some deep, some unretrieved.
        rel: dict[int, int] = {}
        for pool in (retrieved[:15], retrieved, unretrieved):
            rel |= {
                int(d): int(rng.integers(1, 4)) for d in rng.choice(pool, rng.integers(0, 3), replace=False)
            }
        # Judged non-relevant (grade 0).
        rel |= {int(d): 0 for d in rng.choice(retrieved, 3, replace=False) if int(d) not in rel}
        if q % 10 == 1:
            rows[q] = -1  # nothing retrieved at all
            scores[q] = -np.inf
            rel.setdefault(0, 2)
        if q % 10 == 2:
            rel = {d: 0 for d in rel}  # no relevant document: skipped by both
        relevance.append(rel)
    return scores, rows, relevance


def _as_trec(
    scores: np.ndarray, rows: np.ndarray, relevance: list[dict[int, int]], doc_ids: list[str] | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    name = (lambda d: f"d{d}") if doc_ids is None else (lambda d: doc_ids[d])
    run = {
        f"q{q}": {name(d): float(s) for d, s in zip(rows[q], scores[q], strict=True) if d >= 0}
        for q in range(len(rows))
    }
    # A query with nothing retrieved is absent from the run.
    run = {q: docs for q, docs in run.items() if docs}
    qrels = {f"q{q}": {name(d): g for d, g in rel.items()} for q, rel in enumerate(relevance) if rel}
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_trec_eval_on_random_runs(seed: int) -> None:
    scores, rows, relevance = _random_run(seed)
    ours = retrieval_metrics(scores, rows, relevance)
    oracle = trec_eval_metrics(*_as_trec(scores, rows, relevance))
    assert set(ours) == set(oracle) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert ours[name] == pytest.approx(oracle[name], abs=1e-6), name
    # The run must exercise every metric away from its trivial values, or the test proves little.
    assert all(0.05 < oracle[name] < 0.95 for name in METRIC_NAMES), oracle


@pytest.mark.parametrize("seed", [0, 1])
def test_tied_scores_rank_as_trec_eval_ranks_them(seed: int) -> None:
    """Scores on a grid of whole numbers: about ten documents share each score, the top 10 included. trec_eval
    breaks such ties by docid, descending; `retrieval_metrics` (and `ndcg_values` under it) must do the same, with
    the ids given, and by row without them (the same order when the ids sort as the rows)."""
    scores, rows, relevance = _random_run(seed, num_docs=2000)
    scores = np.round(scores)  # -inf stays -inf
    ids = [f"doc-{i}" for i in np.random.default_rng(seed).permutation(2000)]  # no relation to the rows
    oracle = trec_eval_metrics(*_as_trec(scores, rows, relevance, ids))
    assert retrieval_metrics(scores, rows, relevance, ids) == pytest.approx(oracle, abs=1e-6)
    per_query = ndcg_values(scores, rows, relevance, 10, ids)  # what analysis.ndcg_per_query reports
    assert np.mean(list(per_query.values())) == pytest.approx(oracle["ndcg@10"], abs=1e-6)
    padded = [f"d{i:05d}" for i in range(2000)]  # sort as the rows do
    assert retrieval_metrics(scores, rows, relevance) == pytest.approx(
        trec_eval_metrics(*_as_trec(scores, rows, relevance, padded)), abs=1e-6)
    # The ties decide something: ranked by row ascending instead, the same run scores differently.
    reversed_ids = [f"d{2000 - i:05d}" for i in range(2000)]
    assert abs(trec_eval_metrics(*_as_trec(scores, rows, relevance, reversed_ids))["ndcg@10"] - oracle["ndcg@10"]) > 1e-3


def test_unsorted_slots_are_ranked_by_score() -> None:
    scores, rows, relevance = _random_run(3, num_queries=20, k=200, num_docs=1000)
    perm = np.random.default_rng(0).permuted(np.tile(np.arange(200), (20, 1)), axis=1)
    shuffled = np.take_along_axis(scores, perm, 1), np.take_along_axis(rows, perm, 1)
    assert retrieval_metrics(*shuffled, relevance) == pytest.approx(
        retrieval_metrics(scores, rows, relevance)
    )


def test_hand_computed_case() -> None:
    # One query: ranks 1..3 are docs 7, 3, 9 (scores negative on purpose); doc 3 (grade 2) is at rank 2,
    # doc 5 (grade 1) is relevant but not retrieved.
    scores = np.array([[-1.0, -2.0, -3.0]])
    rows = np.array([[7, 3, 9]])
    relevance = [{3: 2, 5: 1, 9: 0}]
    dcg = 2 / math.log2(3)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    want = {"ndcg@10": dcg / idcg, "mrr@10": 0.5, "recall@100": 0.5, "recall@1000": 0.5}
    assert retrieval_metrics(scores, rows, relevance) == pytest.approx(want, abs=1e-7)
    assert trec_eval_metrics(*_as_trec(scores, rows, relevance)) == pytest.approx(want, abs=1e-7)


def test_mrr_cutoff_and_recall_cutoff() -> None:
    # Relevant doc at rank 11: outside MRR@10, inside Recall@100.
    scores = -np.arange(200, dtype=np.float64)[None, :]
    rows = np.arange(200)[None, :]
    got = retrieval_metrics(scores, rows, [{10: 1, 150: 1}])
    assert got["mrr@10"] == 0.0 and got["ndcg@10"] == 0.0
    assert got["recall@100"] == 0.5 and got["recall@1000"] == 1.0


def test_relevant_below_the_deepest_cutoff_is_a_miss() -> None:
    # K = 1500 slots: the relevant doc at rank 1200 is beyond Recall@1000 but still in the denominator.
    scores = -np.arange(1500, dtype=np.float64)[None, :]
    rows = np.arange(1500)[None, :]
    relevance = [{3: 1, 1199: 1}]
    want = {"recall@100": 0.5, "recall@1000": 0.5, "mrr@10": 0.25}
    for got in (
        retrieval_metrics(scores, rows, relevance),
        trec_eval_metrics(*_as_trec(scores, rows, relevance)),
    ):
        assert {name: got[name] for name in want} == pytest.approx(want)


def test_queries_without_relevant_documents_are_skipped() -> None:
    scores = np.array([[2.0, 1.0], [2.0, 1.0]])
    rows = np.array([[0, 1], [0, 1]])
    assert retrieval_metrics(scores, rows, [{0: 1}, {1: 0}])["mrr@10"] == 1.0
    assert all(math.isnan(v) for v in retrieval_metrics(scores, rows, [{}, {1: 0}]).values())


def test_trec_run_round_trip(tmp_path: Path) -> None:
    scores, rows, _ = _random_run(4, num_queries=6, k=30, num_docs=100)
    scores = scores.astype(np.float32)
    qids = [f"query-{q}" for q in range(6)]
    doc_ids = np.array([f"doc-{d}" for d in range(100)])
    path = write_trec_run(tmp_path / "runs" / "dev.trec", qids, doc_ids, scores, rows)
    assert path.exists() and list(path.parent.iterdir()) == [path]  # no temp file left behind

    lines = path.read_text().splitlines()
    assert len(lines) == int((rows >= 0).sum())
    first = lines[0].split()
    assert first[:2] == ["query-0", "Q0"] and first[3] == "1" and first[5] == "lit_dr"

    # Scores are written in the shortest text that reads back as the same float32.
    got = {q: {d: np.float32(s) for d, s in docs.items()} for q, docs in read_trec_run(path).items()}
    want = {
        qids[q]: {str(doc_ids[d]): s for d, s in zip(rows[q], scores[q], strict=True) if d >= 0}
        for q in range(6)
    }
    assert got == {q: docs for q, docs in want.items() if docs}
    for q in range(6):
        ranks = [int(line.split()[3]) for line in lines if line.startswith(f"{qids[q]} ")]
        assert ranks == list(range(1, len(ranks) + 1))


def test_write_trec_run_failure_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(IndexError):
        write_trec_run(tmp_path / "bad.trec", ["q"], ["d0"], np.array([[1.0, 0.5]]), np.array([[0, 5]]))
    assert list(tmp_path.iterdir()) == []
