"""FAISS search parameters reach every index that is searched (evaluation, refresh, DANCE's query index, LTRe's
fixed index, `lit-dr index/search`), GPU placement decisions, the short-result warning and float32 ranking under
bf16 autocast.

The corpora are built so that an IVF probed once differs from exact search: with nlist lists and nprobe 1 a query
sees about 1 / nlist of the corpus, so its top k (k = the whole corpus) comes back short; nprobe = nlist probes
every list and returns exactly what exact search returns.
"""

import json
import logging

import faiss
import lightning as L
import numpy as np
import pytest
import torch

import lit_dr.index.faiss_index as fi  # its new names read per test: each test fails alone on the code before them
from lit_dr import DANCE, BM25Negatives, Encoder, RetrievalDataModule
from lit_dr.commands.inference import index_corpus, search_index
from lit_dr.evaluation.metrics import read_trec_run
from lit_dr.index.corpus_index import CorpusIndex
from lit_dr.index.embeddings import (
    EmbeddingShards,
    finish_shard,
    open_shard_for_writing,
    shard_path,
    write_meta,
)
from lit_dr.index.search import FixedIndex, exact_search_stream, search_backend
from lit_dr.training import NegativeRefresh

TRAINER = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
               accelerator="cpu")


def shards_of(tmp_path, n=400, h=16, seed=0) -> tuple[EmbeddingShards, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((n + 12, h)).astype(np.float32)
    out, tmp = open_shard_for_writing(shard_path(tmp_path, 0, 1), n, h, "float32")
    out[:] = x[:n]
    finish_shard(out, tmp, shard_path(tmp_path, 0, 1))
    write_meta(tmp_path, np.array([0, n]), h, "float32")
    return EmbeddingShards(tmp_path), x[n:]  # (N, H) on disk, (12, H) queries


# -- GPU placement: pure decisions, no GPU needed -------------------------------------------------------------
@pytest.mark.parametrize(("factory", "supported"), [
    ("Flat", True), ("IVF4096,Flat", True), ("IVF4096,PQ64", True), ("IVF1024,SQ8", True), ("OPQ64,IVF256,PQ64", True),
    ("PCA128,IVF64,Flat", True), ("HNSW32", False), ("HNSW32,Flat", False), ("IVF4096_HNSW32,Flat", False),
    ("IVF256,PQ64x4fs", False), ("IVF256,PQ7", False), ("IVF256,Flat,RFlat", False), ("LSH", False), ("PQ16", False),
])
def test_gpu_supported(factory, supported):
    assert fi.gpu_supported(factory) is supported


def test_search_backend_keeps_unsupported_indexes_on_the_cpu(monkeypatch, caplog):
    import lit_dr.index.search

    class GpuFaiss:  # a FAISS with a GPU build, as far as `search_backend` can tell
        StandardGpuResources = object

    monkeypatch.setattr(lit_dr.index.search, "import_faiss", lambda: GpuFaiss)
    monkeypatch.setattr(lit_dr.index.search, "_warned", set())
    cuda = torch.device("cuda", 0)
    assert search_backend("IVF64,PQ64", cuda) == "faiss-gpu"
    assert search_backend("Flat", cuda) == "torch"
    with caplog.at_level(logging.WARNING, logger="lit_dr.index.search"):
        assert search_backend("HNSW32", cuda) == "faiss"
        assert search_backend("HNSW32", cuda) == "faiss"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "'HNSW32'" in messages[0] and "does not implement" in messages[0]
    assert search_backend("HNSW32", torch.device("cpu")) == "faiss"


@pytest.mark.parametrize(("factory", "float16"), [("IVF4,PQ64", True), ("IVF4,PQ16", False), ("IVF4,Flat", False)])
def test_to_gpu_uses_float16_lookup_tables_for_ivf_pq64(monkeypatch, factory, float16):
    calls = []

    class Options:
        useFloat16 = False

    class FakeGpuFaiss:  # the real FAISS's index inspection, a fake GPU cloner
        StandardGpuResources, GpuClonerOptions = object, Options
        IndexIVFPQ, try_extract_index_ivf = faiss.IndexIVFPQ, staticmethod(faiss.try_extract_index_ivf)
        downcast_index = staticmethod(faiss.downcast_index)

        @staticmethod
        def get_num_gpus():
            return 1

        @staticmethod
        def index_cpu_to_gpu(res, device, index, options=None):
            calls.append(options)
            return index

    monkeypatch.setattr(fi, "import_faiss", lambda: FakeGpuFaiss)
    monkeypatch.setattr(fi, "_GPU_RESOURCES", {})
    fi.to_gpu(faiss.index_factory(128, factory, faiss.METRIC_INNER_PRODUCT), 0)
    assert (calls[0] is not None and calls[0].useFloat16) is float16


# -- search parameters: validation, the CPU index, the warning ------------------------------------------------
def test_search_params_are_checked_early_naming_the_factory(tiny_model_dir):
    with pytest.raises(ValueError, match="'HNSW32' has no search parameter 'nprobe'"):
        BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir), index_factory="HNSW32", search_params={"nprobe": 8})
    with pytest.raises(ValueError, match="'Flat' has no search parameter"):
        NegativeRefresh(index_factory="Flat", search_params={"nprobe": 8})
    with pytest.raises(ValueError, match="'IVF64,Flat' has no search parameter 'efSearch'"):
        NegativeRefresh(index_factory="IVF64,Flat", search_params={"efSearch": 8})
    NegativeRefresh(index_factory="IVF4096,PQ64", search_params={"nprobe": 64})  # fine: nothing is built
    NegativeRefresh(index_factory="HNSW32", search_params={"efSearch": 128})


