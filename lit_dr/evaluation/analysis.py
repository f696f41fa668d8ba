"""The arithmetic behind the notebooks' figures: per-query nDCG of TREC runs and their differences, refresh records
as columns, nearest-document distances, corpus samples and t-SNE inputs. Plain functions over dicts, arrays and
tensors; the notebooks under `notebooks/` load models and files, call these and plot."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


# -- two runs, per query -----------------------------------------------------------------------------------
def ndcg_per_query(
    run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]], k: int = 10
) -> dict[str, float]:
    """trec_eval's `ndcg_cut_k` for each query of `qrels` with a relevant document: the per-query values of
    `lit_dr.evaluation.metrics.ndcg_values` (the definition `retrieval_metrics` averages, ties ranked as
    trec_eval ranks them: by document id, descending). A query absent from the run scores 0.

    Args:
        run: {qid: {docid: score}} (`lit_dr.evaluation.metrics.read_trec_run`).  qrels: {qid: {docid: grade}}.
    """
    from lit_dr.evaluation.metrics import ndcg_values

    qids = [q for q, judged in qrels.items() if any(g > 0 for g in judged.values())]
    doc_ids = sorted({d for q in qids for d in (*run.get(q, {}), *qrels[q])})
    row = {d: i for i, d in enumerate(doc_ids)}
    width = max((len(run.get(q, {})) for q in qids), default=0)
    scores = np.full((len(qids), width), -np.inf)  # (Q, K), padded with empty slots
    rows = np.full((len(qids), width), -1, dtype=np.int64)
    for i, q in enumerate(qids):
        docs = run.get(q, {})
        rows[i, : len(docs)] = [row[d] for d in docs]
        scores[i, : len(docs)] = list(docs.values())
    relevance = [{row[d]: g for d, g in qrels[q].items()} for q in qids]
    values = ndcg_values(scores, rows, relevance, k, doc_ids)
    return {q: values[i] for i, q in enumerate(qids)}


@dataclass
class PerQuery:
    """Two runs' per-query scores, best gain of B over A first (ties by query id)."""

    qids: list[str]
    a: np.ndarray  # (Q,)
    b: np.ndarray  # (Q,)

    @property
    def diff(self) -> np.ndarray:  # (Q,) b - a
        return self.b - self.a

    def counts(self, tol: float = 1e-9) -> dict[str, int]:
        """Queries where B beats A by more than `tol` (wins), loses by more (losses), or neither (ties)."""
        return {"wins": int((self.diff > tol).sum()), "losses": int((self.diff < -tol).sum()),
                "ties": int((np.abs(self.diff) <= tol).sum())}


    def p_value(self, samples: int = 20_000, seed: int = 0) -> float:
        """Two-sided paired randomization test of mean(b - a) (Smucker et al., CIKM 2007): the share of random
        sign flips of the per-query differences whose mean is at least as far from 0 as the observed one."""
        diff = self.diff
        signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(samples, len(diff)))
        null = np.abs(signs @ diff) / len(diff)  # (samples,)
        return float(((null >= abs(diff.mean()) - 1e-12).sum() + 1) / (samples + 1))


def per_query_differences(a: Mapping[str, float], b: Mapping[str, float]) -> PerQuery:
    """Pair two runs' per-query scores (e.g. from `ndcg_per_query` on the same qrels), sorted by b - a descending.

    Both must score the same queries: a query missing from one would silently read as a win or a loss."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"the runs score different queries ({len(only)} in one only, e.g. {only[:5]})")
    qids = sorted(a, key=lambda q: (-(b[q] - a[q]), q))
    return PerQuery(qids, np.array([a[q] for q in qids], dtype=float), np.array([b[q] for q in qids], dtype=float))


def split_qrels(dataset: str | Path, split: str, dev_fraction: float = 0.2, seed: int = 0
                ) -> dict[str, dict[str, int]]:
    """{qid: {docid: grade}} of a split of a local data set (a directory, or a name as `RetrievalDataModule` takes
    it). A dev split without a qrels file is carved from the training queries as the data module carves it
    (`split_dev` with the same fraction and seed), so that a fit's dev run files can be scored from the files."""
    from lit_dr.data.formats import dataset_files, read_qrels, resolve_dataset, split_dev

    root = resolve_dataset(str(dataset), download=False)
    files = dataset_files(root).qrels
    if split in files:
        return read_qrels(files[split])
    if split != "dev" or "train" not in files:
        raise FileNotFoundError(f"{root}: no qrels for split {split!r} (have {sorted(files)})")
    train = read_qrels(files["train"])
    _, dev = split_dev(list(train), dev_fraction, seed)
    return {q: train[q] for q in dev}


