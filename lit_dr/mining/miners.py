"""Miners: which rows of a ranking become a key's negatives. Data in, data out: a ranking with its scores and the
rows each key may not take, the candidates and figures about them. `NegativeRefresh(miner=...)` (ANCE, DANCE) and
BM25 negatives go through the same code; a YAML chooses the miner by `class_path`."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Mined:
    """Candidates per key row, and figures about the ranking they came from."""

    candidates: dict[int, np.ndarray]
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class Ranking:
    """What a search returned for K keys (query rows; for DANCE's query mining, positive document rows).

    Args:
        keys: (K,) key rows.  rows: (K, depth) retrieved rows, best first, -1 = empty slot.
        scores: (K, depth) their scores (needed by a miner that compares them with the positive's).
        positive_scores: (K,) each key's positive score: the lowest over its positives when it has several (the
            hardest one, so a margin is conservative, as sentence-transformers does); NaN where unknown. None when
            nobody computed them (only a miner with `needs_positive_scores` asks for them).
    """

    keys: np.ndarray
    rows: np.ndarray
    scores: np.ndarray | None = None
    positive_scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.keys = np.asarray(self.keys, dtype=np.int64)
        self.rows = np.asarray(self.rows, dtype=np.int64)
        if self.rows.ndim != 2 or len(self.rows) != len(self.keys):
            raise ValueError(f"rows of shape {self.rows.shape} for {len(self.keys)} keys: expected (K, depth)")
        if self.scores is not None and np.shape(self.scores) != self.rows.shape:
            raise ValueError(f"scores of shape {np.shape(self.scores)}, rows of shape {self.rows.shape}")
        if self.positive_scores is not None and np.shape(self.positive_scores) != self.keys.shape:
            raise ValueError(f"positive_scores of shape {np.shape(self.positive_scores)} for {len(self.keys)} keys")


def usable(rows: np.ndarray, exclude: Sequence[Collection[int]]) -> np.ndarray:
    """(K, depth) bool: slot j of key i holds a row that may be its negative: not empty (-1), not in `exclude[i]`.

    The one such filter: every miner and the BM25 table use it. `exclude` comes from the data module
    (`excluded_docs`: positives, or every judged document; for DANCE, `excluded_queries`).
    """
    if len(exclude) != rows.shape[0]:
        raise ValueError(f"{rows.shape[0]} ranked lists but {len(exclude)} sets of rows to exclude")
    keep = rows >= 0
    for i, rows_out in enumerate(exclude):
        if rows_out:
            keep[i] &= ~np.isin(rows[i], np.fromiter(rows_out, dtype=np.int64, count=len(rows_out)))
    return keep


def lowest_positive_scores(keys: np.ndarray, positives: np.ndarray, owner: np.ndarray, num_keys: int) -> np.ndarray:
    """(K,) float32: per key, the lowest dot product with its positives; NaN for a key without one.

    Args:
        keys: (K, H) key embeddings.  positives: (P, H) positive embeddings.  owner: (P,) the key position of each.
    """
    s = np.einsum("ph,ph->p", keys[owner], positives).astype(np.float32)  # (P,)
    out = np.full(num_keys, np.nan, dtype=np.float32)
    np.fmin.at(out, owner, s)  # fmin ignores the NaN it starts from
    return out


def uniform_draw(pool: np.ndarray, num: int, seed: int, generation: int, key: int) -> np.ndarray:
    """`num` of `pool` uniformly without replacement (all when fewer), sorted by row. Seeded by (seed, generation,
    key) and drawn from the pool sorted by row, so it depends on the candidate set only, not on how near-ties were
    ordered: every process of a DDP job draws the same."""
    pool = np.sort(pool)
    rng = np.random.default_rng([seed, generation, int(key)])
    take = min(num, len(pool))
    return np.sort(rng.choice(pool, size=take, replace=False)) if take else pool


def ranking_stats(rows: np.ndarray, relevant: Sequence[Collection[int]]) -> dict[str, float]:
    """The share of keys with a relevant row in the ranking, and the mean best rank (1-based) of those."""
    best_ranks = []
    for ranked, rel in zip(rows, relevant, strict=True):
        hits = np.flatnonzero(np.isin(ranked, list(rel)))
        if len(hits):
            best_ranks.append(hits[0] + 1)
    return {"positive_in_depth": len(best_ranks) / max(1, len(rows)),
            "positive_mean_rank": float(np.mean(best_ranks)) if best_ranks else float("nan")}


class Miner:
    """Base of the miners: `miner(ranking, exclude, relevant, num, seed, generation) -> Mined`.

    The usable slots (`usable`) go through `select`, each miner's own filter; then `num` are drawn per key
    (`uniform_draw`), or with `num=None` all of them are kept, in rank order (the BM25 table).
    Args of the call: exclude / relevant: per key, the rows it may not take and its positives (grade > 0, what the
    figures count); seed / generation: seed the draw.
    A subclass keeps each `__init__` argument as an attribute of the same name (`config` reads them back).
    """

    needs_positive_scores = False  # the refresh computes `Ranking.positive_scores` only for a miner that says so

    def select(self, ranking: Ranking, keep: np.ndarray, stats: dict[str, float]) -> np.ndarray:
        """(K, depth) bool: the slots of `keep` that stay candidates; may add figures to `stats`."""
        raise NotImplementedError

    def __call__(self, ranking: Ranking, exclude: Sequence[Collection[int]], relevant: Sequence[Collection[int]],
                 num: int | None, seed: int = 0, generation: int = 0) -> Mined:
        stats = ranking_stats(ranking.rows, relevant)
        keep = self.select(ranking, usable(ranking.rows, exclude), stats)
        candidates = {}
        for key, rows, kept in zip(ranking.keys.tolist(), ranking.rows, keep, strict=True):
            pool = rows[kept]  # rank order
            candidates[key] = pool if num is None else uniform_draw(pool, num, seed, generation, key)
        return Mined(candidates, stats)

    def config(self) -> dict:
        """class_path and init_args, as a YAML would give them (recorded in `refreshes.jsonl`)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                "init_args": {n: getattr(self, n) for n in names}}