def test_fixed_index_sets_nprobe_on_the_cpu_index(tmp_path):
    shards, queries = shards_of(tmp_path)
    index = FixedIndex(shards, "IVF8,Flat", params={"nprobe": 8})
    assert faiss.extract_index_ivf(index.index).nprobe == 8
    exact = exact_search_stream(shards, queries, 50)
    np.testing.assert_array_equal(index.search(queries, 50)[1], exact[1])
    assert faiss.extract_index_ivf(FixedIndex(shards, "IVF8,Flat").index).nprobe == 1  # FAISS's default


def test_short_results_are_counted_in_one_warning(tmp_path, caplog):
    shards, queries = shards_of(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lit_dr.index.search"):
        _, rows = CorpusIndex.open(shards.directory).search(queries, 400, "IVF8,Flat", {"nprobe": 1}, share=False)
    filled = (rows >= 0).sum(1)
    assert (filled < 400).all()  # one list of 8: about 50 of 400 documents
    expected = f"12 of 12 queries got fewer than k=400 results (mean {filled.mean():.1f}); raise nprobe/efSearch"
    assert [r.getMessage() for r in caplog.records] == [f"IVF8,Flat search: {expected}"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lit_dr.index.search"):
        CorpusIndex.open(shards.directory).search(queries, 400, "IVF8,Flat", {"nprobe": 8}, share=False)
        CorpusIndex.open(shards.directory).search(queries, 400, "Flat", share=False)
    assert not caplog.records


def test_fit_nlist_caps_ivf_lists_for_small_query_sets():
    assert fi.fit_nlist("IVF4096,Flat", 1000) == "IVF25,Flat"
    assert fi.fit_nlist("OPQ16,IVF64,PQ16", 20) == "OPQ16,IVF1,PQ16"
    assert fi.fit_nlist("IVF16,Flat", 1000) == "IVF16,Flat"
    assert fi.fit_nlist("HNSW32", 10) == "HNSW32"


# -- float32 ranking under bf16 autocast ------------------------------------------------------------------------
def test_search_under_bf16_autocast_ranks_in_float32(tmp_path):
    shards, queries = shards_of(tmp_path, n=300, h=32)
    resident = FixedIndex(shards, "Flat", resident=True)  # LTRe's path on a GPU
    doc, q = torch.from_numpy(np.asarray(shards)), torch.from_numpy(queries)
    expected = [resident.search(queries, 200), exact_search_stream(shards, queries, 200, "torch"),
                tuple(t.numpy() for t in fi.exact_search(doc, q, 200))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = [resident.search(queries, 200), exact_search_stream(shards, queries, 200, "torch"),
               tuple(t.numpy() for t in fi.exact_search(doc, q, 200))]
    for (d, i), (ed, ei) in zip(got, expected, strict=True):
        assert d.dtype == np.float32
        np.testing.assert_array_equal(i, ei)
        np.testing.assert_array_equal(d, ed)
    assert len(np.unique(expected[0][0][0])) == 200  # distinct float32 scores: a bf16 ranking ties them


# -- evaluation, refresh, DANCE's query index and `lit-dr index/search` with an IVF --------------------------
def evaluate(tiny_beir, tiny_model_dir, tmp_path, name, **options):
    L.seed_everything(0)
    model = BM25Negatives(encoder=Encoder(tiny_model_dir, projection_dim=16, normalize=True),
                          run_dir=str(tmp_path / name), **options)
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, negatives="none", show_progress=False)
    L.Trainer(default_root_dir=str(tmp_path), **TRAINER).validate(model, dm, verbose=False)
    return read_trec_run(tmp_path / name / "dev-step0000000.trec"), (tmp_path / name / "evaluations.jsonl")


def test_evaluation_searches_the_ivf_with_its_search_params(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    exact, _ = evaluate(tiny_beir, tiny_model_dir, tmp_path, "flat")
    every_list, record = evaluate(tiny_beir, tiny_model_dir, tmp_path, "nprobe4", index_factory="IVF4,Flat",
                                  search_params={"nprobe": 4})
    one_list, _ = evaluate(tiny_beir, tiny_model_dir, tmp_path, "nprobe1", index_factory="IVF4,Flat",
                           search_params={"nprobe": 1})
    assert {q: list(d) for q, d in every_list.items()} == {q: list(d) for q, d in exact.items()}
    assert all(len(d) == 64 for d in exact.values()) and all(len(d) < 64 for d in one_list.values())
    line = json.loads(record.read_text().splitlines()[-1])
    assert line["index_factory"] == "IVF4,Flat" and line["search_params"] == {"nprobe": 4}


@pytest.mark.parametrize("nprobe", [1, 4])
def test_refresh_and_dance_query_index_use_the_refresh_factory_and_params(tiny_beir, tiny_model_dir, cache_dir,
                                                                          tmp_path, nprobe, monkeypatch):
    L.seed_everything(0)
    model = DANCE(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, projection_dim=16, normalize=True),
                  run_dir=str(tmp_path / "runs"))
    calls = []
    search = CorpusIndex.search

    def spy(self, queries, k, factory="Flat", params=None, share=True, resident=False):
        d, i = search(self, queries, k, factory, params, share, resident)
        calls.append((factory, params, k, i, search(self, queries, k, "Flat", None, share, resident)[1]))
        return d, i

    monkeypatch.setattr(CorpusIndex, "search", spy)
    refresh = NegativeRefresh(every_n_steps=100, depth=64, num_negatives=4, index_factory="IVF4,Flat",
                              search_params={"nprobe": nprobe}, mine_queries=True, query_depth=16,
                              table_dir=str(tmp_path / "neg"))
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, negatives="none", train_batch_size=4,
                             show_progress=False)
    L.Trainer(max_steps=1, limit_val_batches=0, callbacks=[refresh], default_root_dir=str(tmp_path),
              **TRAINER).fit(model, dm)
    (corpus_factory, corpus_params, _, ranked, exact), (query_factory, query_params, k, near, near_exact) = calls
    assert corpus_factory == query_factory == "IVF4,Flat" and corpus_params == query_params == {"nprobe": nprobe}
    assert k == 16  # the DANCE query index searches the training queries
    if nprobe == 4:  # every list probed: exact search
        np.testing.assert_array_equal(ranked, exact)
        np.testing.assert_array_equal(near, near_exact)
    else:
        assert (ranked < 0).any() and not np.array_equal(ranked, exact)
    record = json.loads((tmp_path / "neg" / "refreshes.jsonl").read_text().splitlines()[0])
    assert record["index_factory"] == "IVF4,Flat" and record["search_params"] == {"nprobe": nprobe}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_beir, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("ckpt")
    L.seed_everything(0)
    model = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, projection_dim=16, normalize=True))
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, negatives="none", cache_dir=str(tmp / "cache"),
                             show_progress=False)
    trainer = L.Trainer(max_steps=0, default_root_dir=str(tmp), **TRAINER)
    trainer.validate(model, dm, verbose=False)
    trainer.save_checkpoint(tmp / "m.ckpt")
    return tmp / "m.ckpt"


