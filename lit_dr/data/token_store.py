"""Tokenized texts cached on disk and memory-mapped, so a corpus of millions never lives in Python objects.

A store is the one record of a source's rows: everything downstream (batches, BM25, id -> row maps, run files)
reads it, never the raw files again, so duplicates skipped or texts chosen while building it cannot disagree
with anything later. It is a directory with `tokens.bin` (N, max_length) raw int32 padded token ids (shape in
`meta.json`), `lengths.npy` (N,) int32, `ids.npy` (N,) the string ids (with their sorted index beside them for
id -> row lookups: `lit_dr.data.id_index`; a store built before it gets it on first use), and the texts as UTF-8 in `texts.bin`
with `text_offsets.npy` (N + 1,) int64; rows keep the order of the source files. It is built once per (source
files' contents, tokenizer, max length), under a file lock (a second process waits, then reuses it), in a
temporary directory that is renamed into place, so a killed build never leaves a half store behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lit_dr.data.batches import TokenBatch
from lit_dr.data.formats import DataFormatError, TextRecord, iter_texts
from lit_dr.data.id_index import IdIndex, RowMap
from lit_dr.data.progress import progress

log = logging.getLogger(__name__)
FORMAT_VERSION = 3  # 2: texts stored beside the tokens; 3: no per-row file and line arrays (nothing read them)
_CHUNK = 4096
_fingerprints: dict[tuple, str] = {}


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes whenever the tokenizer would produce different ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def file_fingerprint(path: Path) -> str:
    """sha256 of the file's bytes (about 0.5 s per GB from the page cache here; `benchmarks/fingerprint_cost.py`).

    Size and mtime alone miss a same-size edit whose mtime was preserved (`cp -p`, tar, `rsync -t`, coarse
    timestamps). The digest is remembered within this process while the file's inode, size, mtime and ctime
    stay the same (ctime cannot be set back by those tools), so prepare_data and setup hash a file once.
    """
    st = Path(path).stat()
    identity = (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if identity not in _fingerprints:
        with open(path, "rb") as f:
            _fingerprints[identity] = hashlib.file_digest(f, "sha256").hexdigest()
    return _fingerprints[identity]


def store_key(sources: Sequence[Path], tokenizer, max_length: int) -> str:
    """Cache key from the source files' contents (and names, in order), the tokenizer and the max length."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{tokenizer_fingerprint(tokenizer)}|{max_length}".encode())
    for p in sources:
        h.update(f"|{Path(p).name}|{file_fingerprint(Path(p))}".encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIT_DR_CACHE", Path.home() / ".cache" / "lit_dr"))


def cached_store(kind: str, sources: Sequence[Path], tokenizer, max_length: int, cache_dir: Path | None = None,
                 duplicate_ids: Literal["error", "keep_first"] = "error", show_progress: bool = True) -> TokenStore:
    """The store of `sources` (read in order, as one) under `cache_dir/tokens/` (default `default_cache_dir()`),
    built on first use. One per (kind, contents, tokenizer, max length): training, `lit-dr index` and
    `lit-dr search` share it."""
    directory = Path(cache_dir or default_cache_dir()) / "tokens" / f"{kind}-{store_key(sources, tokenizer, max_length)}"
    if directory.exists():
        return TokenStore(directory)
    records = (record for source in sources for record in iter_texts(source))
    return build_store(records, sources, tokenizer, max_length, directory, duplicate_ids, show_progress)


class TokenStore:
    """Read side of a store: row lookups return padded `TokenBatch`es trimmed to the longest row."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta = json.loads((self.directory / "meta.json").read_text())
        self.lengths = np.load(self.directory / "lengths.npy")  # (N,) int32
        self.ids = np.load(self.directory / "ids.npy", mmap_mode="r")  # (N,) str
        self.tokens = np.memmap(  # (N, L) int32
            self.directory / "tokens.bin", dtype=np.int32, mode="r", shape=(len(self.lengths), meta["max_length"])
        )
        self.pad_id, self.max_length = int(meta["pad_id"]), int(meta["max_length"])
        self.sources = [Path(p) for p in meta["sources"]]
        self.text_offsets = np.load(self.directory / "text_offsets.npy", mmap_mode="r")  # (N + 1,) int64
        self._texts = np.memmap(self.directory / "texts.bin", dtype=np.uint8, mode="r") if self.text_offsets[-1] else None
        self._id_index: IdIndex | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def id_index(self) -> IdIndex:
        """The ids' sorted index (memory-mapped, written beside `ids.npy` on first use if the store lacks it)."""
        if self._id_index is None:
            self._id_index = IdIndex.open(self.directory, self.ids)
        return self._id_index

    @property
    def row_of(self) -> RowMap:
        """id -> row, one id at a time, as a read-only mapping; `rows` and `id_index.find` look up many at once."""
        return RowMap(self.id_index, self.ids)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """(M,) int64 rows of `ids`; a KeyError names the first id the store lacks."""
        return self.id_index.rows(ids)

    def text(self, row: int) -> str:
        """The text of one row, exactly as tokenized (title and text joined)."""
        start, end = int(self.text_offsets[row]), int(self.text_offsets[row + 1])
        return bytes(self._texts[start:end]).decode("utf-8") if end > start else ""

    def texts(self, rows: Iterable[int] | None = None) -> Iterator[str]:
        """Texts of `rows` (all, in row order, when None), streamed."""
        return (self.text(r) for r in (range(len(self)) if rows is None else rows))

    def text_sequence(self) -> StoreTexts:
        """Every text as a read-only sequence decoded on access: a `Sequence[str]` that holds no string."""
        return StoreTexts(self)

    def batch(self, rows: np.ndarray | Sequence[int]) -> TokenBatch:
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]  # (N,)
        width = max(int(lengths.max(initial=1)), 1)
        ids = torch.from_numpy(np.ascontiguousarray(self.tokens[rows, :width], dtype=np.int64))  # (N, W)
        mask = torch.arange(width)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]  # (N, W)
        return TokenBatch(input_ids=ids, attention_mask=mask.long())


