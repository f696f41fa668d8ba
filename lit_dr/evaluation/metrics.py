"""Retrieval metrics (nDCG@10, MRR@10, Recall@100, Recall@1000) via torchmetrics, pytrec_eval as the oracle.

Conventions shared by `retrieval_metrics` and `trec_eval_metrics` (so the two agree to 1e-6):
- A document is relevant when its grade is > 0; grades are linear gains for nDCG (trec_eval's `ndcg_cut`).
- The mean is over queries with at least one relevant document. Such a query with nothing retrieved
  scores 0 (trec_eval -c); queries judged all-non-relevant are skipped (plain trec_eval would average
  them in as 0 when they are in the run).
- MRR@10 is the reciprocal rank of the first relevant document in the top 10, else 0.
- Ties rank as trec_eval ranks them (`comp_sim_docno` in its form_res_rels.c): by score descending, equal scores
  by document id descending in strcmp order. `retrieval_metrics` and `ndcg_values` take the ids as `doc_ids`;
  without them equal scores rank by corpus row descending, which is trec_eval's order when the ids sort as the rows.
- nDCG is torchmetrics' `retrieval_normalized_dcg` on the ranking of `_ranked_lists`, for the mean here and per
  query in `lit_dr.evaluation.analysis.ndcg_per_query`: one definition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lit_dr.files import atomic_file

METRIC_NAMES = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
_DEEPEST = 1000  # the deepest cutoff among METRIC_NAMES


def trec_eval_order(scores: np.ndarray, ids: Sequence) -> np.ndarray:
    """(K,) positions of one query's K documents, best first, as trec_eval ranks them: by score descending, equal
    scores by id descending (`ids` strings compare as strcmp compares their UTF-8 bytes; ints as ints)."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    if not np.any(ranked[1:] == ranked[:-1]):
        return order  # distinct scores: the ids cannot matter, and are not looked at
    return np.array(sorted(range(len(scores)), key=lambda i: (scores[i], ids[i]), reverse=True), dtype=np.int64)


