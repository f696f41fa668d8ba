"""Readers for the on-disk formats of BEIR and MS MARCO, dataset layout detection and dataset download.

Every reader streams its file line by line and reports bad input as a `DataFormatError` naming the file,
the 1-based line and the field, so a broken line in a corpus of millions can be found and fixed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import unicodedata
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
_BEIR_QRELS_HEADER = ["query-id", "corpus-id", "score"]
# A dataset *name* (as opposed to a path) is safe to join under a root and to put into a URL.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class DataFormatError(ValueError):
    """Bad input: the message names the file, the line (1-based) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, problem: str) -> None:
        self.path, self.line, self.field, self.problem = path, line, field, problem
        where = f"{path}:{line}" if line is not None else f"{path}"
        what = f"field {field!r}: {problem}" if field is not None else problem
        super().__init__(f"{where}: {what}")

    def __reduce__(self):
        # The default pickling calls cls(*self.args) with the one formatted message; DataLoader workers
        # pickle exceptions to send them to the main process.
        return type(self), (self.path, self.line, self.field, self.problem)


@dataclass(frozen=True)
class TextRecord:
    id: str
    text: str
    line: int  # 1-based line number in its file, for error messages downstream
    path: Path | None = field(default=None, compare=False)  # the file that holds the line


# Characters an id may not hold: they cannot be written to a TSV or TREC file and read back as the same id
# (tabs, newlines, other whitespace), or they vanish or change silently on the way (NUL, which NumPy string
# arrays drop at the end of a string; byte-order marks and other invisible format characters; lone surrogates).
_UNSAFE_ID_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp", "Zs"}


def check_id(path: str | Path, line: int, field_name: str, value: str) -> str:
    """An id as the store keeps it: surrounding spaces stripped (as BEIR's loaders do), otherwise exactly as
    given. Raises a `DataFormatError` for an empty id or one holding whitespace, control or invisible
    characters, which no TSV, qrels or run file could name unambiguously."""
    value = value.strip(" ")
    if not value:
        raise DataFormatError(path, line, field_name, "empty")
    for position, ch in enumerate(value):
        if unicodedata.category(ch) in _UNSAFE_ID_CATEGORIES:
            what = unicodedata.name(ch, "a control character")
            hint = " (a byte-order mark belongs only at the start of a file)" if ch == "\ufeff" else ""
            problem = (f"id {value!r} holds U+{ord(ch):04X} ({what}) at position {position}{hint}; ids may not "
                       "contain whitespace, control or invisible characters, which TSV and TREC files cannot "
                       "carry")
            raise DataFormatError(path, line, field_name, problem)
    return value


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line ending) for each non-blank line, streamed.

    Decodes each line separately so that invalid UTF-8 is reported on its own line (a text-mode file
    decodes in chunks and cannot say which line failed). Only "\\n" ends a line: MS MARCO texts contain
    stray "\\r" characters that universal-newline mode would split on. A byte-order mark is dropped at the
    start of the file and is an error at the start of any other line (files concatenated with their BOMs).
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                problem = f"not valid UTF-8 ({e.reason} at byte {e.start})"
                raise DataFormatError(path, number, None, problem) from e
            if line.startswith("\ufeff"):
                problem = ("starts with a byte-order mark (U+FEFF), which belongs only at the start of a file "
                           "(were files with BOMs concatenated?)")
                raise DataFormatError(path, number, None, problem)
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                yield number, line


def _join(title: str, text: str) -> str:
    # As BEIR/sentence-transformers do: "title text", and just the text when there is no title.
    return f"{title} {text}".strip()


def _iter_beir(path: str | Path) -> Iterator[TextRecord]:
    for number, line in _lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, number, None, f"invalid JSON ({e.msg} at column {e.colno})") from e
        yield _beir_record(path, number, obj)