class UniformMiner(Miner):
    """ANCE's released code: drop excluded rows and empty slots, keep ranks [skip, depth), draw uniformly.

    Args:
        skip: leading ranks never taken (0: ANCE; a few skip the likeliest unjudged positives).
    """

    def __init__(self, skip: int = 0) -> None:
        if skip < 0:
            raise ValueError(f"UniformMiner(skip={skip}): expected >= 0")
        self.skip = skip

    def select(self, ranking: Ranking, keep: np.ndarray, stats: dict[str, float]) -> np.ndarray:
        keep[:, : self.skip] = False
        return keep


class PositiveAwareMiner(Miner):
    """Drop candidates that score too close to the key's positive (likely unjudged positives), then draw uniformly.

    A candidate of score s, for a positive score p (`Ranking.positive_scores`: the lowest of the key's positives),
    stays when all the set bounds hold:
        max_relative:    s < max_relative * p          (NV-Retriever's TopK-PercPos; Moreira et al. 2024,
                                                         arXiv 2407.15831: 0.95)
        absolute_margin: s + absolute_margin <= p      (sentence-transformers `mine_hard_negatives`)
    sentence-transformers' `relative_margin` r is `max_relative` 1 - r (it keeps s == (1 - r) p; this drops it).
    Meant for positive scores (cosine, dot of normalised vectors): with p < 0 a relative bound lies above p.
    A key whose positive score is unknown (NaN) keeps every candidate, counted in `positive_score_unknown`; a
    ranking without positive scores at all is an error.

    Figures: `margin_dropped` (share of the usable candidates in ranks [skip, depth) dropped by the bounds),
    `margin_keys_emptied` (share of keys left without a candidate), `positive_score_unknown`.
    """

    needs_positive_scores = True

    def __init__(self, max_relative: float | None = 0.95, absolute_margin: float | None = None,
                 skip: int = 0) -> None:
        if max_relative is None and absolute_margin is None:
            raise ValueError("PositiveAwareMiner needs max_relative or absolute_margin (else use UniformMiner)")
        if skip < 0:
            raise ValueError(f"PositiveAwareMiner(skip={skip}): expected >= 0")
        self.max_relative, self.absolute_margin, self.skip = max_relative, absolute_margin, skip

    def select(self, ranking: Ranking, keep: np.ndarray, stats: dict[str, float]) -> np.ndarray:
        if ranking.scores is None or ranking.positive_scores is None:
            raise ValueError("PositiveAwareMiner needs the ranking's scores and each key's positive score "
                             "(Ranking.scores, Ranking.positive_scores)")
        keep[:, : self.skip] = False
        s = np.asarray(ranking.scores, dtype=np.float32)  # (K, depth)
        p = np.asarray(ranking.positive_scores, dtype=np.float32)[:, None]  # (K, 1)
        close = np.zeros_like(keep)
        if self.max_relative is not None:
            close |= ~(s < self.max_relative * p)
        if self.absolute_margin is not None:
            close |= s + self.absolute_margin > p
        close &= ~np.isnan(p)  # unknown positive score: no bound
        dropped = keep & close
        stats["margin_dropped"] = float(dropped.sum() / max(1, keep.sum()))
        kept = keep & ~close
        stats["margin_keys_emptied"] = float(np.mean(keep.any(1) & ~kept.any(1))) if len(keep) else 0.0
        stats["positive_score_unknown"] = float(np.isnan(p).mean()) if len(p) else 0.0
        return kept