def _ranked_lists(
    scores: np.ndarray,
    doc_rows: np.ndarray,
    relevance: Sequence[Mapping[int, int]],
    doc_ids: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten a run into torchmetrics' (preds, grades, indexes), unretrieved relevant docs appended last.
    `indexes` are the query positions in `relevance` (only those with a relevant document appear).

    preds are ranks turned into positive scores (n, n-1, ..., 1 per query), not the raw scores: torchmetrics'
    MRR and Recall silently treat any document with pred <= 0 as non-relevant (`torch.where(preds > 0, ...)`),
    which would drop relevant documents with negative inner products, and nDCG averages gains over ties.
    """
    preds, grades, indexes = [], [], []
    for q, rel in enumerate(relevance):
        if not any(g > 0 for g in rel.values()):
            continue
        valid = doc_rows[q] >= 0
        rows, s = doc_rows[q][valid], scores[q][valid]
        ids = rows if doc_ids is None else _LazyIds(rows, doc_ids)
        rows = rows[trec_eval_order(s, ids)]  # best first
        _, first = np.unique(rows, return_index=True)
        rows = rows[np.sort(first)]  # a row retrieved twice counts once, at its best rank
        ranked = rows[:_DEEPEST].tolist()  # nothing below the deepest cutoff can change a metric
        seen = set(ranked)
        missed = [d for d, g in rel.items() if g > 0 and d not in seen]
        gains = [max(rel.get(d, 0), 0) for d in ranked]
        # Misses must count in recall's denominator and the ideal DCG but never inside a cutoff, so they go
        # after non-relevant filler up to the deepest cutoff: a short list must not "retrieve" them.
        if missed:
            gains += [0] * (_DEEPEST - len(gains)) + [rel[d] for d in missed]
        n = len(gains)
        preds.append(torch.arange(n, 0, -1, dtype=torch.float64))
        grades.append(torch.tensor(gains, dtype=torch.long))
        indexes.append(torch.full((n,), q, dtype=torch.long))
    if not preds:
        empty = torch.empty(0)
        return empty.double(), empty.long(), empty.long()
    return torch.cat(preds), torch.cat(grades), torch.cat(indexes)


class _LazyIds:
    """The document ids of one query's rows, looked up only when scores tie (a corpus may have millions)."""

    def __init__(self, rows: np.ndarray, doc_ids: Sequence[str]) -> None:
        self.rows, self.doc_ids = rows, doc_ids

    def __getitem__(self, i: int) -> str:
        return str(self.doc_ids[int(self.rows[i])])  # as text: trec_eval compares docnos with strcmp


def _check_run(scores: np.ndarray, doc_rows: np.ndarray, relevance: Sequence[Mapping[int, int]]) -> None:
    if scores.shape != doc_rows.shape or len(relevance) != scores.shape[0]:
        raise ValueError(
            f"scores {scores.shape}, doc_rows {doc_rows.shape} and {len(relevance)} relevance dicts disagree"
        )


def retrieval_metrics(
    scores: np.ndarray,
    doc_rows: np.ndarray,
    relevance: Sequence[Mapping[int, int]],
    doc_ids: Sequence[str] | None = None,
) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@100 and Recall@1000 of a run, averaged over queries with a relevant document.

    Args:
        scores: (Q, K) scores, higher is better.  doc_rows: (Q, K) int64 corpus rows, -1 = empty slot.
        relevance: relevance[q] = {doc_row: grade}; grade > 0 is relevant.
        doc_ids: corpus row -> document id, to rank equal scores as trec_eval does (by id, descending); None:
            by row, descending.
    Returns:
        {name: value} for every name in METRIC_NAMES; NaN when no query has a relevant document.
    """
    from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

    _check_run(scores, doc_rows, relevance)
    preds, grades, indexes = _ranked_lists(scores, doc_rows, relevance, doc_ids)
    if len(preds) == 0:
        return dict.fromkeys(METRIC_NAMES, float("nan"))
    # A pure computation on this process's arrays: torchmetrics must not sync its (CPU) states across processes
    # on compute(), which NCCL cannot do (no CPU backend) and which nothing here needs (every process already
    # holds the same rankings).
    local = {"sync_on_compute": False, "distributed_available_fn": lambda: False}
    metrics = {
        "ndcg@10": (RetrievalNormalizedDCG(top_k=10, **local), grades),
        "mrr@10": (RetrievalMRR(top_k=10, **local), grades > 0),
        "recall@100": (RetrievalRecall(top_k=100, **local), grades > 0),
        "recall@1000": (RetrievalRecall(top_k=1000, **local), grades > 0),
    }
    out = {}
    for name, (metric, target) in metrics.items():
        metric.update(preds, target, indexes=indexes)
        out[name] = float(metric.compute())
    return out


def ndcg_values(
    scores: np.ndarray,
    doc_rows: np.ndarray,
    relevance: Sequence[Mapping[int, int]],
    k: int = 10,
    doc_ids: Sequence[str] | None = None,
) -> dict[int, float]:
    """nDCG@k of each query with a relevant document, {position in `relevance`: value}: the per-query values whose
    mean `retrieval_metrics` reports as ndcg@10 (the same ranking, the same torchmetrics function).

    DCG@k = sum_{r <= k} gain_r / log2(r + 1) over the ranking, gains the grades (<= 0 count 0), divided by the DCG
    of the ideal ranking of all judged gains (trec_eval's `ndcg_cut_k`). Arguments as `retrieval_metrics`'s.
    """
    from torchmetrics.functional.retrieval import retrieval_normalized_dcg

    if not 1 <= k <= _DEEPEST:
        raise ValueError(f"k must be in [1, {_DEEPEST}], got {k}")
    _check_run(scores, doc_rows, relevance)
    preds, grades, indexes = _ranked_lists(scores, doc_rows, relevance, doc_ids)
    queries, counts = torch.unique_consecutive(indexes, return_counts=True)  # each query's entries are contiguous
    pairs = zip(queries.tolist(), preds.split(counts.tolist()), grades.split(counts.tolist()), strict=True)
    return {q: float(retrieval_normalized_dcg(p, g, top_k=k)) for q, p, g in pairs}


def trec_eval_metrics(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """The same four metrics by pytrec_eval (trec_eval), with the conventions in the module docstring.

    ndcg@10 = ndcg_cut_10, recall@k = recall_k, mrr@10 = recip_rank on each query's top 10 by score.
    """
    import pytrec_eval

    judged = {q: dict(r) for q, r in qrels.items() if any(g > 0 for g in r.values())}
    if not judged:
        return dict.fromkeys(METRIC_NAMES, float("nan"))
    full = {q: dict(run.get(q, {})) for q in judged}
    # trec_eval's own top 10: by score, equal scores by docid descending.
    top10 = {q: dict(sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10])
             for q, docs in full.items()}
    per_query = pytrec_eval.RelevanceEvaluator(judged, {"ndcg_cut.10", "recall.100,1000"}).evaluate(full)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)
    # pytrec_eval returns entries only for queries it saw in the run; a missing query scores 0.
    values = {
        "ndcg@10": [per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in judged],
        "mrr@10": [rr.get(q, {}).get("recip_rank", 0.0) for q in judged],
        "recall@100": [per_query.get(q, {}).get("recall_100", 0.0) for q in judged],
        "recall@1000": [per_query.get(q, {}).get("recall_1000", 0.0) for q in judged],
    }
    return {name: float(np.mean(v)) for name, v in values.items()}


def write_trec_run(
    path: str | Path,
    qids: Sequence[str],
    doc_ids: Sequence[str] | np.ndarray,
    scores: np.ndarray,
    doc_rows: np.ndarray,
    tag: str = "lit_dr",
) -> Path:
    """Write a run as TREC lines "qid Q0 docid rank score tag", atomically (temp file + os.replace).

    Args:
        qids: Q query ids.  doc_ids: corpus row -> document id.
        scores: (Q, K).  doc_rows: (Q, K) corpus rows, -1 = empty slot (skipped).
    Each query's lines are sorted by score (ties in slot order) and ranked from 1.
    """
    path = Path(path)
    with atomic_file(path) as f:
        for q, qid in enumerate(qids):
            valid = doc_rows[q] >= 0
            rows, s = doc_rows[q][valid], scores[q][valid]
            order = np.argsort(-s, kind="stable")
            # str() of a numpy scalar is the shortest text that round-trips in its own dtype.
            f.writelines(
                f"{qid} Q0 {doc_ids[int(rows[i])]} {rank} {s[i]!s} {tag}\n" for rank, i in enumerate(order, start=1)
            )
    return path


def read_trec_run(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a TREC run file into {qid: {docid: score}}."""
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                qid, _, docid, _, score, *_ = line.split()
                run.setdefault(qid, {})[docid] = float(score)
    return run
