"""Miners: the uniform one draws exactly what the pre-miner refresh drew (the parity benchmark's table digest), the
positive-aware one against a plain loop, both chosen from YAML by class_path."""

from __future__ import annotations

import numpy as np
import pytest

from lit_dr.mining.miners import (
    Miner,
    PositiveAwareMiner,
    Ranking,
    UniformMiner,
    lowest_positive_scores,
    usable,
)
from lit_dr.mining.tables import table_digest


def reference_sample_negatives(ranked, keys, exclude, num, skip, seed, generation):
    """`sample_negatives` as it was before the miners (commit 3e516e5), verbatim but for the figures."""
    candidates = {}
    for i, key in enumerate(keys):
        window = ranked[i][skip:]
        keep = window[(window >= 0) & ~np.isin(window, list(exclude[i]))]
        pool = np.sort(keep)
        rng = np.random.default_rng([seed, generation, int(key)])
        take = min(num, len(pool))
        candidates[int(key)] = np.sort(rng.choice(pool, size=take, replace=False)) if take else pool
    return candidates


def random_rankings(rng, num_keys=40, depth=30, corpus=60):
    """Rankings without repeats, some slots empty (-1), exclusions of 0 to 5 rows, some outside the ranking."""
    ranked = np.stack([rng.permutation(corpus)[:depth] for _ in range(num_keys)])
    ranked[rng.random(ranked.shape) < 0.1] = -1
    keys = rng.choice(1000, size=num_keys, replace=False)
    exclude = [set(rng.choice(corpus, size=rng.integers(0, 6), replace=False).tolist()) for _ in range(num_keys)]
    return keys, ranked, exclude


@pytest.mark.parametrize(("skip", "num"), [(0, 20), (3, 5), (0, 100), (29, 2)])
def test_uniform_miner_draws_the_tables_sample_negatives_drew(skip, num):
    rng = np.random.default_rng(skip * 100 + num)
    for trial in range(5):
        keys, ranked, exclude = random_rankings(rng)
        scores = -np.sort(rng.random(ranked.shape), axis=1)  # ignored by the uniform miner
        got = UniformMiner(skip=skip)(Ranking(keys, ranked, scores), exclude, exclude, num, seed=7, generation=trial)
        want = reference_sample_negatives(ranked, keys, exclude, num, skip, 7, trial)
        assert table_digest(got.candidates) == table_digest(want)
        assert list(got.candidates) == list(want)


def test_usable_drops_excluded_and_empty_slots():
    rows = np.array([[5, 3, -1, 8], [4, 1, 7, 0]])
    assert usable(rows, [{3, 99}, []]).tolist() == [[True, False, False, True], [True, True, True, True]]


def test_lowest_positive_scores_against_a_loop():
    rng = np.random.default_rng(0)
    keys, docs = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(9, 8)).astype(np.float32)
    owner = np.array([0, 0, 1, 3, 3, 3, 1, 0, 4])
    got = lowest_positive_scores(keys, docs, owner, 6)
    for k in (0, 1, 3, 4):
        assert got[k] == pytest.approx(min(float(keys[k] @ docs[p]) for p in np.flatnonzero(owner == k)), abs=1e-5)
    assert np.isnan(got[2]) and np.isnan(got[5])  # keys without positives: unknown


def naive_positive_aware(ranking, exclude, max_relative, absolute_margin, skip):
    """Which rows stay, by a plain loop over the definitions in the docstring."""
    out = {}
    for i, key in enumerate(ranking.keys):
        p = ranking.positive_scores[i]
        kept = []
        for j, (row, s) in enumerate(zip(ranking.rows[i], ranking.scores[i], strict=True)):
            if j < skip or row < 0 or row in exclude[i]:
                continue
            if not np.isnan(p):
                if max_relative is not None and not s < max_relative * p:
                    continue
                if absolute_margin is not None and s + absolute_margin > p:
                    continue
            kept.append(int(row))
        out[int(key)] = kept
    return out


@pytest.mark.parametrize(("max_relative", "absolute_margin", "skip"), [(0.95, None, 0), (None, 0.05, 2),
                                                                       (0.9, 0.02, 1)])
def test_positive_aware_miner_against_a_loop(max_relative, absolute_margin, skip):
    rng = np.random.default_rng(1)
    keys, ranked, exclude = random_rankings(rng)
    scores = np.sort(rng.uniform(0.3, 0.9, size=ranked.shape).astype(np.float32), axis=1)[:, ::-1]
    positive = rng.uniform(0.5, 0.9, size=len(keys)).astype(np.float32)
    positive[:3] = np.nan
    ranking = Ranking(keys, ranked, scores, positive)
    miner = PositiveAwareMiner(max_relative=max_relative, absolute_margin=absolute_margin, skip=skip)
    got = miner(ranking, exclude, exclude, num=None)
    want = naive_positive_aware(ranking, exclude, max_relative, absolute_margin, skip)
    assert {k: v.tolist() for k, v in got.candidates.items()} == want  # rank order with num=None
    usable_count = sum(int(r >= 0 and r not in exclude[i]) for i in range(len(keys)) for r in ranked[i, skip:])
    assert got.stats["margin_dropped"] == pytest.approx(1 - sum(map(len, want.values())) / usable_count)
    assert 0 < got.stats["margin_dropped"] < 1  # the bounds acted, and not on everything
    assert got.stats["positive_score_unknown"] == pytest.approx(3 / len(keys))
    # Drawing: `num` of exactly those, as the uniform miner draws from its pool.
    drawn = miner(ranking, exclude, exclude, num=4, seed=3, generation=2)
    for k, v in drawn.candidates.items():
        assert set(v.tolist()) <= set(want[k]) and len(v) == min(4, len(want[k]))


