"""sentence-transformers-style training tuples (query, positive, negatives, optional teacher scores) as a BEIR
data set: one pass over the rows writes corpus.jsonl, queries.jsonl, qrels/train.tsv, negatives.tsv (and
teacher_scores.tsv) into the cache, and everything downstream (token stores, judgments, `negatives: file`,
`negatives: teacher`, the dev split) reads that directory as it reads any BEIR set.

Sources: a `.parquet` file, a `.jsonl` file (one JSON object a line), or a folder written by
`datasets.Dataset.save_to_disk` (a `DatasetDict` folder: its `train` split). Columns:
- `query` (or `anchor`, sentence-transformers' name for it): the query text;
- `positive`: a relevant document's text (grade 1);
- negatives: `negative`, `negative_1` ... `negative_N` (text columns, null where a row has fewer), and/or
  `negatives` (a list of texts);
- teacher scores (optional): `score` or `scores`, a list aligned with [positive, negatives in column order], or
  one `<column>_score` number per text column (`positive_score`, `negative_1_score`, ...).

Each distinct text is stored once, under an id derived from its text (`q`/`d` + 16 hex digits of its sha256), so
the ids are the same on every run and machine and for every file that holds the text. A row number in an error
is 1-based (a JSONL file's line, a table's row); errors name the file, the row and the column.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lit_dr.data.formats import DataFormatError, _check_unicode, _lines, parquet_rows

FORMAT_VERSION = 1
QUERY_COLUMNS = ("query", "anchor")
_NEGATIVE = re.compile(r"negative(_\d+)?")
_MARGIN_COLUMNS = ("label", "margin")


def is_tuples(path: str | Path) -> bool:
    """Whether `path` is a tuples source: a .parquet or .jsonl file, or a `save_to_disk` folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.suffix.lower() in (".parquet", ".jsonl")
    return path.is_dir() and any((path / n).is_file() for n in ("state.json", "dataset_dict.json"))


def text_id(kind: str, text: str) -> str:
    """The stable id of a text: 'q' (queries) or 'd' (documents) and 16 hex digits of its sha256."""
    return kind + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _arrow():
    try:
        import pyarrow
    except ImportError as e:
        raise ImportError("reading parquet files and datasets folders needs pyarrow: pip install 'lit-dr[formats]'"
                          ) from e
    return pyarrow


def _arrow_files(folder: Path) -> tuple[Path, list[Path]]:
    """The folder holding a `save_to_disk` data set (a DatasetDict's `train` split) and its .arrow files, in order."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
        if "train" not in splits:
            raise DataFormatError(folder / "dataset_dict.json", None, "splits",
                                  f"no 'train' split (has {splits}); save the training tuples as the 'train' split")
        folder = folder / "train"
    state = folder / "state.json"
    if not state.is_file():
        raise DataFormatError(folder, None, None, "not a datasets folder (no state.json): expected a folder written "
                              "by Dataset.save_to_disk")
    files = [folder / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    return folder, files


def source_files(path: str | Path) -> list[Path]:
    """The files whose bytes make up a tuples source (what its cache key hashes)."""
    path = Path(path).expanduser()
    return [path] if path.is_file() else _arrow_files(path)[1]


def iter_rows(path: str | Path) -> Iterator[tuple[Path, int, dict]]:
    """(file, 1-based row, row as a dict) of a tuples source, streamed; a file or batch at a time."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".jsonl":
        for number, line in _lines(path):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, number, None, f"invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(obj, dict):
                raise DataFormatError(path, number, None, f"expected a JSON object, got {type(obj).__name__}")
            yield path, number, obj
        return
    if path.is_file():
        for row, obj in parquet_rows(path):
            yield path, row, obj
        return
    pa = _arrow()
    shown, files = _arrow_files(path)
    row = 0
    for file in files:
        with pa.memory_map(str(file)) as source:
            for batch in pa.ipc.open_stream(source):
                for obj in batch.to_pylist():
                    row += 1  # counted over the whole data set, as datasets' indices are
                    yield shown, row, obj


