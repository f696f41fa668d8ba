"""Export: sentence-transformers and transformers load what `lit-dr export` writes and embed as lit_dr does; the
model card says what was trained; checkpoints load as the class that was trained; weights load in float32."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import sentence_transformers as st
import torch
import yaml

from lit_dr import BiEncoderModule, BM25Negatives, Encoder, RetrievalDataModule, SamToNe
from lit_dr.commands.cli import main, run
from lit_dr.commands.export import export_checkpoint
from lit_dr.data.formats import iter_texts
from lit_dr.index.encoding import encode_store

QUERY_LEN, DOC_LEN = 4, 12  # shorter than the synthetic texts, so truncation at each side's own length matters


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_beir, tiny_model_dir):
    """A CLI fit of the tiny BERT with a projection and normalisation: (checkpoint, its fit's dev nDCG@10)."""
    root = tmp_path_factory.mktemp("fit")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    mp.setenv("LIT_DR_CACHE", str(root / "cache"))
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {"class_path": "lit_dr.BM25Negatives", "init_args": {
            "encoder": {"class_path": "lit_dr.Encoder", "init_args": {
                "model_name_or_path": tiny_model_dir, "projection_dim": 16, "normalize": True}},
            "temperature": 0.1, "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}}},
        "data": {"dataset": str(tiny_beir), "train_batch_size": 8, "show_progress": False,
                 "query_max_length": QUERY_LEN, "doc_max_length": DOC_LEN},
        "trainer": {"max_epochs": 1, "enable_progress_bar": False, "default_root_dir": str(root),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root / "runs"), "name": "tiny"}}},
    }))
    cli = run(["fit", "--config", str(config)])
    mp.undo()
    ckpt = cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path
    return ckpt, float(cli.trainer.callback_metrics["val/ndcg@10"])


def lit_dr_embeddings(module, tiny_beir, tiny_model_dir, tmp_path, monkeypatch):
    """(queries, documents) of the tiny set as lit_dr embeds them, tokenized by the data module at training lengths."""
    monkeypatch.setenv("LIT_DR_CACHE", str(tmp_path / "cache"))
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, query_max_length=QUERY_LEN,
                             doc_max_length=DOC_LEN, negatives="none", show_progress=False)
    dm.prepare_data()
    dm.setup()
    kw = {"show_progress": False}
    return (encode_store(module.encode_queries, dm.queries, **kw).numpy(),
            encode_store(module.encode_docs, dm.corpus, **kw).numpy())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_sentence_transformers_embeds_as_lit_dr(trained, tiny_beir, tiny_model_dir, tmp_path, monkeypatch):
    ckpt, _ = trained
    out = export_checkpoint(ckpt, tmp_path / "exported")
    model = st.SentenceTransformer(str(out), device="cpu")
    module = BiEncoderModule.load_from_checkpoint(ckpt).eval()
    queries, docs = lit_dr_embeddings(module, tiny_beir, tiny_model_dir, tmp_path, monkeypatch)
    doc_texts = [r.text for r in iter_texts(tiny_beir / "corpus.jsonl")]
    query_texts = [r.text for r in iter_texts(tiny_beir / "queries.jsonl")]
    assert cosines(model.encode_document(doc_texts), docs).min() >= 0.9999
    assert cosines(model.encode(doc_texts), docs).min() >= 0.9999
    assert cosines(model.encode_query(query_texts), queries).min() >= 0.9999
    assert model.similarity_fn_name == "cosine"
    # The truncation lengths matter on this data: at the document length, queries embed differently.
    assert cosines(model.encode_document(query_texts), queries).min() < 0.9999


def test_automodel_loads_without_new_weights(trained, tmp_path):
    from transformers import AutoModel

    out = export_checkpoint(trained[0], tmp_path / "exported")
    model, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    module = BiEncoderModule.load_from_checkpoint(trained[0])
    for name, value in module.encoder.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_model_card(trained, tmp_path, tiny_beir):
    ckpt, ndcg = trained
    main(["export", ckpt, str(tmp_path / "exported")])
    card = (tmp_path / "exported" / "README.md").read_text()
    assert "lit_dr.objectives.bm25neg.BM25Negatives" in card
    assert str(tiny_beir) in card
    assert f"| dev ndcg@10 | {ndcg:.4f} |" in card
    assert "temperature: 0.1" in card and "projection_dim: 16" in card  # the run's resolved config
    assert f"queries {QUERY_LEN} tokens, documents {DOC_LEN} tokens" in card
    with pytest.raises(FileExistsError):
        export_checkpoint(ckpt, tmp_path / "exported")
    assert json.loads((tmp_path / "exported" / "lit_dr_export.json").read_text())["doc_max_length"] == DOC_LEN


