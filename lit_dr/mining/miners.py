"""Mining hard negatives from a dense index: pure functions over embedding matrices (ANCE, DANCE)."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lit_dr.files import atomic_file


@dataclass
class Mined:
    """Sampled candidates per key row, and figures about the ranking they came from."""

    candidates: dict[int, np.ndarray]
    stats: dict[str, float] = field(default_factory=dict)


def sample_negatives(
    ranked: np.ndarray,
    keys: Sequence[int],
    exclude: Sequence[Collection[int]],
    num: int,
    skip: int,
    seed: int,
    generation: int,
    relevant: Sequence[Collection[int]],
) -> Mined:
    """From each key's ranking (best first), drop the rows in `exclude` and empty slots (-1), keep ranks
    [skip, depth), and draw `num` uniformly without replacement (all when fewer remain).

    Args:
        ranked: (K, depth) rows retrieved for each key.  keys: (K,) the key rows (seed the draw).
        exclude: per key, the rows that may not be negatives (`RetrievalDataModule.excluded_docs`: its positives,
            or every judged document; for DANCE, `excluded_queries`).
        relevant: per key, its positives (grade > 0), whatever `exclude` holds: what the figures count.
    The draw is seeded by (seed, generation, key) and made from the candidates sorted by row, so it depends on
    the candidate set only, not on how near-ties were ordered: every process of a DDP job draws the same.
    Also reports the share of keys with a relevant row in the ranking and their mean best rank (1-based).
    """
    candidates, found, best_ranks = {}, 0, []
    for i, key in enumerate(keys):
        row_ranking = ranked[i]
        hits = np.flatnonzero(np.isin(row_ranking, list(relevant[i])))
        if len(hits):
            found += 1
            best_ranks.append(hits[0] + 1)
        window = row_ranking[skip:]
        keep = window[(window >= 0) & ~np.isin(window, list(exclude[i]))]
        pool = np.sort(keep)
        rng = np.random.default_rng([seed, generation, int(key)])
        take = min(num, len(pool))
        candidates[int(key)] = np.sort(rng.choice(pool, size=take, replace=False)) if take else pool
    stats = {
        "positive_in_depth": found / max(1, len(keys)),
        "positive_mean_rank": float(np.mean(best_ranks)) if best_ranks else float("nan"),
    }
    return Mined(candidates, stats)


def overlap(old: Mapping[int, np.ndarray], new: Mapping[int, np.ndarray]) -> float:
    """Mean over keys of |new ∩ old| / |new|: how much of each new negative set was already there."""
    shares = [len(np.intersect1d(v, old[k])) / len(v) for k, v in new.items() if len(v) and k in old]
    return float(np.mean(shares)) if shares else 0.0


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