def test_positive_aware_boundaries_and_missing_scores():
    ranking = Ranking([0], np.array([[1, 2, 3]]), np.array([[0.96, 0.95, 0.5]], dtype=np.float32),
                      np.array([1.0], dtype=np.float32))
    # NV-Retriever keeps s < 0.95 p only: 0.95 itself goes.
    assert PositiveAwareMiner()(ranking, [set()], [set()], None).candidates[0].tolist() == [3]
    # sentence-transformers' absolute margin drops s + m > p: 0.95 + 0.05 == 1.0 stays.
    assert PositiveAwareMiner(None, 0.05)(ranking, [set()], [set()], None).candidates[0].tolist() == [2, 3]
    with pytest.raises(ValueError, match="positive score"):
        PositiveAwareMiner()(Ranking([0], ranking.rows, ranking.scores), [set()], [set()], None)
    with pytest.raises(ValueError, match="max_relative or absolute_margin"):
        PositiveAwareMiner(None, None)


def test_miners_are_chosen_by_class_path_and_describe_themselves():
    from jsonargparse import ArgumentParser

    from lit_dr.training import NegativeRefresh

    parser = ArgumentParser()
    parser.add_class_arguments(NegativeRefresh, "refresh")
    cfg = parser.parse_args(["--refresh.miner", '{"class_path": "lit_dr.mining.miners.PositiveAwareMiner", '
                             '"init_args": {"max_relative": 0.9}}'])
    refresh = parser.instantiate_classes(cfg).refresh
    assert isinstance(refresh.miner, PositiveAwareMiner) and refresh.miner.max_relative == 0.9
    assert refresh.miner.config() == {"class_path": "lit_dr.mining.miners.PositiveAwareMiner",
                                      "init_args": {"max_relative": 0.9, "absolute_margin": None, "skip": 0}}
    default = parser.instantiate_classes(parser.parse_args([])).refresh
    assert type(default.miner) is UniformMiner and default.miner.skip == 0
    assert isinstance(default.miner, Miner)
    # A config saved before `miner` existed names skip.
    assert NegativeRefresh(skip=0).miner.skip == 0 and NegativeRefresh(skip=3).miner.skip == 3
    with pytest.raises(ValueError, match="deprecated"):
        NegativeRefresh(skip=3, miner=UniformMiner())


# -- in the refresh ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    from test_relevance import write_graded

    return write_graded(tmp_path_factory.mktemp("graded") / "data")


def test_refresh_with_the_positive_aware_miner_against_brute_force(graded, tiny_model_dir, tmp_path):
    """Documents and (DANCE) queries: every candidate kept (depth and num cover everything), minus the excluded
    ones, minus those scoring at least the positive's score (max_relative 1.0), by a loop over the embeddings."""
    import json

    from test_relevance import N_DOCS, N_TRAIN, fit_with_refresh

    dm, refresh = fit_with_refresh(graded, tiny_model_dir, tmp_path, "positives", query_depth=N_TRAIN,
                                   miner=PositiveAwareMiner(max_relative=1.0))
    train = dm.split_rows["train"].tolist()
    gaps = []
    for q in train:
        s = refresh.q[q] @ refresh.d.T  # (N,) float64
        p = min(float(s[d]) for d in dm.positives[q])
        gaps += [abs(float(v) - p) for d, v in enumerate(s) if d not in dm.positives[q]]
        want = {d for d in range(N_DOCS) if d not in dm.positives[q] and s[d] < p}
        assert set(dm.negatives.candidates[q].tolist()) == want, q
    docs = sorted({int(d) for q in train for d in dm.positives[q]})
    for d in docs:
        s = {q: float(refresh.d[d] @ refresh.q[q]) for q in train}
        relevant = dm.relevant_queries(d) & set(train)
        p = min(s[q] for q in relevant)
        gaps += [abs(v - p) for q, v in s.items() if q not in relevant]
        want = {q for q in train if q not in dm.excluded_queries(d) and s[q] < p}
        assert set(dm.negatives.query_candidates[d].tolist()) == want, d
    assert min(gaps) > 1e-5  # no near-tie with a positive: float32 search scores and this loop agree
    stats = refresh.history[0]
    assert 0 < stats["margin_dropped"] < 1 and 0 < stats["queries_margin_dropped"] < 1
    record = json.loads((tmp_path / "neg" / "refreshes.jsonl").read_text().splitlines()[0])
    assert record["miner"] == {"class_path": "lit_dr.mining.miners.PositiveAwareMiner",
                               "init_args": {"max_relative": 1.0, "absolute_margin": None, "skip": 0}}
    assert record["margin_dropped"] == stats["margin_dropped"]
