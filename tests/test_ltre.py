"""LTRe on the tiny BERT: the fixed index is encoded once per fit and never again, only the query tower learns,
retrieval is exact, a resumed run reuses the embeddings, and training improves on the warm start."""

from __future__ import annotations

from pathlib import Path

import faiss  # noqa: F401 (a dependency: a broken install fails here, never skips)
import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_dr import BM25Negatives, Encoder, LTRe, RetrievalDataModule
from lit_dr.index.embeddings import EmbeddingShards
from lit_dr.objectives.ltre import ranked_lists


def test_ranked_lists_append_unretrieved_positives_after_the_depth():
    ranked = np.array([[5, 3, 9, -1], [2, 4, 6, 8]])
    relevance = [{7: 1, 1: 0}, {4: 2, 0: 1}]
    lists = ranked_lists(ranked, relevance, depth=4)
    # Query 0 retrieved no positive: doc 7 comes after the list, ranked depth + 1. Query 1 found doc 4: nothing added.
    assert lists.rows.tolist() == [[5, 3, 9, 7], [2, 4, 6, 8]]
    assert lists.ranks.tolist() == [[1, 2, 3, 5], [1, 2, 3, 4]]
    assert lists.relevant.tolist() == [[False, False, False, True], [False, True, False, False]]
    always = ranked_lists(ranked, relevance, depth=4, append="always")
    assert always.rows[1].tolist() == [2, 4, 6, 8, 0] and always.ranks[1, 4] == 5
    assert always.rows[0].tolist() == [5, 3, 9, 7, -1] and not always.valid[0, 4]


def data(tiny_beir, tiny_model_dir, cache_dir, **kw) -> RetrievalDataModule:
    args = dict(tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4, num_negatives=0, negatives="none",
                show_progress=False)
    return RetrievalDataModule(str(tiny_beir), **{**args, **kw})


def trainer(tmp_path, **kw) -> L.Trainer:
    args = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, default_root_dir=str(tmp_path), deterministic=True)
    return L.Trainer(**{**args, **kw})


def adamw(lr):
    return lambda params: torch.optim.AdamW(params, lr=lr)


@pytest.fixture()
def warm_start(tiny_beir, tiny_model_dir, cache_dir, tmp_path) -> str:
    """A BM25-negative checkpoint after a few steps, as LTRe's papers warm-start."""
    L.seed_everything(0)
    model = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1, optimizer=adamw(3e-3))
    t = trainer(tmp_path / "warm", max_steps=6, limit_val_batches=0)
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir, num_negatives=1, negatives="bm25", bm25_depth=10))
    t.save_checkpoint(tmp_path / "warm.ckpt")
    return str(tmp_path / "warm.ckpt")


def ltre(tiny_model_dir, warm_start, tmp_path, **kw) -> LTRe:
    args = dict(encoder=Encoder(tiny_model_dir, normalize=True), init_checkpoint=warm_start, depth=20,
                temperature=0.1, optimizer=adamw(3e-3), run_dir=str(tmp_path / "runs"))
    return LTRe(**{**args, **kw})


def test_corpus_encoded_once_per_fit_and_validation_encodes_only_queries(tiny_beir, tiny_model_dir, cache_dir,
                                                                         tmp_path, warm_start, monkeypatch):
    from lit_dr.index.corpus_index import CorpusIndex

    encoded = []
    original = CorpusIndex.embed
    monkeypatch.setattr(CorpusIndex, "embed", lambda self, tower, name, version=None: encoded.append(name) or
                        original(self, tower, name, version))
    model = ltre(tiny_model_dir, warm_start, tmp_path)
    t = trainer(tmp_path, max_epochs=3)  # validation after every epoch
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir))
    t.validate(model, data(tiny_beir, tiny_model_dir, cache_dir), verbose=False)
    assert encoded == ["ltre-corpus"] and model.corpus_encodings == 1


def test_only_the_query_tower_learns(tiny_beir, tiny_model_dir, cache_dir, tmp_path, warm_start):
    doc_tower = Encoder(tiny_model_dir, normalize=True)
    model = ltre(tiny_model_dir, None, tmp_path, doc_encoder=doc_tower)
    before = {k: v.clone() for k, v in model.doc_encoder.state_dict().items()}
    query_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    t = trainer(tmp_path, max_steps=3, limit_val_batches=0)
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir))
    optimized = {id(p) for group in t.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.encoder.parameters()}  # no optimizer slot for the document tower
    assert all(p.grad is None and not p.requires_grad for p in model.doc_encoder.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.doc_encoder.state_dict().items())
    assert any(not torch.equal(query_before[k], v) for k, v in model.encoder.state_dict().items())