def build_store(
    records: Iterable[TextRecord],
    sources: Sequence[Path],
    tokenizer,
    max_length: int,
    directory: Path,
    duplicate_ids: Literal["error", "keep_first"] = "error",
    show_progress: bool = True,
) -> TokenStore:
    """The store at `directory`, tokenizing `records` (streamed, in chunks) into it unless it exists.

    A file lock beside `directory` makes concurrent builders of the same store (two fits started at once on a
    cold cache) wait for the first and reuse its result. Duplicate ids raise a `DataFormatError` naming both
    places, or with `keep_first` keep the first occurrence and log one counted warning. Empty texts are kept
    (a document may be judged relevant even if empty) and counted in one warning.
    """
    from filelock import FileLock

    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory.parent / f".{directory.name}.lock")):
        if not directory.exists():
            _build(records, sources, tokenizer, max_length, directory, duplicate_ids, show_progress)
    return TokenStore(directory)


def _where(path: Path | None, line: int, sources: Sequence[Path]) -> str:
    return f"{(path or sources[0]).name}:{line}"


def _build(records, sources, tokenizer, max_length, directory, duplicate_ids, show_progress) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        row_of: dict[str, int] = {}
        ids: list[str] = []
        lengths: list[np.ndarray] = []
        # Per row: where it came from (source file index, line; in memory only, for the duplicate messages) and
        # where its text ends in texts.bin.
        source_index, lines, offsets = array("h"), array("q"), array("q", [0])
        file_index = {p: i for i, p in enumerate(sources)}
        duplicates, empty, repeats = 0, 0, 0  # counted, and the first of each kept for the warning
        first_duplicate: tuple[TextRecord, int] | None = None
        first_empty: TextRecord | None = None
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        names = ", ".join(p.name for p in sources)
        with open(tmp / "tokens.bin", "wb") as out, open(tmp / "texts.bin", "wb") as texts_out, progress(
            f"tokenize {names}", show=show_progress
        ) as bar:
            chunk: list[TextRecord] = []

            def flush() -> None:
                enc = tokenizer([r.text for r in chunk], truncation=True, max_length=max_length)["input_ids"]
                block = np.full((len(enc), max_length), pad_id, dtype=np.int32)
                for k, row in enumerate(enc):
                    block[k, : len(row)] = row
                out.write(block.tobytes())
                lengths.append(np.fromiter((len(r) for r in enc), dtype=np.int32, count=len(enc)))
                bar.update(len(chunk))
                chunk.clear()

            def where(row: int) -> str:
                return _where(sources[source_index[row]], lines[row], sources)

            def same_text(row: int, text: str) -> bool:  # read back from texts.bin: repeats are rare
                texts_out.flush()
                with open(tmp / "texts.bin", "rb") as f:
                    f.seek(offsets[row])
                    return f.read(offsets[row + 1] - offsets[row]) == text.encode("utf-8")

            for rec in records:
                if rec.id in row_of:
                    # The same query in two files (MS MARCO's queries.dev.small.tsv is part of queries.dev.tsv) is
                    # one record, not a conflict: kept once, counted. A repeated id with another text is a conflict.
                    first = row_of[rec.id]
                    if file_index.get(rec.path, 0) != source_index[first] and same_text(first, rec.text):
                        repeats += 1
                        continue
                    if duplicate_ids == "error":
                        path = rec.path or sources[0]
                        problem = f"duplicate id {rec.id!r} (first at {where(row_of[rec.id])})"
                        raise DataFormatError(path, rec.line, "_id" if path.suffix == ".jsonl" else "id", problem)
                    duplicates += 1
                    first_duplicate = first_duplicate or (rec, row_of[rec.id])
                    continue
                row_of[rec.id] = len(ids)
                if not rec.text.strip():
                    empty += 1
                    first_empty = first_empty or rec
                data = rec.text.encode("utf-8")
                texts_out.write(data)
                offsets.append(offsets[-1] + len(data))
                source_index.append(file_index.get(rec.path, 0))
                lines.append(rec.line)
                ids.append(rec.id)
                chunk.append(rec)
                if len(chunk) == _CHUNK:
                    flush()
            if chunk:
                flush()
        if not ids:
            raise DataFormatError(names, None, None, "no records (every line is blank)")
        np.save(tmp / "lengths.npy", np.concatenate(lengths))
        id_array = np.array(ids)
        del ids, row_of  # the Python objects of every id: not needed from here on
        np.save(tmp / "ids.npy", id_array)
        IdIndex.build(id_array, str(directory / "ids.npy")).write(tmp)
        np.save(tmp / "text_offsets.npy", np.frombuffer(offsets, dtype=np.int64))
        meta = {"sources": [str(p) for p in sources], "max_length": max_length, "pad_id": pad_id}
        (tmp / "meta.json").write_text(json.dumps(meta))
        tmp.chmod(0o755)  # mkdtemp creates 0700; a cache is meant to be shared
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if repeats:
        log.info("%s: %d ids repeated in another file with the same text, kept once", names, repeats)
    if first_duplicate is not None:
        dup, kept = first_duplicate
        log.warning("%s: %d duplicate ids skipped, first occurrence kept (first duplicate: %r at %s, kept from %s)",
                    names, duplicates, dup.id, _where(dup.path, dup.line, sources),
                    _where(sources[source_index[kept]], lines[kept], sources))
    if first_empty is not None:
        log.warning("%s: %d empty texts kept (first: id %r at %s)", names, empty, first_empty.id,
                    _where(first_empty.path, first_empty.line, sources))


class StoreTexts(Sequence):
    """A store's texts in row order, each decoded when read (`TokenStore.text_sequence`)."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, row: int) -> str:
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} of a store of {len(self)}")
        return self.store.text(row % len(self))

    def __iter__(self) -> Iterator[str]:
        return self.store.texts()
