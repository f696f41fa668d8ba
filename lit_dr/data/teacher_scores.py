"""Teacher scores for distillation (MarginMSE): a teacher's score of (query, document) pairs, read against the
token stores. Unknown ids are counted in one warning, as in qrels reading; a bad line is a `DataFormatError`.

Formats, decided on the first non-blank line and then required of every line:
- BEIR-style TSV `query-id<TAB>corpus-id<TAB>score` (the header is optional), or `qid pid score` split on any
  whitespace (the common distillation-file layout);
- a TREC run `qid Q0 docid rank score tag` (what `lit-dr search` writes): the score column is kept.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from lit_dr.data.formats import DataFormatError, _lines, check_id
from lit_dr.data.token_store import TokenStore

log = logging.getLogger(__name__)

_HEADER = ["query-id", "corpus-id", "score"]
_LAYOUTS = {3: ("query-id", "corpus-id", "score", (0, 1, 2)), 6: ("qid", "docid", "score", (0, 2, 4))}


def read_teacher_scores(path: str | Path,
                        line_of: dict[tuple[str, str], int] | None = None) -> dict[str, dict[str, float]]:
    """qid -> {docid -> score}. A repeated (qid, docid) pair or a score that is not a finite number is an error;
    `line_of`, when given, receives each pair's line."""
    scores: dict[str, dict[str, float]] = {}
    line_of = {} if line_of is None else line_of
    width: int | None = None  # columns per line, decided on the first data line
    for position, (number, line) in enumerate(_lines(path)):
        cols = line.split()
        if position == 0 and [c.lower() for c in cols] == _HEADER:
            continue
        if width is None:
            if len(cols) not in _LAYOUTS:
                raise DataFormatError(path, number, "columns", "expected 3 columns 'query-id corpus-id score' (TSV "
                                      "or whitespace) or 6 'qid Q0 docid rank score tag' (TREC run), got "
                                      f"{len(cols)} columns")
            width = len(cols)
        elif len(cols) != width:
            raise DataFormatError(path, number, "columns", f"expected {width} columns like the first line, got "
                                  f"{len(cols)}")
        q_name, d_name, s_name, (qi, di, si) = _LAYOUTS[width]
        qid, docid = check_id(path, number, q_name, cols[qi]), check_id(path, number, d_name, cols[di])
        try:
            score = float(cols[si])
        except ValueError:
            raise DataFormatError(path, number, s_name, f"expected a number, got {cols[si]!r}") from None
        if not math.isfinite(score):
            raise DataFormatError(path, number, s_name, f"expected a finite number, got {cols[si]!r}")
        if (qid, docid) in line_of:
            raise DataFormatError(path, number, d_name, f"query {qid!r} document {docid!r} is already scored on "
                                  f"line {line_of[qid, docid]}")
        line_of[qid, docid] = number
        scores.setdefault(qid, {})[docid] = score
    return scores


def load_teacher_scores(path: str | Path, corpus: TokenStore, queries: TokenStore) -> dict[int, dict[int, float]]:
    """{query row: {corpus row: score}}; pairs naming an unknown query or document are counted in one warning and
    left out."""
    line_of: dict[tuple[str, str], int] = {}
    given = read_teacher_scores(path, line_of)
    table: dict[int, dict[int, float]] = {}
    unknown: list[tuple[int, str]] = []  # (line, what) of each pair left out
    for qid, docs in given.items():
        qrow = queries.row_of.get(qid)
        for did, score in docs.items():
            drow = corpus.row_of.get(did)
            if qrow is None or drow is None:
                unknown.append((line_of[qid, did], f"query {qid!r}" if qrow is None else f"document {did!r}"))
            else:
                table.setdefault(qrow, {})[drow] = score
    if unknown:
        line, what = min(unknown)
        log.warning("%s: %d of %d teacher scores name unknown queries or documents (e.g. %s on line %d); ignored",
                    path, len(unknown), len(line_of), what, line)
    return table
