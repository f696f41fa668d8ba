"""Id -> row lookups over a store's ids as two sorted arrays on disk, memory-mapped: no Python dict of the corpus.

A dict of 8.8M MS MARCO ids costs about 1 GB of Python str and int objects in every process that builds it; these
arrays cost N * (width + 8) bytes of page cache, shared by every process that maps them. `ids.npy` of a store
stays the record of the rows; the index is derived from it (so two processes writing it at once write the same
bytes), beside it as `id_index.ids.npy` (N,) `S{width}` the UTF-8 ids in sorted order and `id_index.rows.npy`
(N,) int64 the row of each. Lookups are `np.searchsorted` over them, in bulk. Ids hold no control characters
(`formats.check_id`), so the NUL padding of fixed-width bytes never hides a character.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from lit_dr.files import atomic_file

log = logging.getLogger(__name__)
SORTED_IDS, SORTED_ROWS = "id_index.ids.npy", "id_index.rows.npy"


def sorted_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted UTF-8 ids `S{width}`, the row of each): a stable sort, so of repeated ids the last row comes last."""
    encoded = np.char.encode(np.asarray(ids, dtype=str), "utf-8")  # (N,) S{width}
    order = np.argsort(encoded, kind="stable")  # (N,) int64
    return encoded[order], order.astype(np.int64)


class IdIndex:
    """Rows of ids: `find` (-1 where absent) and `rows` (a KeyError naming the first absent id and `source`)."""

    def __init__(self, keys: np.ndarray, rows: np.ndarray, source: str) -> None:
        self.keys, self.row_at, self.source = keys, rows, source  # (N,) S{width} sorted; (N,) int64

    @classmethod
    def build(cls, ids: np.ndarray, source: str) -> IdIndex:
        """An index in memory of `ids` (a store's, in row order)."""
        return cls(*sorted_ids(ids), source)

    @classmethod
    def open(cls, directory: str | Path, ids: np.ndarray) -> IdIndex:
        """The index of `directory/ids.npy` (`ids`), memory-mapped; written there first if absent (atomically;
        in memory only, with an info line, where the directory cannot be written, as a shared read-only cache)."""
        directory = Path(directory)
        paths = directory / SORTED_IDS, directory / SORTED_ROWS
        source = str(directory / "ids.npy")
        if not all(p.is_file() for p in paths):
            index = cls.build(ids, source)
            try:
                index.write(directory)
            except OSError as error:
                log.info("%s: id index kept in memory, not written (%s)", directory, error)
                return index
        keys, rows = (np.load(p, mmap_mode="r") for p in paths)
        if len(keys) != len(ids) or len(rows) != len(ids):
            raise ValueError(f"{paths[0]} holds {len(keys)} ids and {paths[1]} {len(rows)} rows, but {source} "
                             f"{len(ids)}: delete the two id_index files and they are rebuilt")
        return cls(keys, rows, source)

    def write(self, directory: str | Path) -> None:
        """Both arrays under `directory`, each replaced atomically (their bytes depend only on the ids)."""
        for name, array in ((SORTED_IDS, self.keys), (SORTED_ROWS, self.row_at)):
            with atomic_file(Path(directory) / name, "wb") as f:
                np.save(f, np.asarray(array))

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, ids: Iterable[str]) -> np.ndarray:
        """(M,) int64: the row of each id, -1 where the store has none (the last row of a repeated id, as a dict
        built in row order keeps)."""
        ids = ids if isinstance(ids, list | tuple | np.ndarray) else list(ids)
        if not len(ids):
            return np.empty(0, dtype=np.int64)
        text = np.asarray(ids, dtype=str)  # (M,) U: NumPy drops trailing NULs, so compare lengths below
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        encoded = np.char.encode(text, "utf-8")  # (M,) S{w}
        fits = (np.char.str_len(encoded) <= self.keys.dtype.itemsize) & (np.char.str_len(text) == lengths)
        query = encoded.astype(self.keys.dtype)  # ids longer than every key are cut here, and not `fits`
        at = np.searchsorted(self.keys, query, side="right") - 1  # (M,) the last equal key, if any
        clipped = np.maximum(at, 0)
        found = fits & (at >= 0) & (np.asarray(self.keys[clipped]) == query)
        return np.where(found, np.asarray(self.row_at[clipped]), -1).astype(np.int64)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """(M,) int64: the row of each id; a KeyError names the first id the store lacks."""
        ids = ids if isinstance(ids, list | tuple | np.ndarray) else list(ids)
        rows = self.find(ids)
        if (rows < 0).any():
            missing = ids[int(np.flatnonzero(rows < 0)[0])]
            raise KeyError(f"id {str(missing)!r} is not in {self.source} ({int((rows < 0).sum())} of {len(rows)} "
                           "ids looked up are not)")
        return rows

    def get(self, key: object, default: int | None = None) -> int | None:
        """The row of one id (`default` where absent, or for a key that is not a string, as a dict does)."""
        if not isinstance(key, str):
            return default
        encoded = key.encode("utf-8")
        if len(encoded) > self.keys.dtype.itemsize or encoded.endswith(b"\0"):
            return default
        at = int(np.searchsorted(self.keys, encoded, side="right")) - 1
        return int(self.row_at[at]) if at >= 0 and self.keys[at] == encoded else default


class RowMap(Mapping):
    """`TokenStore.row_of`: id -> row as a read-only mapping over an `IdIndex` (iterated in row order), for code
    that looks up one id at a time; bulk lookups should call `IdIndex.find` or `rows`."""

    def __init__(self, index: IdIndex, ids: np.ndarray) -> None:
        self.index, self.ids = index, ids

    def __getitem__(self, key: str) -> int:
        row = self.index.get(key)
        if row is None:
            raise KeyError(key)
        return row

    def get(self, key: object, default: int | None = None) -> int | None:
        return self.index.get(key, default)

    def __contains__(self, key: object) -> bool:
        return self.index.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return (str(i) for i in self.ids)

    def __len__(self) -> int:
        return len(self.ids)
