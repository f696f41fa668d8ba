"""Judgments and given negatives, read against the token stores: every id that names nothing is counted and
reported, and a split left with no query says why."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from lit_dr.data.formats import read_negatives, read_qrels
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


def load_qrels(path: Path, corpus: TokenStore, queries: TokenStore,
                relevance: dict[int, dict[int, int]]) -> tuple[np.ndarray, str]:
    """Rows of the queries of one qrels file with at least one relevant, known document (their judgments go
    into `relevance`), and why there are none when there are none."""
    line_of: dict[tuple[str, str], int] = {}
    qrels = read_qrels(path, line_of)
    unknown_queries: dict[str, int] = {}  # id -> first line naming it
    unknown_docs: dict[tuple[str, str], int] = {}
    judgments = relevant = 0
    rows = []
    for qid, docs in qrels.items():
        qrow = queries.row_of.get(qid)
        rel = {}
        for did, grade in docs.items():
            judgments += 1
            relevant += grade > 0
            if qrow is None:
                unknown_queries.setdefault(qid, line_of[qid, did])
            elif (drow := corpus.row_of.get(did)) is None:
                unknown_docs[qid, did] = line_of[qid, did]
            else:
                rel[drow] = grade
        if any(g > 0 for g in rel.values()):
            relevance[qrow] = rel
            rows.append(qrow)
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
    return np.array(sorted(rows), dtype=np.int64), why


def given_negatives(path: Path, corpus: TokenStore, queries: TokenStore, train: np.ndarray,
                    excluded: Sequence[Collection[int]]) -> NegativesTable:
    """The negatives file's candidates for each training query row (corpus rows; those in `excluded`, aligned with
    `train`, dropped: `RetrievalDataModule.excluded_docs`), with unknown ids counted in one warning and the rest of
    what was left out in one info line."""
    line_of: dict[str, int] = {}
    given = read_negatives(path, line_of)
    unknown_queries = [q for q in given if q not in queries.row_of]
    unknown_docs = [(q, d) for q, ds in given.items() for d in ds if d not in corpus.row_of]
    training = set(train.tolist())
    candidates, dropped, without = {}, 0, 0
    for q, exclude in zip(train.tolist(), excluded, strict=True):
        ids = given.get(str(queries.ids[q]), [])
        rows = [corpus.row_of[i] for i in ids if i in corpus.row_of]
        kept = [r for r in rows if r not in exclude]
        dropped += len(rows) - len(kept)
        without += not kept
        candidates[q] = np.array(kept, dtype=np.int64)
    if unknown_queries or unknown_docs:
        example = (f"query {unknown_queries[0]!r} on line {line_of[unknown_queries[0]]}" if unknown_queries else
                   f"document {unknown_docs[0][1]!r} on line {line_of[unknown_docs[0][0]]}")
        log.warning("%s: %d negatives name unknown documents and %d lines unknown queries (e.g. %s); ignored",
                    path, len(unknown_docs), len(unknown_queries), example)
    outside = sum(1 for q in given if q in queries.row_of and queries.row_of[q] not in training)
    if dropped or outside or without:
        log.info("%s: %d listed negatives are excluded for their query (exclude_from_negatives) and dropped; %d "
                 "listed queries are not training queries; %d training queries have no given negative (drawn at "
                 "random instead)", path, dropped, outside, without)
    return NegativesTable(candidates, source=str(path))