def test_separate_towers_export_as_a_router(tiny_model_dir, tmp_path):
    module = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, projection_dim=8),
                           doc_encoder=Encoder(tiny_model_dir, pooling="cls", projection_dim=8))
    with torch.no_grad():
        for p in module.doc_encoder.parameters():  # make the towers differ
            p.add_(0.01 * torch.randn_like(p))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    out = export_checkpoint(tmp_path / "two.ckpt", tmp_path / "exported")
    model = st.SentenceTransformer(str(out), device="cpu")
    tok = module.encoder.tokenizer_path
    from transformers import AutoTokenizer

    texts = ["t0w1 t0w2 filler the", "t5w3 common t5w4"]
    enc = AutoTokenizer.from_pretrained(tok)(texts, padding=True, return_tensors="pt")
    module.eval()
    with torch.no_grad():
        from lit_dr.data.batches import TokenBatch

        batch = TokenBatch(enc["input_ids"], enc["attention_mask"])
        q, d = module.encode_queries(batch).numpy(), module.encode_docs(batch).numpy()
    assert cosines(model.encode_query(texts), q).min() >= 0.9999
    assert cosines(model.encode_document(texts), d).min() >= 0.9999
    assert cosines(model.encode_query(texts), d).max() < 0.999


def test_base_class_loads_the_trained_objective(tiny_model_dir, tmp_path):
    module = SamToNe(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir), temperature=0.3, symmetric=True)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = BiEncoderModule.load_from_checkpoint(tmp_path / "m.ckpt")
    assert type(loaded) is SamToNe and loaded.temperature == 0.3 and loaded.symmetric


def test_trained_class_from_a_cli_checkpoint(trained):
    assert type(BiEncoderModule.load_from_checkpoint(trained[0])) is BM25Negatives


def test_encoder_loads_float32_unless_asked(tiny_model_dir, tmp_path):
    from transformers import AutoModel

    AutoModel.from_pretrained(tiny_model_dir).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "bf16" / name).write_bytes((Path(tiny_model_dir) / name).read_bytes())
    assert Encoder(str(tmp_path / "bf16"), projection_dim=4).model.dtype == torch.float32
    kept = Encoder(str(tmp_path / "bf16"), projection_dim=4, dtype="auto")
    assert kept.model.dtype == torch.bfloat16 and kept.projection[0].weight.dtype == torch.bfloat16


def save(module, path):
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def test_ltre_exports_its_warm_start_as_the_document_tower(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from lit_dr import LTRe
    from lit_dr.data.batches import TokenBatch

    warm = save(BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, normalize=True)), tmp_path / "warm.ckpt")
    module = LTRe(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, normalize=True), init_checkpoint=str(warm))
    reference = BM25Negatives.load_from_checkpoint(warm).eval()
    with torch.no_grad():
        for p in module.encoder.parameters():  # the query tower trained away from the warm start
            p.add_(0.05 * torch.randn_like(p))
    out = export_checkpoint(save(module, tmp_path / "ltre.ckpt"), tmp_path / "exported")
    model = st.SentenceTransformer(str(out), device="cpu")
    texts = ["t0w1 t0w2 filler the", "t5w3 common t5w4"]
    enc = AutoTokenizer.from_pretrained(tiny_model_dir)(texts, padding=True, return_tensors="pt")
    batch = TokenBatch(enc["input_ids"], enc["attention_mask"])
    module.eval()
    with torch.no_grad():
        q, d = module.encode_queries(batch).numpy(), reference.encode_docs(batch).numpy()
    assert cosines(model.encode_query(texts), q).min() >= 0.9999
    assert cosines(model.encode_document(texts), d).min() >= 0.9999
    assert cosines(model.encode_document(texts), q).max() < 0.9999


def test_export_best_callback(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    cli = run(["fit", "--model", "lit_dr.BM25Negatives", "--model.init_args.encoder", "lit_dr.Encoder",
               "--model.init_args.optimizer=torch.optim.AdamW",
               f"--model.init_args.encoder.init_args.model_name_or_path={tiny_model_dir}",
               f"--data.dataset={tiny_beir}", "--data.train_batch_size=8", "--data.show_progress=false",
               "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
               "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.default_root_dir={tmp_path}",
               "--trainer.callbacks+=lit_dr.ExportBest"])
    best = cli.trainer.checkpoint_callback.best_model_path
    record = json.loads((tmp_path / "version_0" / "export" / "lit_dr_export.json").read_text())
    assert record["checkpoint"] == str(Path(best).resolve())
    assert record["global_step"] == cli.trainer.global_step