def test_lit_dr_index_and_search_apply_search_params(checkpoint, tiny_beir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LIT_DR_CACHE", str(tmp_path / "token-cache"))
    index_corpus(checkpoint, tiny_beir, tmp_path / "flat", show_progress=False)
    assert not list((tmp_path / "flat").rglob("*.faiss"))  # exact search streams over the shards
    index_corpus(checkpoint, tiny_beir, tmp_path / "ivf", "IVF4,Flat", show_progress=False,
                 search_params={"nprobe": 4})
    assert json.loads((tmp_path / "ivf" / "index.json").read_text())["search_params"] == {"nprobe": 4}
    runs = {}
    for name, index, params in (("flat", "flat", None), ("recorded", "ivf", None), ("one", "ivf", {"nprobe": 1})):
        with caplog.at_level(logging.WARNING, logger="lit_dr.index.search"):
            search_index(tmp_path / index, tiny_beir, tmp_path / f"{name}.trec", search_params=params,
                         show_progress=False)
        runs[name] = {q: list(d) for q, d in read_trec_run(tmp_path / f"{name}.trec").items()}
    assert runs["recorded"] == runs["flat"]  # the manifest's nprobe 4 of 4 lists: exact
    assert all(len(d) < 64 for d in runs["one"].values())  # --search_params overrides it
    assert any("32 of 32 queries got fewer than k=64 results" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="'IVF4,Flat' has no search parameter 'efSearch'"):
        search_index(tmp_path / "ivf", tiny_beir, tmp_path / "x.trec", search_params={"efSearch": 8},
                     show_progress=False)
