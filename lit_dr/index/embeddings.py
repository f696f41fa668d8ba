"""Embeddings of a whole token store on disk, one memory-mapped `.npy` shard per process.

The one mechanism behind evaluation, negative refresh and LTRe's fixed index. Each process of a job encodes a
contiguous range of rows (ranges balanced by token count, so the work is even) and writes it to its own shard;
nobody holds the whole matrix in memory. Readers see the shards as one (N, H) array through `EmbeddingShards`:
blocks for streaming search, `take` for a few rows. A directory holds:

    meta.json                       {"rows": N, "dim": H, "dtype": ..., "bounds": [0, n_0, ..., N], ...}
    shard-00000-of-00002.npy        rows bounds[0]:bounds[1], (n_0, H) float32 or float16
    shard-00001-of-00002.npy        ...

A shard is written under a temporary name and renamed when complete, so a crash leaves no half shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from lit_dr.files import atomic_file

EmbeddingDtype = Literal["float32", "float16"]


def token_balanced_bounds(lengths: np.ndarray, parts: int) -> np.ndarray:
    """(parts + 1,) row bounds splitting rows 0..N-1 into contiguous ranges of about equal total length.

    Encoding time grows with the tokens encoded, not the rows, so equal token counts mean equal work.
    """
    weights = np.cumsum(np.maximum(lengths.astype(np.int64), 1))  # (N,)
    targets = weights[-1] * np.arange(1, parts) / parts if len(weights) else np.zeros(parts - 1)
    inner = np.searchsorted(weights, targets, side="left") + 1 if len(weights) else np.zeros(parts - 1, np.int64)
    return np.concatenate([[0], np.minimum(inner, len(lengths)), [len(lengths)]]).astype(np.int64)


def shard_path(directory: Path, rank: int, world_size: int) -> Path:
    return Path(directory) / f"shard-{rank:05d}-of-{world_size:05d}.npy"


def write_meta(directory: Path, bounds: np.ndarray, dim: int, dtype: EmbeddingDtype, **extra) -> None:
    meta = {"rows": int(bounds[-1]), "dim": int(dim), "dtype": dtype, "bounds": [int(b) for b in bounds], **extra}
    with atomic_file(Path(directory) / "meta.json") as f:
        json.dump(meta, f, indent=1)


def open_shard_for_writing(path: Path, rows: int, dim: int, dtype: EmbeddingDtype) -> tuple[np.ndarray, Path]:
    """A (rows, dim) array backed by a temporary file beside `path`; `finish_shard` renames it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if rows == 0:  # an empty memory map cannot exist: a plain empty array, saved by `finish_shard`
        return np.empty((0, dim), dtype=dtype), tmp
    return np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(rows, dim)), tmp


def finish_shard(array: np.ndarray, tmp: Path, path: Path) -> None:
    if isinstance(array, np.memmap):
        array.flush()
    else:
        with open(tmp, "wb") as f:
            np.save(f, array)
    os.replace(tmp, path)


class EmbeddingShards:
    """Read side: the shards of a directory seen as one (N, H) array, in store-row order, never loaded whole.

    Indexing (`emb[rows]`, `emb[a:b]`) returns float32 copies of just those rows, so FAISS helpers that take
    an array (`lit_dr.index.faiss_index.build_index`) take this too.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} missing: {self.directory} holds no complete embeddings")
        self.meta = json.loads(meta_path.read_text())
        self.bounds = np.asarray(self.meta["bounds"], dtype=np.int64)  # (W + 1,)
        self.dim = int(self.meta["dim"])
        world = len(self.bounds) - 1
        self._shards = []
        for rank in range(world):
            path = shard_path(self.directory, rank, world)
            if not path.exists():
                raise FileNotFoundError(f"{path} missing: embeddings in {self.directory} are incomplete")
            rows = int(self.bounds[rank + 1] - self.bounds[rank])
            shard = np.load(path, mmap_mode="r") if rows else np.empty((0, self.dim), dtype=self.meta["dtype"])
            if shard.shape != (rows, self.dim):
                raise ValueError(f"{path}: shape {shard.shape}, meta.json says {(rows, self.dim)}")
            self._shards.append(shard)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    ndim = 2

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # np.asarray(emb): every row, in memory
        return self.take(np.arange(len(self))).astype(dtype or np.float32, copy=False)

    def shard(self, rank: int) -> np.ndarray:
        """(n_rank, H) float32 copy of the rows process `rank` wrote."""
        return np.ascontiguousarray(self._shards[rank], dtype=np.float32)

    def blocks(self, block_rows: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, (n, H) float32 rows: a read-only view of the file when stored as float32) for consecutive
        blocks of at most `block_rows` rows, shard by shard."""
        for first, shard in zip(self.bounds[:-1], self._shards, strict=True):
            for start in range(0, len(shard), block_rows):
                yield int(first + start), np.ascontiguousarray(shard[start : start + block_rows], dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), H) float32 embeddings of the given store rows, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range 0..{len(self) - 1}")
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        which = np.searchsorted(self.bounds, rows, side="right") - 1  # (n,) shard of each row
        for s in np.unique(which):
            mask = which == s
            local = rows[mask] - self.bounds[s]
            order = np.argsort(local, kind="stable")  # read each memory map front to back
            picked = np.empty((len(local), self.dim), dtype=np.float32)
            picked[order] = self._shards[s][local[order]]
            out[mask] = picked
        return out

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        return self.take(np.asarray(key))

    def digest(self) -> str:
        """sha256 over meta's shape and every shard file's bytes (for checking that a file is the one recorded)."""
        h = hashlib.sha256(json.dumps([self.meta["rows"], self.dim, self.meta["dtype"]]).encode())
        for rank in range(len(self._shards)):
            with open(shard_path(self.directory, rank, len(self._shards)), "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
        return h.hexdigest()
