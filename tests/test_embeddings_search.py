"""Embedding files and search over them: shards against in-memory encoding, streamed search against brute force,
and the corpus encoded once per step within a fit."""

from __future__ import annotations

import faiss  # noqa: F401 (a dependency: a broken install fails here, never skips)
import lightning as L
import numpy as np
import pytest
import torch

from lit_dr import BM25Negatives, Encoder, RetrievalDataModule
from lit_dr.index.corpus_index import CorpusIndex
from lit_dr.index.embeddings import EmbeddingShards, token_balanced_bounds
from lit_dr.index.encoding import encode_shard, encode_store, encode_to_shards
from lit_dr.index.search import Processes, exact_search_stream, gather_rows
from lit_dr.training import NegativeRefresh


def test_token_balanced_bounds_split_the_work_evenly():
    lengths = np.array([100, 1, 1, 1, 1, 100, 1, 1, 1, 1] * 3)
    bounds = token_balanced_bounds(lengths, 3)
    assert bounds[0] == 0 and bounds[-1] == len(lengths) and (np.diff(bounds) >= 0).all()
    work = [lengths[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert max(work) - min(work) <= 100
    assert token_balanced_bounds(np.array([5, 5]), 4).tolist() == [0, 1, 1, 2, 2]  # more parts than rows


@pytest.fixture()
def tiny_corpus(tiny_beir, tiny_model_dir, cache_dir):
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir, negatives="none",
                             show_progress=False)
    dm.setup("fit")
    encoder = Encoder(tiny_model_dir).eval()
    return dm.corpus, lambda b: encoder(b.input_ids, b.attention_mask)


@pytest.mark.parametrize(("world_size", "window"), [(1, 65_536), (3, 65_536), (1, 7), (3, 5)])
def test_shards_hold_what_in_memory_encoding_gives(tiny_corpus, tmp_path, world_size, window, monkeypatch):
    monkeypatch.setattr("lit_dr.index.encoding.WRITE_WINDOW", window)  # rows written window by window, in file order
    store, encode = tiny_corpus
    want = encode_store(encode, store, batch_size=16, show_progress=False).numpy()  # (64, 32)
    for rank in range(world_size):  # the processes of a job, one after the other
        encode_shard(encode, store, tmp_path / "emb", dim=32, rank=rank, world_size=world_size, batch_size=16,
                     show_progress=False)
    shards = EmbeddingShards(tmp_path / "emb")
    assert len(shards.bounds) == world_size + 1 and shards.shape == (64, 32)
    np.testing.assert_allclose(np.asarray(shards), want, atol=1e-6)
    rows = np.array([63, 0, 17, 17, 40])
    np.testing.assert_allclose(shards.take(rows), want[rows], atol=1e-6)
    np.testing.assert_allclose(np.concatenate([b for _, b in shards.blocks(block_rows=5)]), want, atol=1e-6)
    assert [first for first, _ in shards.blocks(block_rows=1000)] == shards.bounds[:-1].tolist()


def test_float16_files_and_digest(tiny_corpus, tmp_path):
    store, encode = tiny_corpus
    a = encode_to_shards(encode, store, tmp_path / "a", dim=32, dtype="float16", show_progress=False)
    b = encode_to_shards(encode, store, tmp_path / "b", dim=32, show_progress=False)
    assert np.load(a.directory / "shard-00000-of-00001.npy", mmap_mode="r").dtype == np.float16
    assert a[:].dtype == np.float32
    np.testing.assert_allclose(a[:], b[:], atol=2e-3)
    assert a.digest() != b.digest() and b.digest() == EmbeddingShards(tmp_path / "b").digest()
    with pytest.raises(IndexError):
        b.take(np.array([64]))


def write_random(tmp_path, n: int, h: int, world_size: int, seed: int = 0) -> tuple[EmbeddingShards, np.ndarray]:
    from lit_dr.index.embeddings import finish_shard, open_shard_for_writing, shard_path, write_meta

    docs = np.random.default_rng(seed).standard_normal((n, h), dtype=np.float32)
    bounds = np.linspace(0, n, world_size + 1).astype(np.int64)
    for r in range(world_size):
        out, tmp = open_shard_for_writing(shard_path(tmp_path, r, world_size), int(bounds[r + 1] - bounds[r]), h,
                                          "float32")
        out[:] = docs[bounds[r] : bounds[r + 1]]
        finish_shard(out, tmp, shard_path(tmp_path, r, world_size))
    write_meta(tmp_path, bounds, h, "float32")
    return EmbeddingShards(tmp_path), docs


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_streamed_exact_search_equals_brute_force(tmp_path, backend):
    shards, docs = write_random(tmp_path, n=1000, h=16, world_size=3)
    queries = np.random.default_rng(1).standard_normal((37, 16), dtype=np.float32)
    want = torch.topk(torch.from_numpy(queries).double() @ torch.from_numpy(docs).double().T, 25)
    d, i = exact_search_stream(shards, queries, 25, backend, block_rows=128)  # 3 shards x several blocks
    np.testing.assert_array_equal(i, want.indices.numpy())
    np.testing.assert_allclose(d, want.values.numpy(), rtol=1e-5, atol=1e-5)
    d, i = exact_search_stream(shards, queries, 1200, backend, block_rows=128)  # k > N: padded
    assert (i[:, 1000:] == -1).all() and np.isneginf(d[:, 1000:]).all()
    assert (np.sort(i[:, :1000], axis=1) == np.arange(1000)).all()


def test_one_block_is_exactly_a_flat_index(tmp_path):
    from lit_dr.index.faiss_index import build_index, search

    shards, docs = write_random(tmp_path, n=500, h=16, world_size=1)
    queries = np.random.default_rng(2).standard_normal((20, 16), dtype=np.float32)
    d, i = exact_search_stream(shards, queries, 30)
    want_d, want_i = search(build_index(docs, "Flat"), queries, 30)
    assert np.array_equal(i, want_i) and np.array_equal(d, want_d)  # bit for bit: what the pre-shard code did


def test_approximate_index_is_built_from_the_files(tmp_path):
    shards, docs = write_random(tmp_path, n=1000, h=16, world_size=2)
    queries = np.random.default_rng(3).standard_normal((10, 16), dtype=np.float32)
    d, i = CorpusIndex.open(shards.directory).search(queries, 10, "IVF8,Flat", {"nprobe": 8}, share=False)  # every list: exact
    np.testing.assert_array_equal(i, exact_search_stream(shards, queries, 10)[1])


def test_gather_rows_concatenates_ranks_in_order():
    parts = [np.arange(6).reshape(3, 2), np.arange(10, 14).reshape(2, 2)]  # uneven shares

    def fake_all_gather(t):  # what rank 0 receives from a 2-process all_gather of equally padded tensors
        width = t.shape[0]
        return torch.stack([torch.from_numpy(np.resize(p, (width, *p.shape[1:])) if len(p) else p) if t.ndim > 1
                            else torch.tensor([len(p)]) for p in parts])

    procs = Processes(rank=0, world_size=2, all_gather=fake_all_gather)
    assert gather_rows(parts[0], procs).tolist() == np.concatenate(parts).tolist()


def test_corpus_is_encoded_once_per_step_within_a_fit(tiny_beir, tiny_model_dir, cache_dir, tmp_path, monkeypatch):
    """A refresh and a validation at the same step share one corpus encoding; a new step encodes anew, and only
    the newest embeddings stay on disk."""
    from lit_dr.index.corpus_index import CorpusIndex

    encodings = []
    original = CorpusIndex.embed

    def counting(self, tower, name, version=None):
        if name.startswith("corpus-") and not (version is not None and version == self.version):
            encodings.append(int(name.removeprefix("corpus-step")))
        return original(self, tower, name, version)

    monkeypatch.setattr(CorpusIndex, "embed", counting)
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir, negatives="none",
                             train_batch_size=4, num_negatives=1, show_progress=False,
                             embedding_dir=str(tmp_path / "emb"))
    model = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1,
                          optimizer=torch.optim.AdamW, run_dir=str(tmp_path / "runs"))
    refresh = NegativeRefresh(every_n_steps=6, depth=10, num_negatives=3, table_dir=str(tmp_path / "neg"))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[refresh], default_root_dir=str(tmp_path))
    trainer.fit(model, dm)  # 26 training queries / 4 = 6 steps per epoch; validation after each epoch
    assert [h["step"] for h in refresh.history] == [0, 6]
    assert encodings == [0, 6, 12]  # step 6: refresh and validation shared one encoding
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["corpus-step0000012"]


@pytest.mark.parametrize("resident", [False, True])  # True: the GPU path (matrix held on the device), on the CPU
def test_fixed_index_search_and_vectors(tmp_path, resident):
    from lit_dr.index.search import FixedIndex

    shards, docs = write_random(tmp_path, n=700, h=16, world_size=2)
    queries = np.random.default_rng(4).standard_normal((12, 16), dtype=np.float32)
    index = FixedIndex(shards, "Flat", resident=resident)
    assert (index.resident is not None) == resident
    d, i = index.search(queries, 15)
    want = torch.topk(torch.from_numpy(queries).double() @ torch.from_numpy(docs).double().T, 15)
    np.testing.assert_array_equal(i, want.indices.numpy())
    np.testing.assert_allclose(d, want.values.numpy(), rtol=1e-5, atol=1e-5)
    rows = np.array([699, 0, 350, 349])
    np.testing.assert_array_equal(index.vectors(rows, torch.device("cpu")).numpy(), docs[rows])