def _beir_record(path: str | Path, number: int, obj: object) -> TextRecord:
    if not isinstance(obj, dict):
        raise DataFormatError(path, number, None, f"expected a JSON object, got {type(obj).__name__}")
    if "_id" not in obj:
        raise DataFormatError(path, number, "_id", "missing")
    raw_id = obj["_id"]
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
        problem = f"expected a string or integer, got {type(raw_id).__name__}"
        raise DataFormatError(path, number, "_id", problem)
    doc_id = check_id(path, number, "_id", str(raw_id))
    if "text" not in obj:
        raise DataFormatError(path, number, "text", "missing")
    title = obj.get("title") or ""  # null: no title
    for name, value in (("text", obj["text"]), ("title", title)):
        if not isinstance(value, str):
            raise DataFormatError(path, number, name, f"expected a string, got {type(value).__name__}")
        _check_unicode(path, number, name, value)
    return TextRecord(doc_id, _join(title, obj["text"]), number, Path(path))


def _check_unicode(path: str | Path, line: int, name: str, value: str) -> None:
    # JSON may escape a lone surrogate ("\\ud800"), which no UTF-8 file or tokenizer can hold.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        problem = f"holds a lone surrogate U+{ord(value[e.start]):04X} at position {e.start} (invalid Unicode)"
        raise DataFormatError(path, line, name, problem) from None


def _iter_tsv(path: str | Path) -> Iterator[TextRecord]:
    for number, line in _lines(path):
        cols = line.split("\t")
        if len(cols) not in (2, 3):
            problem = f"expected 'id<TAB>text' or 'id<TAB>title<TAB>text', got {len(cols)} columns"
            raise DataFormatError(path, number, "columns", problem)
        doc_id = check_id(path, number, "id", cols[0])
        title, text = (cols[1], cols[2]) if len(cols) == 3 else ("", cols[1])
        yield TextRecord(doc_id, _join(title, text), number, Path(path))


def parquet_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(1-based row, row as a dict) of a parquet file, streamed a batch at a time (pyarrow, imported here)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"{path}: reading parquet files needs pyarrow: pip install 'lit-dr[formats]'") from e
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
    except (pa.ArrowException, OSError) as e:
        raise DataFormatError(path, None, None, f"not a readable parquet file ({e})") from e
    row = 0
    for batch in batches:
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def _iter_beir_parquet(path: str | Path) -> Iterator[TextRecord]:
    """BEIR's Hugging Face layout: the columns `_id`, `title` (optional) and `text` of corpus/queries parquet."""
    for number, obj in parquet_rows(path):
        yield _beir_record(path, number, obj)


