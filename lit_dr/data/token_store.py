"""Tokenized texts cached on disk and memory-mapped, so a corpus of millions never lives in Python objects.

A store is a directory with `tokens.bin` (N, max_length) raw int32 padded token ids (shape in `meta.json`), `lengths.npy` (N,) int32 and
`ids.npy` (N,) the string ids; rows keep the order of the source file. It is built once per (source files,
tokenizer, max length) and written to a temporary directory that is renamed into place, so a killed build
never leaves a half store behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from lit_dr.data.batches import TokenBatch
from lit_dr.data.formats import DataFormatError, TextRecord

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
_CHUNK = 4096


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash that changes whenever the tokenizer would produce different ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def store_key(sources: Sequence[Path], tokenizer, max_length: int) -> str:
    """Cache key from the source files' identity (path, size, mtime), the tokenizer and the max length."""
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{tokenizer_fingerprint(tokenizer)}|{max_length}".encode())
    for p in sources:
        st = Path(p).stat()
        h.update(f"|{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


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
        self.pad_id = int(meta["pad_id"])
        self._row_of: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def row_of(self) -> dict[str, int]:
        """id -> row, built on first use."""
        if self._row_of is None:
            self._row_of = {str(i): r for r, i in enumerate(self.ids)}
        return self._row_of

    def batch(self, rows: np.ndarray | Sequence[int]) -> TokenBatch:
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]  # (N,)
        width = max(int(lengths.max(initial=1)), 1)
        ids = torch.from_numpy(np.ascontiguousarray(self.tokens[rows, :width], dtype=np.int64))  # (N, W)
        mask = torch.arange(width)[None, :] < torch.from_numpy(lengths.astype(np.int64))[:, None]  # (N, W)
        return TokenBatch(input_ids=ids, attention_mask=mask.long())


def build_store(
    records: Iterable[TextRecord],
    source: Path,
    tokenizer,
    max_length: int,
    directory: Path,
    duplicate_ids: Literal["error", "keep_first"] = "error",
    show_progress: bool = True,
) -> TokenStore:
    """Tokenize `records` (streamed, in chunks) into a new store at `directory` and open it.

    Duplicate ids raise a `DataFormatError` naming both lines, or with `keep_first` keep the first occurrence
    and log one counted warning. Empty texts are kept (a document may be judged relevant even if empty) and
    counted in one warning.
    """
    from tqdm.auto import tqdm

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        first_line: dict[str, int] = {}
        ids: list[str] = []
        lengths: list[np.ndarray] = []
        duplicates: list[tuple[str, int]] = []
        empty: list[tuple[str, int]] = []
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        with open(tmp / "tokens.bin", "wb") as out, tqdm(
            desc=f"tokenize {source.name}", unit=" texts", disable=not show_progress
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

            for rec in records:
                if rec.id in first_line:
                    if duplicate_ids == "error":
                        raise DataFormatError(
                            source, rec.line, "_id", f"duplicate id {rec.id!r} (first on line {first_line[rec.id]})"
                        )
                    duplicates.append((rec.id, rec.line))
                    continue
                first_line[rec.id] = rec.line
                if not rec.text.strip():
                    empty.append((rec.id, rec.line))
                ids.append(rec.id)
                chunk.append(rec)
                if len(chunk) == _CHUNK:
                    flush()
            if chunk:
                flush()
        if not ids:
            raise DataFormatError(source, None, None, "no records")
        np.save(tmp / "lengths.npy", np.concatenate(lengths))
        np.save(tmp / "ids.npy", np.array(ids))
        (tmp / "meta.json").write_text(json.dumps({"source": str(source), "max_length": max_length, "pad_id": pad_id}))
        if directory.exists():  # another process finished the same build first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if duplicates:
        log.warning(
            "%s: %d duplicate ids skipped, first occurrence kept (first duplicate: %r on line %d)",
            source, len(duplicates), *duplicates[0],
        )
    if empty:
        log.warning("%s: %d empty texts kept (first: id %r on line %d)", source, len(empty), *empty[0])
    return TokenStore(directory)
