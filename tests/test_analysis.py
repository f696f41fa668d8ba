"""The notebooks' arithmetic (`lit_dr.evaluation.analysis`): per-query nDCG against pytrec_eval, the rest against loops."""

import itertools
import math

import numpy as np
import pytest
import torch

from lit_dr.evaluation.analysis import (
    ndcg_per_query,
    per_query_differences,
    phase_names,
    projection_input,
    refresh_columns,
    sample_corpus,
    split_qrels,
    top1_distances,
)


# -- per-query nDCG ----------------------------------------------------------------------------------------
def random_run_and_qrels(seed: int, n_queries: int = 40, n_docs: int = 30):
    rng = np.random.default_rng(seed)
    qrels, run = {}, {}
    for q in range(n_queries):
        judged = rng.choice(n_docs, size=rng.integers(1, 8), replace=False)
        qrels[f"q{q}"] = {f"d{d}": int(rng.integers(0, 4)) for d in judged}  # grade 0: judged, not relevant
        if q % 7 == 3:
            continue  # not in the run: scores 0
        retrieved = rng.choice(n_docs, size=rng.integers(1, 25), replace=False)
        # Scores on a coarse grid: many ties, which trec_eval breaks by docid.
        run[f"q{q}"] = {f"d{d}": float(rng.integers(0, 5)) for d in retrieved}
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [10, 3])
def test_ndcg_per_query_matches_pytrec_eval(seed, k):
    import pytrec_eval
    run, qrels = random_run_and_qrels(seed)
    judged = {q: r for q, r in qrels.items() if any(g > 0 for g in r.values())}
    oracle = pytrec_eval.RelevanceEvaluator(judged, {f"ndcg_cut.{k}"}).evaluate(run)
    got = ndcg_per_query(run, qrels, k)
    assert set(got) == set(judged)  # queries without a relevant document are skipped
    assert any(q not in run for q in got)
    for q in judged:
        # torchmetrics (the one nDCG of lit_dr.evaluation.metrics) sums in float32: 1e-6, as retrieval_metrics.
        assert got[q] == pytest.approx(oracle.get(q, {}).get(f"ndcg_cut_{k}", 0.0), abs=1e-6), q


def test_ndcg_per_query_by_hand():
    qrels = {"a": {"x": 2, "y": 1, "z": 0}, "b": {"x": 0}}
    run = {"a": {"z": 3.0, "y": 2.0, "x": 2.0}}  # y and x tie: "y" > "x", so y ranks second
    ideal = 2 + 1 / math.log2(3)
    expected = (0 + 1 / math.log2(3) + 2 / math.log2(4)) / ideal
    assert ndcg_per_query(run, qrels) == {"a": pytest.approx(expected)}


def test_per_query_differences():
    a = {"q1": 0.5, "q2": 0.2, "q3": 0.7, "q4": 0.1}
    b = {"q1": 0.5, "q2": 0.9, "q3": 0.3, "q4": 0.4}
    cmp = per_query_differences(a, b)
    assert cmp.qids == ["q2", "q4", "q1", "q3"]
    assert cmp.diff == pytest.approx([0.7, 0.3, 0.0, -0.4])
    assert cmp.a.tolist() == [0.2, 0.1, 0.5, 0.7]
    assert cmp.counts() == {"wins": 2, "losses": 1, "ties": 1}
    with pytest.raises(ValueError, match="different queries"):
        per_query_differences(a, {**b, "q5": 1.0})


def test_randomization_p_value_matches_exact_enumeration():
    # Ten queries: all 2^10 sign flips enumerated give the exact two-sided p-value the sampled test estimates.
    rng = np.random.default_rng(1)
    a = {f"q{i}": float(x) for i, x in enumerate(rng.random(10))}
    b = {q: v + d for (q, v), d in zip(a.items(), (0.3, 0.2, 0.25, -0.05, 0.1, 0.15, 0.0, 0.2, -0.1, 0.3), strict=True)}
    cmp = per_query_differences(a, b)
    flips = np.array(list(itertools.product((-1.0, 1.0), repeat=10)))
    exact = float((np.abs(flips @ cmp.diff) >= abs(cmp.diff.sum()) - 1e-12).mean())
    assert exact < 0.05  # a clear gain: the test must see it
    assert cmp.p_value(samples=50_000) == pytest.approx(exact, abs=0.004)
    same = per_query_differences(a, {q: v + (0.1 if i % 2 else -0.1) for i, (q, v) in enumerate(a.items())})
    assert same.p_value() == pytest.approx(1.0, abs=1e-3)  # mean difference 0: every flip is as extreme


def test_split_qrels_carves_dev_as_the_data_module(tiny_beir, tiny_model_dir, cache_dir):
    from lit_dr import RetrievalDataModule
    from lit_dr.data.formats import read_qrels

    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir, negatives="none",
                             num_negatives=0, show_progress=False)
    dm.prepare_data()
    dm.setup()
    dev = split_qrels(tiny_beir, "dev")
    assert sorted(dev) == sorted(str(dm.queries.ids[r]) for r in dm.split_rows["dev"])
    assert 0 < len(dev) < 32
    assert split_qrels(tiny_beir, "train") == read_qrels(tiny_beir / "qrels" / "train.tsv")
    assert set(split_qrels(tiny_beir, "dev", seed=1)) != set(dev)
    with pytest.raises(FileNotFoundError, match="no qrels for split 'test'"):
        split_qrels(tiny_beir, "test")