def test_shared_warm_start_becomes_the_query_tower(tiny_beir, tiny_model_dir, cache_dir, tmp_path, warm_start):
    model = ltre(tiny_model_dir, warm_start, tmp_path)
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir))
    # The document tower is the warm start's, frozen, kept in the module (and its checkpoints).
    assert model.hparams.doc_encoder is None and not any(p.requires_grad for p in model.doc_encoder.parameters())
    optimized = {id(p) for group in t.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.encoder.parameters()}
    # The index holds what the warm start's tower gave, not what the trained tower gives now.
    warm = BM25Negatives.load_from_checkpoint(warm_start).eval()
    dm = t.datamodule
    batch = dm.corpus.batch(np.arange(5))
    with torch.no_grad():
        want = warm.encode_docs(batch).numpy()
    np.testing.assert_allclose(model.fixed_index().embeddings.take(np.arange(5)), want, atol=1e-5)
    for name, value in warm.encoder.state_dict().items():
        torch.testing.assert_close(model.doc_encoder.state_dict()[name], value, msg=name)


def test_retrieval_matches_brute_force(tiny_beir, tiny_model_dir, cache_dir, tmp_path, warm_start):
    model = ltre(tiny_model_dir, warm_start, tmp_path)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir))
    queries = np.random.default_rng(0).standard_normal((9, 32)).astype(np.float32)
    docs = np.asarray(model.fixed_index().embeddings)
    want = torch.topk(torch.from_numpy(queries).double() @ torch.from_numpy(docs).double().T, 20)
    scores, rows = model.fixed_index().search_local(queries, 20)
    np.testing.assert_array_equal(rows, want.indices.numpy())
    np.testing.assert_allclose(scores, want.values.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.fixed_index().vectors(rows[0], torch.device("cpu")).numpy(), docs[rows[0]])


def test_resume_reuses_the_embeddings_and_a_changed_file_is_an_error(tiny_beir, tiny_model_dir, cache_dir, tmp_path,
                                                                    warm_start):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = ltre(tiny_model_dir, warm_start, tmp_path)
    trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[ckpt]).fit(
        first, data(tiny_beir, tiny_model_dir, cache_dir))
    assert first.corpus_encodings == 1
    path = next((tmp_path / "ckpt").glob("*.ckpt"))

    resumed = ltre(tiny_model_dir, warm_start, tmp_path / "second")  # another run directory: nothing to find there
    t = trainer(tmp_path / "second", max_steps=4, limit_val_batches=0)
    t.fit(resumed, data(tiny_beir, tiny_model_dir, cache_dir), ckpt_path=str(path))
    assert resumed.global_step == 4 and resumed.corpus_encodings == 0
    assert resumed.index_source == first.index_source

    shard = next(Path(first.index_source["directory"]).glob("shard-*.npy"))
    array = np.load(shard, mmap_mode="r+")
    array[0, 0] += 1.0
    array.flush()
    again = ltre(tiny_model_dir, warm_start, tmp_path / "third")
    with pytest.raises(ValueError, match="changed since the checkpoint"):
        trainer(tmp_path / "third", max_steps=4, limit_val_batches=0).fit(
            again, data(tiny_beir, tiny_model_dir, cache_dir), ckpt_path=str(path))


class TrainingQueriesAsDev(RetrievalDataModule):
    def setup(self, stage=None):
        super().setup(stage)
        self.split_rows["dev"] = self.split_rows["train"]


def test_ltre_learns_to_rank_its_training_queries(tiny_beir, tiny_model_dir, cache_dir, tmp_path, warm_start):
    """The objective works: retrieval of the training queries improves well beyond the warm start. (On the tiny
    set's 6 dev queries the query tower alone over-fits and dev nDCG@10 drops; whether LTRe improves held-out
    retrieval is measured on SciFact by benchmarks/ltre_vs_ance.py.)"""
    L.seed_everything(0)
    model = ltre(tiny_model_dir, warm_start, tmp_path, optimizer=adamw(1e-3))
    t = trainer(tmp_path, max_epochs=8)
    dm = TrainingQueriesAsDev(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4,
                              num_negatives=0, negatives="none", show_progress=False)
    before = t.validate(model, dm, verbose=False)[0]["val/ndcg@10"]
    t.fit(model, dm)
    after = t.validate(model, dm, verbose=False)[0]["val/ndcg@10"]
    assert model.corpus_encodings == 1  # the validation before the fit encoded the index the fit then used
    assert after > before + 0.1, (before, after)


