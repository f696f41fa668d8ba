"""DANCE's negative queries: the refresh's pools against brute force, and every drawn negative query a training
query (never a dev or test query), topped up at random from the training split with one counted warning per table.

Data set of `test_relevance.py`: training queries q0..q11 (q_i relevant to d_i, judged non-relevant for
d_{(i+1) % 12} and d16..d31), dev q12, q13, test q14, q15.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_relevance import N_TRAIN, fit_with_refresh, make_dm, rows, write_graded

from lit_dr.data.sampling import NegativesTable

QUERY_DEPTH = 4


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    return write_graded(tmp_path_factory.mktemp("graded") / "data")


def excluded_query_ids(option: str, j: int) -> set[int]:
    """Training queries that may not be negative queries of d_j (j < 12): q_j, and with "judged" also q_{j-1}."""
    return {j} if option == "positives" else {j, (j - 1) % N_TRAIN}


def oracle_pools(refresh, dm, option: str) -> dict[int, set[int]]:
    """For each positive document d_j: its top QUERY_DEPTH training queries by inner product, by a plain loop,
    minus the queries it may not have as negatives."""
    train = dm.split_rows["train"].tolist()
    pools = {}
    for j in range(N_TRAIN):
        d = dm.corpus.row_of[f"d{j}"]
        scores = [float(refresh.d[d] @ refresh.q[q]) for q in train]
        order = sorted(range(len(train)), key=lambda i: -scores[i])
        gap = scores[order[QUERY_DEPTH - 1]] - scores[order[QUERY_DEPTH]]
        assert gap > 1e-5, f"d{j}: a near-tie at the cut makes the oracle ambiguous"
        top = {train[i] for i in order[:QUERY_DEPTH]}
        pools[d] = top - set(rows(dm, "q", excluded_query_ids(option, j)))
    return pools


@pytest.mark.parametrize("option", ["positives", "judged"])
def test_refresh_query_pools_match_brute_force_and_draws_stay_in_training(graded, tiny_model_dir, tmp_path, option):
    dm, refresh = fit_with_refresh(graded, tiny_model_dir, tmp_path, option, query_depth=QUERY_DEPTH)
    mined = dm.negatives.query_candidates
    expected = oracle_pools(refresh, dm, option)
    # The refresh keeps num_negative_queries = 12 >= every pool: the candidates are the whole pool.
    assert {d: set(mined[d].tolist()) for d in expected} == expected
    assert any(len(p) < QUERY_DEPTH for p in expected.values())  # the exclusion acted on some pool

    train = set(dm.split_rows["train"].tolist())
    query_rows = dm.split_rows["train"]
    # k <= pool: the draws are a subset of the pool.
    dm.hparams.num_negative_queries = 2
    batch = dm.train_batch(query_rows)
    drawn = batch_negative_queries(dm, batch, 2)
    for d, got in drawn:
        pool = expected[d]
        assert got <= pool if len(pool) >= 2 else pool <= got <= train, d
    # k = every training query the document may have: the top-up must fill from the training split, exactly.
    j_of = {dm.corpus.row_of[f"d{j}"]: j for j in range(N_TRAIN)}
    k = N_TRAIN - len(excluded_query_ids(option, 0))
    dm.hparams.num_negative_queries = k
    for d, got in batch_negative_queries(dm, dm.train_batch(query_rows), k):
        assert got == train - set(rows(dm, "q", excluded_query_ids(option, j_of[d]))), d


def batch_negative_queries(dm, batch, k: int) -> list[tuple[int, set[int]]]:
    """(positive document row, its k negative query rows) per query of the batch, read back from the tokens."""
    row_of_tokens = {}
    for r in range(len(dm.queries)):
        ids = dm.queries.batch(np.array([r])).input_ids[0]
        row_of_tokens[tuple(ids[ids != 0].tolist())] = r
    assert len(row_of_tokens) == len(dm.queries)  # no two queries tokenize alike: the read-back is exact
    ids = batch.negative_queries.input_ids  # (B * K, L)
    negatives = [row_of_tokens[tuple(t[t != 0].tolist())] for t in ids]
    g = batch.group_size
    out = []
    for i in range(batch.query_rows.shape[0]):
        mine = negatives[i * k:(i + 1) * k]
        assert len(set(mine)) == k  # distinct
        out.append((int(batch.doc_rows[i * g]), set(mine)))
    return out


def test_random_negative_queries_are_training_queries_with_one_counted_warning(graded, tiny_model_dir, cache_dir,
                                                                                 caplog):
    """No refresh mines queries: every negative query is drawn at random, from the training split only."""
    k = N_TRAIN - 1  # all training queries but the document's own
    dm = make_dm(graded, tiny_model_dir, cache_dir, negatives="none", num_negative_queries=k)
    train = set(dm.split_rows["train"].tolist())
    with caplog.at_level(logging.WARNING, logger="lit_dr.training.datamodule"):
        for epoch in range(2):
            dm.epoch = epoch
            batch = dm.train_batch(dm.split_rows["train"])
            for d, got in batch_negative_queries(dm, batch, k):
                assert got == train - dm.relevant_queries(d), d  # dev q12, q13 and test q14, q15 never
    warnings = [r.getMessage() for r in caplog.records if "negative queries" in r.getMessage()]
    assert len(warnings) == 1, warnings  # one per table, not one per batch
    assert "all 12 positive documents" in warnings[0] and "12 training queries" in warnings[0]

    # A table whose pools are short for some documents: one new warning, with the count.
    caplog.clear()
    d0, d1 = rows(dm, "d", [0, 1])
    pools = {d0: np.array(sorted(train - dm.relevant_queries(d0)), dtype=np.int64),  # full: 11
             d1: np.array(rows(dm, "q", [2, 3]), dtype=np.int64)}  # short: 2 of 11
    dm.set_negatives(NegativesTable({}, version=1, source="test table", query_candidates=pools))
    with caplog.at_level(logging.WARNING, logger="lit_dr.training.datamodule"):
        batches = [dm.train_batch(dm.split_rows["train"]) for _ in range(3)]
    warnings = [r.getMessage() for r in caplog.records if "negative queries" in r.getMessage()]
    assert len(warnings) == 1 and "11 of 12 positive documents" in warnings[0], warnings
    for d, got in batch_negative_queries(dm, batches[0], k):
        assert got <= train, d
        if d == d1:
            assert set(pools[d1].tolist()) <= got  # the short pool is used, then topped up


def test_top_up_from_an_array_population_draws_only_its_rows():
    from lit_dr.data.sampling import draw_rows

    population = np.array([3, 5, 8, 13, 21])
    rng = np.random.default_rng(0)
    got = draw_rows(rng, np.array([5]), 4, population, exclude={8})
    assert got[0] == 5 and set(got) == {3, 5, 13, 21}
    with pytest.raises(ValueError, match="cannot draw"):
        draw_rows(rng, None, 5, population, exclude={8})
    # An int population draws exactly as before (same generator calls): the SciFact digests do not move.
    a = draw_rows(np.random.default_rng(7), None, 3, 50, exclude={1, 2})
    b, taken = [], {1, 2}
    rng = np.random.default_rng(7)
    while len(b) < 3:
        r = int(rng.integers(50))
        if r not in taken:
            b.append(r)
            taken.add(r)
    assert a == b
