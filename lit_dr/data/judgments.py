"""Judgments and given negatives, read against the token stores: every id that names nothing is counted and
reported, and a split left with no query says why."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from lit_dr.data.formats import read_negatives, read_qrels
from lit_dr.data.judgment_table import JudgmentTable
from lit_dr.data.sampling import NegativesTable
from lit_dr.data.token_store import TokenStore

log = logging.getLogger(__name__)


def warn_overlap(split_rows: dict[str, np.ndarray], qrels: dict[str, Path]) -> None:
    """A query judged in the training split and in an evaluation split leaks into its evaluation: say so."""
    train = set(split_rows.get("train", np.empty(0)).tolist())
    for split, rows in split_rows.items():
        shared = len(train & set(rows.tolist())) if split != "train" else 0
        if shared:
            log.warning("%d of the %d %s queries are also training queries (%s and %s); each split is evaluated "
                        "with its own judgments", shared, len(rows), split, qrels.get(split, "carved dev split"),
                        qrels.get("train"))


def load_qrels(path: Path, corpus: TokenStore, queries: TokenStore) -> tuple[JudgmentTable, np.ndarray, str]:
    """The judgments of one qrels file's queries with at least one relevant, known document (queries in file
    order, each one's known documents in file order, grade 0 kept), those queries' rows sorted, and why there are
    none when there are none."""
    line_of: dict[tuple[str, str], int] = {}
    qrels = read_qrels(path, line_of)
    qids = list(qrels)
    qrows = queries.id_index.find(qids)  # (Q,) -1: unknown
    lengths = np.fromiter(map(len, qrels.values()), dtype=np.int64, count=len(qids))
    owner = np.repeat(np.arange(len(qids)), lengths)  # (J,) index into qids of each judgment
    dids = [did for docs in qrels.values() for did in docs]  # (J,) in file order per query
    drows = corpus.id_index.find(dids)  # (J,) -1: unknown
    grades = np.fromiter((g for docs in qrels.values() for g in docs.values()), dtype=np.int64, count=len(owner))
    judgments, relevant = len(owner), int((grades > 0).sum())
    unknown_queries = {qids[i]: line_of[qids[i], next(iter(qrels[qids[i]]))]  # id -> first line naming it
                       for i in np.flatnonzero(qrows < 0).tolist()}
    known = (qrows[owner] >= 0) & (drows >= 0)
    unknown_docs = {(qids[owner[j]], dids[j]): line_of[qids[owner[j]], dids[j]]
                    for j in np.flatnonzero((qrows[owner] >= 0) & (drows < 0)).tolist()}
    kept_query = np.bincount(owner[known & (grades > 0)], minlength=len(qids)) > 0  # (Q,)
    kept = known & kept_query[owner]
    _, owner_kept = np.unique(owner[kept], return_inverse=True)
    table = JudgmentTable.from_pairs(owner_kept.reshape(-1), qrows[kept_query], drows[kept], grades[kept])
    if unknown_queries or unknown_docs:
        first = sorted([(line, f"query {q!r}") for q, line in unknown_queries.items()]
                       + [(line, f"document {d!r}") for (_, d), line in unknown_docs.items()])[0]
        log.warning("%s: %d judgments name unknown documents and %d unknown queries (e.g. %s on line %d); ignored",
                    path, len(unknown_docs), len(unknown_queries), first[1], first[0])
    if not judgments:
        why = "it holds no judgments"
    elif not relevant:
        why = f"none of its {judgments} judgments is relevant (grade > 0)"
    else:
        why = (f"its {relevant} relevant judgments name no known query with a known document "
               f"({len(unknown_queries)} unknown queries, {len(unknown_docs)} judgments of unknown documents; "
               f"corpus {', '.join(p.name for p in corpus.sources)}, queries "
               f"{', '.join(p.name for p in queries.sources)})")
    return table, np.sort(table.queries), why


def given_negatives(path: Path, corpus: TokenStore, queries: TokenStore, train: np.ndarray,
                    excluded: Sequence[Collection[int]]) -> NegativesTable:
    """The negatives file's candidates for each training query row (corpus rows; those in `excluded`, aligned with
    `train`, dropped: `RetrievalDataModule.excluded_docs`), with unknown ids counted in one warning and the rest of
    what was left out in one info line."""
    line_of: dict[str, int] = {}
    given = read_negatives(path, line_of)
    qids = list(given)
    qrows = queries.id_index.find(qids)  # (G,) -1: unknown
    listed = [d for docs in given.values() for d in docs]
    drows = corpus.id_index.find(listed)  # (L,) -1: unknown
    offsets = np.concatenate([[0], np.cumsum(np.fromiter(map(len, given.values()), dtype=np.int64, count=len(qids)))])
    owner = np.repeat(np.arange(len(qids)), np.diff(offsets))  # (L,) index into qids of each listed negative
    unknown_queries = [qids[i] for i in np.flatnonzero(qrows < 0).tolist()]
    unknown_docs = [(qids[owner[j]], listed[j]) for j in np.flatnonzero(drows < 0).tolist()]
    slot_of = {r: i for i, r in enumerate(qrows.tolist()) if r >= 0}  # query row -> index into qids
    candidates, dropped, without = {}, 0, 0
    for q, exclude in zip(train.tolist(), excluded, strict=True):
        i = slot_of.get(q)
        rows = [] if i is None else [r for r in drows[offsets[i]:offsets[i + 1]].tolist() if r >= 0]
        kept = [r for r in rows if r not in exclude]
        dropped += len(rows) - len(kept)
        without += not kept
        candidates[q] = np.array(kept, dtype=np.int64)
    if unknown_queries or unknown_docs:
        example = (f"query {unknown_queries[0]!r} on line {line_of[unknown_queries[0]]}" if unknown_queries else
                   f"document {unknown_docs[0][1]!r} on line {line_of[unknown_docs[0][0]]}")
        log.warning("%s: %d negatives name unknown documents and %d lines unknown queries (e.g. %s); ignored",
                    path, len(unknown_docs), len(unknown_queries), example)
    outside = int(((qrows >= 0) & ~np.isin(qrows, train)).sum())
    if dropped or outside or without:
        log.info("%s: %d listed negatives are excluded for their query (exclude_from_negatives) and dropped; %d "
                 "listed queries are not training queries; %d training queries have no given negative (drawn at "
                 "random instead)", path, dropped, outside, without)
    return NegativesTable(candidates, source=str(path))