# -- refresh history ---------------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def refresh_columns(records: Iterable[Mapping]) -> dict[str, np.ndarray]:
    """`refreshes.jsonl` records (`lit_dr.training.NegativeRefresh`) as float columns, one row per generation in
    order. A resumed run that reloads a generation's table appends that generation again with `reused` and
    without the mining figures: records of one generation are merged, later fields over earlier ones, so the
    figures of the mining itself stay. A field no record of a generation has (the DANCE-only
    `time_mine_queries_s`) is NaN there; text fields (the digest) are dropped."""
    merged: dict[int, dict] = {}
    for r in records:
        merged.setdefault(int(r["generation"]), {}).update(r)
    rows = [merged[g] for g in sorted(merged)]
    names = list(dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, (int, float))))
    return {n: np.array([float(r.get(n, math.nan)) for r in rows]) for n in names}


def phase_names(columns: Mapping[str, np.ndarray]) -> list[str]:
    """The refresh's timed phases present in `columns` ("encode_corpus", ...), in the order they run."""
    return [n[len("time_"):-len("_s")] for n in columns if n.startswith("time_") and n != "time_total_s"]


# -- embedding space -----------------------------------------------------------------------------------------
@dataclass
class Top1:
    distance: np.ndarray  # (Q,) ||q/|q| - d/|d||| to the top-1 document, in [0, 2]
    row: np.ndarray  # (Q,) its row in `docs`
    relevant: np.ndarray  # (Q,) bool: judged relevant (all False without relevance)


def top1_distances(queries: Tensor, docs: Tensor, relevance: Sequence[Mapping[int, int]] | None = None,
                   block: int = 1024) -> Top1:
    """The distance from each query to the document the model ranks first (SamToNe's top-1 distance distributions).

    The top-1 is by inner product, the model's own score. Its distance is taken between the L2-normalised
    vectors (= sqrt(2 - 2 cos)), so that models with and without normalisation, or before and after training,
    share one scale.

    Args:
        queries: (Q, H).  docs: (N, H).  relevance: per query, {row of `docs`: grade}; grade > 0 is relevant.
        block: queries scored at a time ((block, N) scores in memory).
    """
    rows = []
    for start in range(0, len(queries), block):
        rows.append((queries[start : start + block].float() @ docs.float().T).argmax(dim=1))  # (b,)
    row = torch.cat(rows)  # (Q,)
    dist = (F.normalize(queries.float(), dim=-1) - F.normalize(docs.float()[row], dim=-1)).norm(dim=-1)  # (Q,)
    row_np = row.numpy()
    relevant = np.array([relevance is not None and relevance[i].get(int(r), 0) > 0 for i, r in enumerate(row_np)])
    return Top1(dist.numpy(), row_np, relevant.astype(bool))


def sample_corpus(relevance: Sequence[Mapping[int, int]], corpus_size: int, max_docs: int | None, seed: int = 0
                  ) -> tuple[np.ndarray, list[dict[int, int]]]:
    """Corpus rows to embed instead of the whole corpus: every document relevant to one of the queries, then
    others drawn at random (seeded) up to `max_docs` (all rows when None). Relevant documents are all kept even
    beyond `max_docs`: alignment and the t-SNE's query-document pairs need them.

    Returns:
        (D,) sorted corpus rows, and `relevance` re-keyed to positions in them (judged rows outside the sample
        are dropped).
    """
    if max_docs is None or max_docs >= corpus_size:
        rows = np.arange(corpus_size)
    else:
        needed = np.array(sorted({d for rel in relevance for d, g in rel.items() if g > 0}), dtype=np.int64)
        others = np.setdiff1d(np.arange(corpus_size), needed)
        extra = max(0, max_docs - len(needed))
        drawn = np.random.default_rng(seed).choice(others, size=min(extra, len(others)), replace=False)
        rows = np.sort(np.concatenate([needed, drawn]).astype(np.int64))
    position = {int(r): i for i, r in enumerate(rows)}
    return rows, [{position[d]: g for d, g in rel.items() if d in position} for rel in relevance]


def projection_input(queries: Tensor, docs: Tensor, relevance: Sequence[Mapping[int, int]]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack both towers' embeddings into one point set for t-SNE: queries first, then documents.

    Rows are L2-normalised (Euclidean distance then ranks as cosine does, the score SamToNe trains), so that
    t-SNE's neighbourhoods follow the model's notion of closeness, not the embeddings' norms.

    Args:
        queries: (Q, H).  docs: (D, H).  relevance: per query, {row of `docs`: grade}.
    Returns:
        points (Q + D, H) float32, is_query (Q + D,) bool, pairs (P, 2) point indices (query, relevant document).
    """
    points = F.normalize(torch.cat([queries.float(), docs.float()]), dim=-1).numpy()  # (Q + D, H)
    is_query = np.arange(len(points)) < len(queries)
    pairs = [(i, len(queries) + d) for i, rel in enumerate(relevance) for d, g in rel.items() if g > 0]
    return points, is_query, np.array(pairs, dtype=np.int64).reshape(-1, 2)