def iter_texts(path: str | Path) -> Iterator[TextRecord]:
    """Stream (id, text) records of a corpus or queries file: BEIR `.jsonl` or `.parquet` (its Hugging Face
    layout; the number in an error is the 1-based row) or MS MARCO `.tsv`.

    A title is prepended to the text with a space. Blank lines are skipped; an empty text is yielded
    (the caller decides whether to warn).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return _iter_beir(path)
    if suffix == ".tsv":
        return _iter_tsv(path)
    if suffix == ".parquet":
        return _iter_beir_parquet(path)
    problem = f"unknown text format {suffix!r}: expected .jsonl or .parquet (BEIR) or .tsv (MS MARCO)"
    raise DataFormatError(path, None, None, problem)


def read_qrels(path: str | Path, line_of: dict[tuple[str, str], int] | None = None) -> dict[str, dict[str, int]]:
    """qid -> {docid -> grade} from a BEIR qrels TSV (with its header) or a TREC qrels file (no header).

    BEIR: "query-id<TAB>corpus-id<TAB>score". TREC: "qid iter docid rel", split on any whitespace.
    Grades are kept as given, zero and negative ones included. `line_of`, when given, receives the line of
    each (qid, docid) judgment, for messages about it later.
    """
    qrels: dict[str, dict[str, int]] = {}
    first_seen: dict[tuple[str, str], int] = {} if line_of is None else line_of
    beir: bool | None = None  # decided on the first non-blank line
    for number, line in _lines(path):
        if beir is None:
            beir = [c.strip().lower() for c in line.split("\t")] == _BEIR_QRELS_HEADER
            if beir:
                continue
        if beir:
            cols, names = line.split("\t"), ("query-id", "corpus-id", "score")
            expected = "3 tab-separated columns 'query-id corpus-id score' (BEIR)"
        else:
            cols, names = line.split(), ("qid", "docid", "rel")
            expected = ("4 columns 'qid iter docid rel' (TREC), or a BEIR file starting with the header "
                        "'query-id<TAB>corpus-id<TAB>score'")
        if len(cols) != (3 if beir else 4):
            raise DataFormatError(path, number, "columns", f"expected {expected}, got {len(cols)} columns")
        qid, docid, score = cols if beir else (cols[0], cols[2], cols[3])
        qid, docid = check_id(path, number, names[0], qid), check_id(path, number, names[1], docid)
        grade = _grade(score.strip())
        if grade is None:
            problem = f"expected an integer grade, got {score!r}"
            raise DataFormatError(path, number, names[2], problem)
        docs = qrels.setdefault(qid, {})
        if docid in docs and docs[docid] != grade:
            problem = (f"query {qid!r} document {docid!r} has grade {grade} here "
                       f"but {docs[docid]} on line {first_seen[qid, docid]}")
            raise DataFormatError(path, number, names[2], problem)
        first_seen.setdefault((qid, docid), number)
        docs[docid] = grade
    return qrels


def _grade(text: str) -> int | None:
    """An integer grade; "1.0" (some exports write floats) is 1, "0.5" is not a grade."""
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return None
        return int(value) if value.is_integer() else None


def read_negatives(path: str | Path, line_of: dict[str, int] | None = None) -> dict[str, list[str]]:
    """qid -> given negative docids from lines "qid<TAB>docid,docid,..." (order kept, repeats dropped).
    `line_of`, when given, receives each qid's line."""
    negatives: dict[str, list[str]] = {}
    line_of = {} if line_of is None else line_of
    for number, line in _lines(path):
        cols = line.split("\t")
        if len(cols) != 2:
            problem = f"expected 'qid<TAB>docid,docid,...', got {len(cols)} columns"
            raise DataFormatError(path, number, "columns", problem)
        qid, listed = check_id(path, number, "qid", cols[0]), cols[1].strip(" ")
        if qid in line_of:
            raise DataFormatError(path, number, "qid", f"query {qid!r} already listed on line {line_of[qid]}")
        docids = [check_id(path, number, "docids", d) for d in listed.split(",")] if listed else []
        line_of[qid] = number
        negatives[qid] = list(dict.fromkeys(docids))  # dict keeps first-seen order
    return negatives


@dataclass(frozen=True)
class DatasetFiles:
    root: Path
    format: Literal["beir", "beir-parquet", "msmarco"]
    corpus: Path  # the (first) corpus file
    queries: tuple[Path, ...]  # BEIR: (queries.jsonl,); MS MARCO: every queries.*.tsv, sorted; parquet: the shards
    qrels: dict[str, Path]  # split name -> qrels file
    negatives: Path | None  # a file for `read_negatives`, when the dataset ships one
    corpus_files: tuple[Path, ...] = ()  # every corpus file, read in order as one (parquet shards); () = (corpus,)

    @property
    def corpus_sources(self) -> list[Path]:
        return list(self.corpus_files or (self.corpus,))


