"""Objective modules on the tiny BERT: training learns, checkpoints round-trip, the base wiring works."""

import lightning as L
import pytest
import torch

from lit_dr import BM25Negatives, Encoder, RetrievalDataModule, SamToNe
from lit_dr.data.batches import TokenBatch
from lit_dr.modules.base import BiEncoderModule


def tiny_trainer(tmp_path, **kw) -> L.Trainer:
    args = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, default_root_dir=str(tmp_path), deterministic=True)
    return L.Trainer(**{**args, **kw})


def tiny_dm(tiny_beir, tiny_model_dir, cache_dir, **kw) -> RetrievalDataModule:
    args = dict(tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=8, num_negatives=1, bm25_depth=10,
                show_progress=False)
    return RetrievalDataModule(str(tiny_beir), **{**args, **kw})


def adamw(lr):
    return lambda params: torch.optim.AdamW(params, lr=lr)


@pytest.mark.parametrize("module_cls", [BM25Negatives, SamToNe])
def test_fine_tuning_improves_dev_retrieval(module_cls, tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    L.seed_everything(0)
    model = module_cls(encoder=Encoder(tiny_model_dir, normalize=True), temperature=0.1, optimizer=adamw(3e-3),
                       run_dir=str(tmp_path / "runs"))
    dm = tiny_dm(tiny_beir, tiny_model_dir, cache_dir)
    trainer = tiny_trainer(tmp_path, max_epochs=8)
    before = trainer.validate(model, dm, verbose=False)[0]["val/ndcg@10"]
    trainer.fit(model, dm)
    after = trainer.validate(model, dm, verbose=False)[0]["val/ndcg@10"]
    assert after > before + 0.05, (before, after)
    assert list((tmp_path / "runs").glob("dev-step*.trec"))


def test_checkpoint_round_trip_from_python(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    model = SamToNe(encoder=Encoder(tiny_model_dir, projection_dim=8), temperature=0.2, symmetric=True)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, tiny_dm(tiny_beir, tiny_model_dir, cache_dir))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = SamToNe.load_from_checkpoint(path)
    assert loaded.symmetric and loaded.temperature == 0.2 and loaded.encoder.dim == 8
    ids = torch.tensor([[2, 10, 11, 3]])
    batch = TokenBatch(ids, torch.ones_like(ids))
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_queries(batch), loaded.encode_queries(batch))


def test_separate_document_tower(tiny_model_dir):
    model = BM25Negatives(encoder=Encoder(tiny_model_dir), doc_encoder=Encoder(tiny_model_dir, pooling="cls"))
    assert model.document_tower is model.doc_encoder and model.doc_encoder is not model.encoder
    with torch.no_grad():
        model.doc_encoder.model.embeddings.word_embeddings.weight.add_(1.0)
    ids = torch.tensor([[2, 10, 11, 3]])
    batch = TokenBatch(ids, torch.ones_like(ids))
    assert not torch.allclose(model.encode_queries(batch), model.encode_docs(batch))


def test_warm_start_from_checkpoint(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    source = BM25Negatives(encoder=Encoder(tiny_model_dir))
    with torch.no_grad():
        source.encoder.model.embeddings.word_embeddings.weight.mul_(2.0)
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(source, tiny_dm(tiny_beir, tiny_model_dir, cache_dir))
    trainer.save_checkpoint(tmp_path / "warm.ckpt")
    target = SamToNe(encoder=Encoder(tiny_model_dir), init_checkpoint=str(tmp_path / "warm.ckpt"))
    target.apply_warm_start()  # what the first fit (or validate / test / predict) does
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_base_module_says_what_to_override(tiny_model_dir):
    with pytest.raises(NotImplementedError, match="must override compute_loss"):
        BiEncoderModule(encoder=Encoder(tiny_model_dir)).compute_loss(None, None, None)


def test_user_objective_in_a_dozen_lines(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    """The README's example of adding an objective: subclass and override compute_loss."""

    class MarginMSE(BiEncoderModule):
        def __init__(self, margin: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.margin = margin

        def compute_loss(self, q, d, batch):
            g = batch.group_size
            pos = (q * d[::g]).sum(-1)  # (B,)
            neg = (q * d[1::g]).sum(-1)  # (B,)
            return torch.relu(self.margin - pos + neg).mean()

    model = MarginMSE(encoder=Encoder(tiny_model_dir))
    tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(model, tiny_dm(tiny_beir, tiny_model_dir, cache_dir))
    assert model.global_step == 2
