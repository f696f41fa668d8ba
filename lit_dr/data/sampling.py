"""How training examples are drawn: the negatives table, the epoch sampler, uniform draws of rows."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class NegativesTable:
    """Candidate hard negatives per training query row (corpus rows), and for DANCE candidate negative queries
    per positive document row (query rows). `version` counts refreshes; it seeds the draws from the table."""

    candidates: dict[int, np.ndarray]
    version: int = 0
    source: str = ""
    query_candidates: dict[int, np.ndarray] | None = None


class EpochSampler(DistributedSampler):
    """Shuffles per epoch (seeded), shards over processes, and after a mid-epoch resume skips the samples the
    interrupted run had already consumed, so the resumed run sees exactly the batches it would have seen.

    Being a DistributedSampler, Lightning keeps it under DDP instead of injecting its own, and calls `set_epoch`.
    """

    def __init__(self, n: int, seed: int, num_replicas: int, rank: int, skip: int = 0, skip_epoch: int = 0) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip, self.skip_epoch = skip, skip_epoch

    def __iter__(self):
        indices = list(super().__iter__())
        # Only the interrupted epoch is shortened; a checkpoint from its last batch resumes into the next one.
        skip = self.skip if self.epoch == self.skip_epoch else 0
        self.skip = 0
        return iter(indices[skip:])


def draw_rows(rng: np.random.Generator, pool: np.ndarray | None, n: int, population: int | np.ndarray,
              exclude: Collection[int]) -> list[int]:
    """n distinct rows uniformly from `pool`; if it holds fewer, topped up with random rows not in `exclude`.

    Args:
        population: where top-up rows come from: `range(population)` for an int (every corpus row), else the
            given rows (DANCE's negative queries: the training split's query rows only).
    """
    if n == 0:
        return []
    pool = np.empty(0, dtype=np.int64) if pool is None else pool
    if len(pool) >= n:
        return rng.choice(pool, size=n, replace=False).tolist()
    chosen, taken = pool.tolist(), set(pool.tolist()) | set(exclude)
    if isinstance(population, int | np.integer):
        size, free = int(population), int(population) - len(taken)
        row_at = int
    else:
        size, free = len(population), int((~np.isin(population, list(taken))).sum())
        row_at = lambda i: int(population[i])  # noqa: E731
    if free < n - len(chosen):
        raise ValueError(f"cannot draw {n} negatives: only {size} rows to draw from, {size - free} of them excluded "
                         "or already in the pool")
    while len(chosen) < n:
        r = row_at(rng.integers(size))
        if r not in taken:
            chosen.append(r)
            taken.add(r)
    return chosen


class QueryShardSampler(DistributedSampler):
    """Evaluation and prediction queries in order, each process taking its contiguous share (sizes differ by at
    most one, no padding), and a process whose share is empty (fewer queries than processes) the first query
    once: Lightning skips an evaluation loop without batches, and that process would then miss the collectives
    of the others. The module's gather pads by counts and drops the repeat (`BiEncoderModule._gathered_queries`).

    Being a DistributedSampler, Lightning keeps it under DDP instead of injecting its own (which pads val/test
    with repeats and asserts in predict when a process gets no query).
    """

    def __init__(self, n: int, num_replicas: int, rank: int) -> None:
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=False)
        bounds = np.linspace(0, n, num_replicas + 1).round().astype(int)
        share = list(range(int(bounds[rank]), int(bounds[rank + 1])))
        self.indices = share or [0][:n]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