NEGATIVES_FILE = {"beir": "negatives.tsv", "beir-parquet": "negatives.tsv", "msmarco": "negatives.train.tsv"}


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a data file ("is a directory", "is a dangling symlink", ...), or None."""
    if path.is_symlink() and not path.exists():
        return f"{path.name} is a dangling symlink (to {os.readlink(path)})"
    if not path.exists():
        packed = [p.name for p in path.parent.glob(f"{path.name}.*") if p.suffix in (".gz", ".bz2", ".xz", ".zip")]
        return f"{path.name} is missing" + (f" (found {packed[0]}: decompress it)" if packed else "")
    if path.is_dir():
        return f"{path.name} is a directory, not a file"
    if not path.is_file():
        return f"{path.name} is not a regular file"
    return None


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _incomplete(root: Path, layout: str, expected: str, problems: list[str]) -> FileNotFoundError:
    held = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir()) if root.is_dir() else []
    shown = ", ".join(held[:30]) + (f", ... ({len(held)} entries)" if len(held) > 30 else "")
    return FileNotFoundError(f"{root}: not a complete {layout} dataset; expected {expected}; "
                             f"{'; '.join(problems)}; the directory holds: {shown or 'nothing'}")


def _files(paths: list[Path], what: str, problems: list[str]) -> list[Path]:
    """The regular files among globbed `paths`; a directory or dangling link among them is a problem."""
    found = {p: file_problem(p) for p in paths}
    problems += [problem for problem in found.values() if problem]
    if not paths:
        problems.append(f"no {what} file")
    return [p for p, problem in found.items() if problem is None]


def dataset_files(root: str | Path) -> DatasetFiles:
    """Find the files of a BEIR or MS MARCO dataset directory.

    BEIR: corpus.jsonl, queries.jsonl, qrels/<split>.tsv, optional negatives.tsv.
    BEIR as Hugging Face mirrors it: corpus.parquet (or corpus/*.parquet), queries.parquet (or queries/*.parquet),
    qrels/<split>.tsv, optional negatives.tsv.
    MS MARCO: collection.tsv, queries.<split>.tsv, qrels.<split>.tsv, optional negatives.train.tsv.
    A listed name that is a directory or a dangling symlink is reported as such, not as missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset directory does not exist")
    problems: list[str] = []
    if _present(root / "corpus.parquet") or (root / "corpus").is_dir():
        return _parquet_files(root)
    if any(_present(root / n) for n in ("corpus.jsonl", "queries.jsonl", "qrels")):
        layout, expected = "BEIR", "corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
        problems += [p for p in (file_problem(root / "corpus.jsonl"), file_problem(root / "queries.jsonl")) if p]
        qrels = _beir_qrels(root, problems)
        fmt, corpus, queries = "beir", root / "corpus.jsonl", (root / "queries.jsonl",)
    else:
        layout = "BEIR or MS MARCO"
        expected = ("corpus.jsonl, queries.jsonl and qrels/<split>.tsv (BEIR) or collection.tsv, "
                    "queries.<split>.tsv and qrels.<split>.tsv (MS MARCO)")
        problems += [p for p in (file_problem(root / "collection.tsv"),) if p]
        queries = tuple(_files(sorted(root.glob("queries.*.tsv")), "queries.<split>.tsv", problems))
        qrels = {p.name[len("qrels."):-len(".tsv")]: p
                 for p in _files(sorted(root.glob("qrels.*.tsv")), "qrels.<split>.tsv", problems)}
        fmt, corpus = "msmarco", root / "collection.tsv"
    if problems:
        raise _incomplete(root, layout, expected, problems)
    negatives = root / NEGATIVES_FILE[fmt]
    return DatasetFiles(root, fmt, corpus, queries, qrels, negatives if _present(negatives) else None)


def _beir_qrels(root: Path, problems: list[str]) -> dict[str, Path]:
    qrels_dir = root / "qrels"
    listed = sorted(p for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if _present(qrels_dir) and not qrels_dir.is_dir():
        problems.append(file_problem(qrels_dir) or "qrels is not a directory")
    return {p.stem: p for p in _files(listed, "qrels/<split>.tsv", problems)}


def _parquet_files(root: Path) -> DatasetFiles:
    """BEIR in its Hugging Face layout: corpus.parquet or corpus/*.parquet (shards, read in name order), the same
    for queries, and qrels/<split>.tsv."""
    problems: list[str] = []
    parts = {}
    for kind in ("corpus", "queries"):
        single = root / f"{kind}.parquet"
        listed = [single] if _present(single) else sorted((root / kind).glob("*.parquet"))
        parts[kind] = _files(listed, f"{kind}.parquet or {kind}/*.parquet", problems)
    qrels = _beir_qrels(root, problems)
    if problems:
        raise _incomplete(root, "BEIR (Hugging Face parquet)", "corpus.parquet or corpus/*.parquet, queries.parquet "
                          "or queries/*.parquet and qrels/<split>.tsv", problems)
    negatives = root / NEGATIVES_FILE["beir-parquet"]
    return DatasetFiles(root, "beir-parquet", parts["corpus"][0], tuple(parts["queries"]), qrels,
                        negatives if _present(negatives) else None, tuple(parts["corpus"]))


def _download(url: str, datasets: Path, name: str) -> Path:
    """Download and unzip into `datasets/name` via a temp file and dir in the same folder, renamed in last."""
    datasets.mkdir(parents=True, exist_ok=True)
    target = datasets / name
    fd, archive = tempfile.mkstemp(dir=datasets, prefix=f".{name}-", suffix=".zip.part")
    unpacked = tempfile.mkdtemp(dir=datasets, prefix=f".{name}-")
    try:
        log.info("downloading %s to %s", url, target)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        with zipfile.ZipFile(archive) as z:
            z.extractall(unpacked)  # drops absolute paths and ".." components
        tops = [p for p in Path(unpacked).iterdir() if p.is_dir() and p.name != "__MACOSX"]
        top = Path(unpacked) / name
        if not top.is_dir():
            if len(tops) != 1:
                found = sorted(p.name for p in tops)
                raise RuntimeError(f"{url}: expected the zip to hold one folder {name}/, found {found}")
            top = tops[0]
        try:
            os.replace(top, target)
        except OSError:
            if not target.is_dir():  # else another process finished the same download first
                raise
        return target
    finally:
        Path(archive).unlink(missing_ok=True)
        shutil.rmtree(unpacked, ignore_errors=True)


def resolve_dataset(name_or_path: str, data_root: str | None = None, cache_dir: str | Path | None = None,
                    download: bool = True, url_template: str = BEIR_URL) -> Path:
    """The directory of a dataset given by path or by BEIR name, downloading it into the cache if needed.

    Looks in order at: `name_or_path` as a directory; `<data_root or $LIT_DR_DATA>/<name>`;
    `<cache_dir or $LIT_DR_CACHE or ~/.cache/lit_dr>/datasets/<name>`; then downloads
    `url_template.format(name=name)` there when `download` is true.
    """
    as_path = Path(name_or_path).expanduser()
    if as_path.is_dir():
        return as_path
    tried = [f"{as_path} (as a path)"]
    name = name_or_path
    if _NAME.fullmatch(name) is None:
        raise FileNotFoundError(f"dataset directory {as_path} does not exist (and is not a dataset name)")
    root = data_root or os.environ.get("LIT_DR_DATA")
    if root:
        candidate = Path(root).expanduser() / name
        if candidate.is_dir():
            return candidate
        tried.append(f"{candidate} ({'data_root' if data_root else 'LIT_DR_DATA'})")
    else:
        tried.append("<data_root>/<name> (neither data_root nor LIT_DR_DATA is set)")
    default_cache = Path.home() / ".cache" / "lit_dr"
    cache = Path(cache_dir or os.environ.get("LIT_DR_CACHE") or default_cache).expanduser()
    candidate = cache / "datasets" / name
    if candidate.is_dir():
        return candidate
    tried.append(f"{candidate} (cache)")
    looked = "; ".join(tried)
    if download:
        url = url_template.format(name=name)
        try:
            return _download(url, cache / "datasets", name)
        except (OSError, zipfile.BadZipFile) as e:  # urllib's URLError is an OSError
            raise RuntimeError(f"dataset {name!r} not found (looked in: {looked}) and could not download "
                               f"{url}: {e}") from e
    raise FileNotFoundError(f"dataset {name!r} not found; looked in: {looked}. Pass an existing directory, "
                            f"set LIT_DR_DATA to a folder holding {name}/, or enable download.")


def split_dev(qids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Carve a dev split out of training query ids; returns (train_ids, dev_ids), each sorted.

    The ids are sorted before a PCG64 permutation, so the same ids + fraction + seed give the same split
    on every machine, whatever the input order (for NumPy >= 1.17, whose `Generator` stream this relies on).
    `round(fraction * n)` ids go to dev.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"dev fraction must be strictly between 0 and 1, got {fraction}")
    ids = sorted(qids)
    if len(set(ids)) != len(ids):
        raise ValueError("split_dev: query ids contain duplicates")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_dev = round(fraction * len(ids))
    dev = sorted(ids[i] for i in order[:n_dev])
    train = sorted(ids[i] for i in order[n_dev:])
    return train, dev
