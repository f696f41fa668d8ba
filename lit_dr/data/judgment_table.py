"""Judgments as CSR arrays: query row -> {corpus row: grade} without a dict per query.

MS MARCO's 532k training judgments as a dict of dicts hold about a million Python ints and half a million dicts
and arrays (some 150 MB, in every process); here they are three arrays (queries, offsets, documents and grades).
Reads keep the dict form's order: queries in the order they were added, each query's documents in the order of its
qrels file, so anything iterating them (sets built from them, the positive a batch draws) is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.int64)
    array.flags.writeable = False  # views are handed out: a caller may not edit the table through one
    return array


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def _spans(offsets: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Flat positions of the segments `slots` of a CSR array, concatenated in that order."""
    starts, lengths = offsets[slots], offsets[slots + 1] - offsets[slots]
    within = np.arange(lengths.sum()) - np.repeat(_offsets(lengths)[:-1], lengths)
    return np.repeat(starts, lengths) + within


class JudgmentTable(Mapping):
    """query row -> {corpus row: grade} (a new dict per read), iterated in insertion order.

    Arrays: `queries` (Q,) distinct query rows; `offsets` (Q + 1,); `docs` and `grades` (J,): query i's judgments
    are `docs[offsets[i]:offsets[i + 1]]`. Grade 0 and negative grades are kept (judged, not relevant).
    """

    def __init__(self, queries: np.ndarray, offsets: np.ndarray, docs: np.ndarray, grades: np.ndarray) -> None:
        self.queries, self.offsets = _frozen(queries), _frozen(offsets)
        self.docs, self.grades = _frozen(docs), _frozen(grades)
        if (len(self.offsets) != len(self.queries) + 1 or self.offsets[-1] != len(self.docs)
                or len(self.docs) != len(self.grades)):
            raise ValueError(f"a judgment table of {len(self.queries)} queries needs {len(self.queries) + 1} "
                             f"offsets ending at the {len(self.docs)} documents and grades")
        self._order = np.argsort(self.queries, kind="stable")  # (Q,) for lookups by query row
        self._sorted = self.queries[self._order]
        if len(self._sorted) > 1 and (self._sorted[1:] == self._sorted[:-1]).any():
            raise ValueError("a judgment table holds each query once")

    @classmethod
    def from_pairs(cls, owner: np.ndarray, queries: np.ndarray, docs: np.ndarray, grades: np.ndarray) -> JudgmentTable:
        """From judgments grouped by query: `owner` (J,) non-decreasing index into `queries` of each."""
        return cls(queries, _offsets(np.bincount(owner, minlength=len(queries))), docs, grades)

    @classmethod
    def from_dict(cls, judged: Mapping[int, Mapping[int, int]]) -> JudgmentTable:
        """The table of a dict of dicts (same order)."""
        lengths = [len(rel) for rel in judged.values()]
        docs = [d for rel in judged.values() for d in rel]
        grades = [g for rel in judged.values() for g in rel.values()]
        return cls(np.fromiter(judged, dtype=np.int64, count=len(judged)), _offsets(np.asarray(lengths, np.int64)),
                   np.asarray(docs, dtype=np.int64), np.asarray(grades, dtype=np.int64))

    def slot(self, query_row: object) -> int:
        """Index of `query_row` in `queries`, -1 where it is not judged here."""
        if not isinstance(query_row, int | np.integer):
            return -1
        at = int(np.searchsorted(self._sorted, query_row))
        return int(self._order[at]) if at < len(self._sorted) and self._sorted[at] == query_row else -1

    def docs_of(self, query_row: int) -> np.ndarray:
        """(n,) read-only: the judged corpus rows of `query_row` in file order (empty when it is not judged)."""
        i = self.slot(query_row)
        return self.docs[self.offsets[i]:self.offsets[i + 1]] if i >= 0 else self.docs[:0]

    def grades_of(self, query_row: int) -> np.ndarray:
        i = self.slot(query_row)
        return self.grades[self.offsets[i]:self.offsets[i + 1]] if i >= 0 else self.grades[:0]

    def __getitem__(self, query_row: int) -> dict[int, int]:
        i = self.slot(query_row)
        if i < 0:
            raise KeyError(query_row)
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return dict(zip(self.docs[lo:hi].tolist(), self.grades[lo:hi].tolist(), strict=True))

    def __contains__(self, query_row: object) -> bool:
        return self.slot(query_row) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.queries.tolist())

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, query_rows: Sequence[int] | np.ndarray) -> JudgmentTable:
        """The judgments of `query_rows` (each judged here), in that order."""
        slots = np.array([self.slot(int(q)) for q in np.asarray(query_rows).tolist()], dtype=np.int64)
        if (slots < 0).any():
            raise KeyError(int(np.asarray(query_rows)[np.flatnonzero(slots < 0)[0]]))
        return self._take(slots)

    def _take(self, slots: np.ndarray) -> JudgmentTable:
        at = _spans(self.offsets, slots)
        return JudgmentTable(self.queries[slots], _offsets(self.offsets[slots + 1] - self.offsets[slots]),
                             self.docs[at], self.grades[at])

    def positives(self) -> PositiveRows:
        """query row -> its relevant documents (grade > 0) in file order, for every query of the table."""
        owner = np.repeat(np.arange(len(self.queries)), np.diff(self.offsets))
        relevant = self.grades > 0
        return PositiveRows(self, _offsets(np.bincount(owner[relevant], minlength=len(self.queries))),
                            self.docs[relevant])

    def queries_of_docs(self, positives_only: bool) -> QueriesOfDoc:
        """corpus row -> the query rows judging it (relevant only, or every judgment), in the table's order."""
        owner = self.queries[np.repeat(np.arange(len(self.queries)), np.diff(self.offsets))]
        keep = self.grades > 0 if positives_only else np.ones(len(self.grades), dtype=bool)
        docs, owner = self.docs[keep], owner[keep]
        order = np.argsort(docs, kind="stable")  # stable: each document's queries stay in the table's order
        return QueriesOfDoc(docs[order], owner[order])


