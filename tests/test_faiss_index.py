"""FAISS helpers against exact brute force (torch.topk)."""

from __future__ import annotations

import faiss  # a dependency: a broken install fails here, never skips
import numpy as np
import pytest
import torch

from lit_dr.index.faiss_index import build_index, exact_search, search, to_gpu


def _data(n: int = 1000, q: int = 50, h: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, h), dtype=np.float32), rng.standard_normal((q, h), dtype=np.float32)


def _topk_oracle(doc: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sim = torch.from_numpy(queries).double() @ torch.from_numpy(doc).double().T
    top = sim.topk(k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def test_exact_search_matches_topk_and_pads() -> None:
    doc, queries = _data(n=300, q=37)
    want_d, want_i = _topk_oracle(doc, queries, 10)
    d, i = exact_search(torch.from_numpy(doc), torch.from_numpy(queries), k=10, batch_size=8)
    np.testing.assert_array_equal(i.numpy(), want_i)
    np.testing.assert_allclose(d.numpy(), want_d, rtol=1e-5, atol=1e-4)

    d, i = exact_search(torch.from_numpy(doc[:5]), torch.from_numpy(queries), k=8)
    assert (i[:, 5:] == -1).all() and torch.isneginf(d[:, 5:]).all()
    assert sorted(i[0, :5].tolist()) == list(range(5))


def test_flat_equals_exact() -> None:
    doc, queries = _data()
    index = build_index(doc, "Flat")
    d, i = search(index, queries, k=20, batch_size=16)  # several blocks
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == i.shape == (50, 20)
    want_d, want_i = _topk_oracle(doc, queries, 20)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(d, want_d, rtol=1e-5, atol=1e-4)
    ed, ei = exact_search(torch.from_numpy(doc), torch.from_numpy(queries), k=20)
    np.testing.assert_array_equal(i, ei.numpy())


def test_non_contiguous_float64_input() -> None:
    doc, queries = _data(n=200, q=10)
    doc64 = np.asfortranarray(doc.astype(np.float64))
    index = build_index(doc64, "Flat")
    _, i = search(index, np.asfortranarray(queries.astype(np.float64)), k=5)
    np.testing.assert_array_equal(i, _topk_oracle(doc, queries, 5)[1])


def test_ivf_probing_all_lists_is_exact() -> None:
    doc, queries = _data()
    index = build_index(doc, "IVF16,Flat", train_sample=500, seed=1)
    assert index.ntotal == len(doc)
    d, i = search(index, queries, k=10, params={"nprobe": 16})
    want_d, want_i = _topk_oracle(doc, queries, 10)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(d, want_d, rtol=1e-5, atol=1e-4)


def test_ivf_one_probe_is_approximate() -> None:
    # Guards the test above: with nprobe=1 the same index must miss something, so nprobe really was applied.
    doc, queries = _data()
    index = build_index(doc, "IVF16,Flat", train_sample=500, seed=1)
    _, i = search(index, queries, k=10, params={"nprobe": 1})
    assert (i != _topk_oracle(doc, queries, 10)[1]).any()


def test_hnsw_recall() -> None:
    doc, queries = _data(n=2000, q=100)
    index = build_index(doc, "HNSW32")
    _, i = search(index, queries, k=10, params={"efSearch": 128})
    want = _topk_oracle(doc, queries, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i.tolist(), want.tolist(), strict=True)])
    assert recall > 0.9


def test_ivf_pq_trains_and_returns_valid_ids() -> None:
    # 4-bit codes (16 centroids per sub-quantizer): same code path as "IVF16,PQ4", whose 256-centroid
    # PQ training takes ~5 s here.
    doc, queries = _data(n=2000)
    index = build_index(doc, "IVF16,PQ4x4", train_sample=1000)
    assert index.is_trained and index.ntotal == 2000
    d, i = search(index, queries, k=10, params={"nprobe": 4})
    assert ((i >= 0) & (i < 2000)).all()
    assert (np.diff(d, axis=1) <= 1e-6).all()  # best first


def test_l2_metric() -> None:
    doc, queries = _data(n=500)
    index = build_index(doc, "Flat", metric="l2")
    d, i = search(index, queries, k=10)
    dist = ((queries[:, None, :].astype(np.float64) - doc[None, :, :]) ** 2).sum(-1)  # (Q, N)
    want_i = np.argsort(dist, axis=1)[:, :10]
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(d, np.take_along_axis(dist, want_i, 1), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("metric", "worst"), [("ip", -np.inf), ("l2", np.inf)])
def test_k_larger_than_ntotal_is_padded(metric: str, worst: float) -> None:
    doc, queries = _data(n=7, q=4)
    d, i = search(build_index(doc, "Flat", metric=metric), queries, k=12)
    assert d.shape == i.shape == (4, 12)
    assert (i[:, 7:] == -1).all() and (d[:, 7:] == worst).all()
    assert np.isfinite(d[:, :7]).all() and (np.sort(i[:, :7], axis=1) == np.arange(7)).all()


def test_bad_factory_string() -> None:
    doc, _ = _data(n=10)
    with pytest.raises(ValueError, match="NotAnIndex"):
        build_index(doc, "NotAnIndex,42")


def test_bad_search_param() -> None:
    doc, queries = _data(n=10)
    with pytest.raises(ValueError, match="nosuchparam"):
        search(build_index(doc, "Flat"), queries, k=1, params={"nosuchparam": 3})


def test_gpu_index_without_gpu_fails_loudly() -> None:

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is available")
    doc, _ = _data(n=10)
    with pytest.raises(RuntimeError, match="GPU"):
        to_gpu(build_index(doc, "Flat"), 0)
