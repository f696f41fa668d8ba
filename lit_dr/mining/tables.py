"""Negatives tables on disk and figures about them: CSR arrays in one .npz, a digest, the overlap of two tables;
the partition of the training queries a fractional refresh mines chunk by chunk, and the merge of its tables."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from lit_dr.files import atomic_file


def overlap(old: Mapping[int, np.ndarray], new: Mapping[int, np.ndarray]) -> float:
    """Mean over keys of |new ∩ old| / |new|: how much of each new negative set was already there."""
    shares = [len(np.intersect1d(v, old[k])) / len(v) for k, v in new.items() if len(v) and k in old]
    return float(np.mean(shares)) if shares else 0.0


def chunk_partition(num_rows: int, chunks: int, seed: int) -> list[np.ndarray]:
    """Positions 0..num_rows-1 split into `chunks` disjoint chunks covering all, sizes differing by at most one:
    a permutation seeded by `seed`, split in order (`np.array_split`), each chunk sorted. The same for the same
    inputs, so a resumed run recomputes the partition instead of checkpointing it."""
    if not 1 <= chunks <= num_rows:
        raise ValueError(f"cannot split {num_rows} rows into {chunks} chunks: expected 1 <= chunks <= {num_rows}")
    order = np.random.default_rng(seed).permutation(num_rows)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, chunks)]


def merge_tables(previous: Mapping[int, np.ndarray] | None, new: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """`previous` with the keys of `new` replaced (or added) by theirs: a fractional refresh renews its chunk's
    rows and keeps every other row's negatives from its last refresh (or from the table it started from)."""
    return {**(previous or {}), **new}


def table_digest(*tables: Mapping[int, np.ndarray] | None) -> str:
    """sha256 over the tables' keys and values: the same on every process for the same tables."""
    h = hashlib.sha256()
    for table in tables:
        h.update(b"|")
        for key in sorted(table or {}):
            h.update(np.int64(key).tobytes())
            h.update(np.asarray(table[key], dtype=np.int64).tobytes())
            h.update(b";")
    return h.hexdigest()


def save_table(path, candidates: Mapping[int, np.ndarray], query_candidates: Mapping[int, np.ndarray] | None) -> None:
    """Write the tables as CSR arrays in one .npz, through a temporary file renamed into place."""
    def csr(table):
        keys = np.array(sorted(table), dtype=np.int64)
        lengths = np.array([len(table[k]) for k in keys], dtype=np.int64)
        values = np.concatenate([np.asarray(table[k], dtype=np.int64) for k in keys]) if len(keys) else np.empty(0)
        return keys, np.concatenate([[0], np.cumsum(lengths)]), values.astype(np.int64)

    arrays = dict(zip(("keys", "offsets", "values"), csr(candidates), strict=True))
    if query_candidates is not None:
        arrays.update(zip(("q_keys", "q_offsets", "q_values"), csr(query_candidates), strict=True))
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)


def load_table(path) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray] | None]:
    data = np.load(path)

    def table(prefix):
        keys, offsets, values = data[f"{prefix}keys"], data[f"{prefix}offsets"], data[f"{prefix}values"]
        return {int(k): values[offsets[i] : offsets[i + 1]] for i, k in enumerate(keys)}

    return table(""), (table("q_") if "q_keys" in data else None)