def merge(tables: Sequence[JudgmentTable]) -> JudgmentTable:
    """`dict.update` of the tables in turn: a query keeps the place of its first table and the judgments of its
    last."""
    if not tables:
        return JudgmentTable(np.empty(0), np.zeros(1), np.empty(0), np.empty(0))
    queries = np.concatenate([t.queries for t in tables])  # (S,) a query once per table judging it
    bases = _offsets(np.array([len(t.docs) for t in tables]))
    offsets = np.concatenate([t.offsets[:-1] + base for t, base in zip(tables, bases[:-1], strict=True)]
                             + [bases[-1:]])  # (S + 1,) into the tables' judgments concatenated
    docs, grades = np.concatenate([t.docs for t in tables]), np.concatenate([t.grades for t in tables])
    _, first = np.unique(queries, return_index=True)
    _, last_from_end = np.unique(queries[::-1], return_index=True)
    chosen = (len(queries) - 1 - last_from_end)[np.argsort(first, kind="stable")]  # (U,) in order of first place
    at = _spans(offsets, chosen)
    return JudgmentTable(queries[chosen], _offsets(offsets[chosen + 1] - offsets[chosen]), docs[at], grades[at])

class PositiveRows(Mapping):
    """query row -> (n,) int64 read-only array of its relevant corpus rows (`RetrievalDataModule.positives`)."""

    def __init__(self, table: JudgmentTable, offsets: np.ndarray, docs: np.ndarray) -> None:
        self.table, self.offsets, self.docs = table, _frozen(offsets), _frozen(docs)

    def __getitem__(self, query_row: int) -> np.ndarray:
        i = self.table.slot(query_row)
        if i < 0:
            raise KeyError(query_row)
        return self.docs[self.offsets[i]:self.offsets[i + 1]]

    def __contains__(self, query_row: object) -> bool:
        return self.table.slot(query_row) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)


class QueriesOfDoc:
    """corpus row -> set of query rows, from (J,) documents sorted and the query of each (a new set per call)."""

    def __init__(self, docs: np.ndarray, queries: np.ndarray) -> None:
        self.docs, self.queries = docs, queries

    def get(self, doc_row: int) -> set[int]:
        lo, hi = np.searchsorted(self.docs, doc_row, side="left"), np.searchsorted(self.docs, doc_row, side="right")
        return set(self.queries[lo:hi].tolist())