def _text(path: Path, row: int, column: str, value: object) -> str:
    if value is None:
        raise DataFormatError(path, row, column, "missing (null)")
    if not isinstance(value, str):
        raise DataFormatError(path, row, column, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataFormatError(path, row, column, "empty text")
    _check_unicode(path, row, column, value)
    return value


def _score(path: Path, row: int, column: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataFormatError(path, row, column, f"expected a finite number, got {value!r}")
    return float(value)


class _Columns:
    """Which columns of the first row hold the query, the positive, the negatives and the scores."""

    def __init__(self, path: Path, row: dict) -> None:
        names = list(row)
        query = [c for c in QUERY_COLUMNS if c in row]
        if not query or "positive" not in row:
            missing = "'query' (or 'anchor')" if not query else "'positive'"
            hint = (" (a BEIR corpus or queries file? pass the data set's directory)" if "_id" in row else "")
            raise DataFormatError(path, 1, query[0] if query else "query",
                                  f"missing column {missing}; the file has columns {names}{hint}")
        self.query = query[0]
        numbered = sorted((c for c in names if _NEGATIVE.fullmatch(c)), key=lambda c: int(c[9:] or 0))
        self.negatives = numbered
        self.negative_list = "negatives" if "negatives" in row else None
        self.score_list = next((c for c in ("scores", "score") if c in row and isinstance(row[c], list)), None)
        self.per_column = {c: f"{c}_score" for c in ["positive", *numbered] if f"{c}_score" in row}
        scalar = [c for c in (*_MARGIN_COLUMNS, "score") if c in row and not isinstance(row[c], list)]
        if scalar and not self.per_column:
            raise DataFormatError(path, 1, scalar[0], "a single number per row (a margin, as sentence-transformers' "
                                  "MarginMSE data has) cannot give each document its own teacher score; give "
                                  "'score' as a list aligned with [positive, negatives...] or '<column>_score' "
                                  "columns, or drop the column")


def tuples_to_beir(source: str | Path, target: Path) -> dict:
    """Write the BEIR layout of `source`'s tuples into `target` (a new directory); returns the counts."""
    source = Path(source).expanduser()
    target.mkdir(parents=True)
    (target / "qrels").mkdir()
    docs: set[str] = set()
    queries: set[str] = set()
    positives: dict[str, dict[str, None]] = {}  # qid -> docids (ordered set)
    negatives: dict[str, dict[str, None]] = {}
    scores: dict[tuple[str, str], tuple[float, str]] = {}  # (qid, did) -> (score, where it was given)
    columns: _Columns | None = None
    rows = 0
    with open(target / "corpus.jsonl", "w", encoding="utf-8") as corpus, \
            open(target / "queries.jsonl", "w", encoding="utf-8") as query_file:

        def doc(text: str) -> str:
            did = text_id("d", text)
            if did not in docs:
                docs.add(did)
                corpus.write(json.dumps({"_id": did, "title": "", "text": text}, ensure_ascii=False) + "\n")
            return did

        for path, row, obj in iter_rows(source):
            columns = columns or _Columns(path, obj)
            rows += 1
            qtext = _text(path, row, columns.query, obj.get(columns.query))
            qid = text_id("q", qtext)
            if qid not in queries:
                queries.add(qid)
                query_file.write(json.dumps({"_id": qid, "text": qtext}, ensure_ascii=False) + "\n")
            texts = [("positive", _text(path, row, "positive", obj.get("positive")))]
            texts += [(c, obj[c]) for c in columns.negatives if obj.get(c) is not None]
            if columns.negative_list:
                listed = obj.get(columns.negative_list) or []
                if not isinstance(listed, list):
                    raise DataFormatError(path, row, columns.negative_list,
                                          f"expected a list of texts, got {type(listed).__name__}")
                texts += [(f"{columns.negative_list}[{i}]", t) for i, t in enumerate(listed)]
            dids = [doc(_text(path, row, c, t)) for c, t in texts]
            positives.setdefault(qid, {})[dids[0]] = None
            for did in dids[1:]:
                negatives.setdefault(qid, {})[did] = None
            for (column, _), did, score in zip(texts, dids, _row_scores(path, row, obj, columns, texts), strict=True):
                if score is None:
                    continue
                seen = scores.setdefault((qid, did), (score, f"row {row} column {column!r}"))
                if seen[0] != score:
                    raise DataFormatError(path, row, column, f"teacher score {score} for a query and document "
                                          f"scored {seen[0]} at {seen[1]}")
    if columns is None:
        raise DataFormatError(source, None, None, "no rows")
    with open(target / "qrels" / "train.tsv", "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"{q}\t{d}\t1\n" for q, ds in positives.items() for d in ds)
    # A document given as a positive of the query on another row is not its negative.
    given = {q: [d for d in ds if d not in positives[q]] for q, ds in negatives.items()}
    if any(given.values()):
        with open(target / "negatives.tsv", "w", encoding="utf-8") as f:
            f.writelines(f"{q}\t{','.join(ds)}\n" for q, ds in given.items() if ds)
    if scores:
        with open(target / "teacher_scores.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{s!r}\n" for (q, d), (s, _) in scores.items())
    counts = {"source": str(source), "rows": rows, "queries": len(queries), "documents": len(docs),
              "judgments": sum(map(len, positives.values())), "negatives": sum(map(len, given.values())),
              "teacher_scores": len(scores)}
    (target / "tuples.json").write_text(json.dumps(counts, indent=1) + "\n")
    return counts


def _row_scores(path: Path, row: int, obj: dict, columns: _Columns, texts: list) -> list[float | None]:
    """Each text's teacher score on this row (None: not scored)."""
    if columns.score_list:
        listed = obj.get(columns.score_list)
        if not isinstance(listed, list) or len(listed) != len(texts):
            problem = (f"expected a list of {len(texts)} scores (positive and {len(texts) - 1} negatives), got "
                       f"{listed!r}")
            raise DataFormatError(path, row, columns.score_list, problem)
        return [_score(path, row, columns.score_list, s) for s in listed]
    return [None if columns.per_column.get(c) is None or obj.get(columns.per_column[c]) is None
            else _score(path, row, columns.per_column[c], obj[columns.per_column[c]]) for c, _ in texts]


def describe(root: Path) -> str:
    """The counts `tuples_to_beir` wrote into `root`, in words."""
    c = json.loads((Path(root) / "tuples.json").read_text())
    return (f"{c['rows']} rows: {c['queries']} queries, {c['documents']} documents, {c['judgments']} judgments, "
            f"{c['negatives']} given negatives, {c['teacher_scores']} teacher scores")


def materialize(source: str | Path, cache_dir: Path) -> Path:
    """The BEIR directory of a tuples source under `cache_dir/tuples/`, written once per content of its files
    (a file lock makes concurrent callers wait; written in a temporary directory renamed into place)."""
    from filelock import FileLock

    from lit_dr.data.token_store import file_fingerprint

    source = Path(source).expanduser()
    key = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    for p in source_files(source):
        key.update(f"|{p.name}|{file_fingerprint(p)}".encode())
    root = Path(cache_dir) / "tuples"
    target = root / f"{source.stem}-{key.hexdigest()[:24]}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{target.name}.lock")):
        if not target.exists():
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
            try:
                tuples_to_beir(source, tmp / "d")
                os.replace(tmp / "d", target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return target