def test_killed_fit_resumes_without_re_encoding(tmp_path, tiny_beir, tiny_model_dir, cache_dir, warm_start):
    import yaml
    from test_refresh import kill_at_marker, lit_dr

    marker, ckpts, emb = tmp_path / "paused", tmp_path / "ckpt", tmp_path / "emb"
    config = tmp_path / "fit.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {"class_path": "lit_dr.LTRe", "init_args": {
            "encoder": {"class_path": "lit_dr.Encoder",
                        "init_args": {"model_name_or_path": tiny_model_dir, "normalize": True}},
            "init_checkpoint": warm_start, "depth": 20, "temperature": 0.1,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}}},
        "data": {"dataset": str(tiny_beir), "cache_dir": cache_dir, "train_batch_size": 4, "num_negatives": 0,
                 "negatives": "none", "show_progress": False, "embedding_dir": str(emb)},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 8, "limit_val_batches": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "logger": False,
                    "default_root_dir": str(tmp_path), "callbacks": [
                        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
                            "dirpath": str(ckpts), "every_n_train_steps": 2, "save_top_k": -1, "filename": "s{step}",
                            "auto_insert_metric_name": False}},
                        {"class_path": "refresh_probes.PauseAtStep", "init_args": {"step": 5, "marker": str(marker)}}]},
    }))
    kill_at_marker(lit_dr("fit", "--config", str(config), wait=False), marker, "step 5")
    shard = emb / "ltre-corpus" / "shard-00000-of-00001.npy"
    written = shard.stat()
    assert sorted(p.name for p in ckpts.iterdir()) == ["s2.ckpt", "s4.ckpt"]

    lit_dr("fit", "--config", str(config), "--ckpt_path", str(ckpts / "s4.ckpt"), env={"NO_PAUSE": "1"})
    assert (shard.stat().st_ino, shard.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not rewritten
    final, resumed_from = (torch.load(ckpts / name, map_location="cpu", weights_only=True)
                           for name in ("s8.ckpt", "s4.ckpt"))
    assert final["global_step"] == 8
    assert final["ltre_index_source"] == resumed_from["ltre_index_source"]
    assert final["ltre_index_source"]["directory"] == str((emb / "ltre-corpus").resolve())


def test_the_fixed_index_is_the_warm_starts_last_embeddings_when_they_match(tiny_beir, tiny_model_dir, cache_dir,
                                                                          tmp_path, monkeypatch, caplog):
    """Command 1's second stage: the BM25-negative stage evaluated at its last step, so it has just encoded the corpus
    with the warm start's weights (2 minutes of CPU). LTRe adopts a copy of those embeddings instead of encoding
    again, and nothing changes: a fit that had to encode them (the files gone) gets the same matrix, bit for bit,
    and the same dev metrics. A record that differs in one field (here the batch size) means encoding."""
    from lit_dr.index.corpus_index import CorpusIndex

    encoded = []
    original = CorpusIndex.embed
    monkeypatch.setattr(CorpusIndex, "embed", lambda self, tower, name, version=None: encoded.append(name) or
                        original(self, tower, name, version))
    stage1 = tmp_path / "stage1"
    L.seed_everything(0)
    model = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1, optimizer=adamw(3e-3),
                          run_dir=str(stage1 / "runs"))
    t = trainer(stage1, max_steps=4, callbacks=[ModelCheckpoint(dirpath=stage1 / "checkpoints", filename="best")])
    t.fit(model, data(tiny_beir, tiny_model_dir, cache_dir, num_negatives=1, negatives="bm25", bm25_depth=10,
                      embedding_dir=str(stage1 / "embeddings")))
    step = t.global_step
    assert encoded == [f"corpus-step{step:07d}"] and (stage1 / "embeddings" / encoded[0] / "source.json").is_file()
    warm = str(stage1 / "checkpoints" / "best.ckpt")

    def ltre_fit(name: str, **data_kw) -> tuple[LTRe, L.Trainer]:
        encoded.clear()
        L.seed_everything(0)
        module = ltre(tiny_model_dir, warm, tmp_path / name)
        fit = trainer(tmp_path / name)
        fit.fit(module, data(tiny_beir, tiny_model_dir, cache_dir, embedding_dir=str(tmp_path / name / "emb"),
                             **data_kw))
        return module, fit

    with caplog.at_level("INFO", logger="lit_dr"):
        reused, fit_reused = ltre_fit("reused")
    assert encoded == [] and reused.corpus_encodings == 0 and "not encoded again" in caplog.text
    fixed = np.asarray(reused.data.corpus_index.embeddings)
    assert reused.index_source["directory"] == str((tmp_path / "reused" / "emb" / "ltre-corpus").resolve())

    import shutil
    shutil.rmtree(stage1 / "embeddings")  # the run's own copy stands alone
    assert np.array_equal(np.asarray(EmbeddingShards(tmp_path / "reused" / "emb" / "ltre-corpus")), fixed)
    encoding, fit_encoding = ltre_fit("encoding")
    assert encoded == ["ltre-corpus"] and encoding.corpus_encodings == 1
    assert np.array_equal(np.asarray(encoding.data.corpus_index.embeddings), fixed)
    assert {k: float(v) for k, v in fit_encoding.callback_metrics.items() if k.startswith("val/")} == \
        {k: float(v) for k, v in fit_reused.callback_metrics.items() if k.startswith("val/")}

    caplog.clear()
    with caplog.at_level("INFO", logger="lit_dr"):
        t2 = trainer(stage1, max_steps=4, callbacks=[ModelCheckpoint(dirpath=stage1 / "checkpoints", filename="b2")])
        L.seed_everything(0)
        t2.fit(BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1, optimizer=adamw(3e-3),
                             run_dir=str(stage1 / "runs")),
               data(tiny_beir, tiny_model_dir, cache_dir, num_negatives=1, negatives="bm25", bm25_depth=10,
                    embedding_dir=str(stage1 / "embeddings")))
        warm = str(stage1 / "checkpoints" / "b2.ckpt")
        _, _ = ltre_fit("other-batch", eval_batch_size=3)
    assert encoded == ["ltre-corpus"] and "batch_size differ" in caplog.text