# -- refresh records -----------------------------------------------------------------------------------------
def test_refresh_columns():
    records = [
        {"generation": 1, "step": 0, "positive_in_depth": 0.5, "time_encode_corpus_s": 2.0, "time_search_s": 1.0,
         "time_total_s": 3.0, "overlap_with_previous": 0.0, "digest": "aa"},
        {"generation": 2, "step": 10, "positive_in_depth": 0.6, "time_encode_corpus_s": 2.5, "time_search_s": 1.5,
         "time_mine_queries_s": 0.5, "time_total_s": 4.5, "overlap_with_previous": 0.3, "digest": "bb"},
        # A resumed run redoes generation 2 (reloading the table) and writes it again: the later record counts.
        {"generation": 2, "step": 10, "reused": 1.0, "overlap_with_previous": 0.4, "digest": "bb"},
        {"generation": 3, "step": 20, "positive_in_depth": 0.9, "time_encode_corpus_s": 2.0, "time_search_s": 1.0,
         "time_total_s": 3.0, "overlap_with_previous": 0.8, "digest": "cc"},
    ]
    cols = refresh_columns(records)
    assert "digest" not in cols
    assert cols["generation"].tolist() == [1, 2, 3]
    assert cols["step"].tolist() == [0, 10, 20]
    assert cols["overlap_with_previous"].tolist() == [0.0, 0.4, 0.8]  # the later record's value
    assert cols["positive_in_depth"].tolist() == [0.5, 0.6, 0.9]  # the mining's figures stay
    assert cols["reused"][1] == 1.0 and np.isnan(cols["reused"][[0, 2]]).all()
    assert np.isnan(cols["time_mine_queries_s"][[0, 2]]).all() and cols["time_mine_queries_s"][1] == 0.5
    assert phase_names(cols) == ["encode_corpus", "search", "mine_queries"]
    shuffled = refresh_columns([records[3], records[0], records[1]])  # out of order: sorted by generation
    assert shuffled["step"].tolist() == [0, 10, 20] and shuffled["overlap_with_previous"][1] == 0.3
    assert phase_names(refresh_columns(records[:1])) == ["encode_corpus", "search"]


# -- embedding space -----------------------------------------------------------------------------------------
def test_top1_distances_against_a_loop():
    gen = torch.Generator().manual_seed(0)
    queries, docs = torch.randn(13, 6, generator=gen), torch.randn(40, 6, generator=gen) * 3
    relevance = [{i: 1, i + 1: 0} for i in range(13)]
    relevance[4] = {}
    got = top1_distances(queries, docs, relevance, block=4)
    for i in range(13):
        best = max(range(40), key=lambda j: float(queries[i] @ docs[j]))  # by inner product, not cosine
        assert got.row[i] == best
        expected = float((queries[i] / queries[i].norm() - docs[best] / docs[best].norm()).norm())
        assert got.distance[i] == pytest.approx(expected, rel=1e-5)
        assert got.relevant[i] == (relevance[i].get(best, 0) > 0)
    assert not got.relevant.all()
    same = top1_distances(queries, docs, relevance)
    assert np.array_equal(same.row, got.row) and np.allclose(same.distance, got.distance)
    # Planted: each query is a scaled copy of its relevant document, the distance is 0 and it is found.
    unit = torch.nn.functional.normalize(docs, dim=-1)
    planted = top1_distances(unit[:13] * 5, unit, [{i: 1} for i in range(13)])
    assert planted.relevant.all() and np.allclose(planted.distance, 0, atol=1e-6)
    assert not top1_distances(queries, docs).relevant.any()


def test_sample_corpus_keeps_relevant_documents():
    relevance = [{3: 1, 7: 0}, {90: 2}, {3: 1, 50: 1}]
    rows, remapped = sample_corpus(relevance, corpus_size=100, max_docs=10, seed=0)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10 and (np.diff(rows) > 0).all()
    assert {3, 50, 90} <= set(rows.tolist())
    for rel, new in zip(relevance, remapped, strict=True):  # the same judgments, now by position in `rows`
        assert {int(rows[p]): g for p, g in new.items()} == {d: g for d, g in rel.items() if d in set(rows.tolist())}
    again, _ = sample_corpus(relevance, 100, 10, seed=0)
    other, _ = sample_corpus(relevance, 100, 10, seed=1)
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)
    small, _ = sample_corpus(relevance, 100, 2, seed=0)  # too small: the relevant ones still all there
    assert small.tolist() == [3, 50, 90]
    whole, same = sample_corpus(relevance, 100, None)
    assert np.array_equal(whole, np.arange(100)) and same == relevance


def test_projection_input():
    gen = torch.Generator().manual_seed(1)
    queries, docs = torch.randn(3, 5, generator=gen) * 4, torch.randn(6, 5, generator=gen)
    points, is_query, pairs = projection_input(queries, docs, [{2: 1, 4: 0}, {}, {0: 1, 5: 3}])
    assert points.shape == (9, 5) and np.allclose(np.linalg.norm(points, axis=1), 1, atol=1e-6)
    assert is_query.tolist() == [True] * 3 + [False] * 6
    assert pairs.tolist() == [[0, 5], [2, 3], [2, 8]]
    assert np.allclose(points[8], (docs[5] / docs[5].norm()).numpy(), atol=1e-6)
    assert projection_input(queries, docs, [{}, {}, {}])[2].shape == (0, 2)
