"""Objective modules on the tiny BERT: training learns, checkpoints round-trip, the base wiring works."""

import lightning as L
import pytest
import torch
from torch import Tensor

from lit_dr import BM25Negatives, Encoder, RetrievalDataModule, SamToNe
from lit_dr.data.batches import TokenBatch, TrainBatch
from lit_dr.objectives.base import BiEncoderModule


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
    model = SamToNe(encoder=Encoder(tiny_model_dir, projection_dim=8), temperature=0.2, symmetric=True,
                   optimizer=torch.optim.AdamW)
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
    model = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir), doc_encoder=Encoder(tiny_model_dir, pooling="cls"))
    assert model.document_tower is model.doc_encoder and model.doc_encoder is not model.encoder
    with torch.no_grad():
        model.doc_encoder.model.embeddings.word_embeddings.weight.add_(1.0)
    ids = torch.tensor([[2, 10, 11, 3]])
    batch = TokenBatch(ids, torch.ones_like(ids))
    assert not torch.allclose(model.encode_queries(batch), model.encode_docs(batch))


def test_warm_start_from_checkpoint(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    source = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir))
    with torch.no_grad():
        source.encoder.model.embeddings.word_embeddings.weight.mul_(2.0)
    trainer = tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(source, tiny_dm(tiny_beir, tiny_model_dir, cache_dir))
    trainer.save_checkpoint(tmp_path / "warm.ckpt")
    target = SamToNe(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir), init_checkpoint=str(tmp_path / "warm.ckpt"))
    target.apply_warm_start()  # what the first fit (or validate / test / predict) does
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_base_module_says_what_to_override(tiny_model_dir):
    with pytest.raises(NotImplementedError, match="must override compute_loss"):
        BiEncoderModule(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir)).compute_loss(None, None, None)


class MarginRanking(BiEncoderModule):
    """The README's example objective: a margin ranking (hinge) loss on the positive and the first negative."""

    def __init__(self, margin: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.margin = margin
        self.seen: list[tuple[Tensor, Tensor, TrainBatch]] = []  # what compute_loss was given, per step

    def compute_loss(self, q, d, batch):
        self.seen.append((q.detach().clone(), d.detach().clone(), batch))
        g = batch.group_size
        pos = (q * d[::g]).sum(-1)  # (B,)
        neg = (q * d[1::g]).sum(-1)  # (B,)
        return torch.relu(self.margin - pos + neg).mean()


def hinge_oracle(q: Tensor, d: Tensor, group: int, margin: float) -> float:
    """mean_i max(0, margin - q_i . d_{i*G} + q_i . d_{i*G+1}), one query at a time in float64."""
    q, d = q.double(), d.double()
    terms = [max(0.0, margin - float(q[i] @ d[i * group]) + float(q[i] @ d[i * group + 1])) for i in range(len(q))]
    return sum(terms) / len(terms)


def test_user_objective_in_a_dozen_lines(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    """The README's example of adding an objective: subclass and override compute_loss. One SGD step: the loss
    logged is the hinge of the embeddings compute_loss saw, its documents are laid out positive first, and the
    step moves the weights downhill (the same batch scores a lower loss after it, without dropout)."""
    L.seed_everything(0)
    lr, margin = 0.05, 4.0
    model = MarginRanking(margin=margin, encoder=Encoder(tiny_model_dir), optimizer=lambda p: torch.optim.SGD(p, lr=lr))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dm = tiny_dm(tiny_beir, tiny_model_dir, cache_dir)
    logged = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            logged.append(float(outputs["loss"]))

    tiny_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[Record()]).fit(model, dm)
    assert model.global_step == 1 and len(model.seen) == 1 and len(logged) == 1
    q, d, batch = model.seen[0]
    group = batch.group_size
    assert group == 2 and q.shape == (8, 32) and d.shape == (16, 32)
    oracle = hinge_oracle(q, d, group, margin)
    assert oracle > 0.1  # the hinge is active: a zero loss would let a broken gradient pass
    assert logged[0] == pytest.approx(oracle, rel=1e-5, abs=1e-6)
    rows, docs = batch.query_rows.tolist(), batch.doc_rows.tolist()
    for i, row in enumerate(rows):  # positive first in each group, then a negative that is not judged relevant
        assert docs[i * group] in dm.relevance[row] and docs[i * group + 1] not in dm.relevance[row], i

    def eval_loss(state: dict[str, Tensor]) -> float:
        scorer = MarginRanking(margin=margin, encoder=Encoder(tiny_model_dir)).eval()
        scorer.load_state_dict(state)
        with torch.no_grad():
            return hinge_oracle(scorer.encode_queries(batch.queries), scorer.encode_docs(batch.docs), group, margin)

    after = {k: v.clone() for k, v in model.state_dict().items()}
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert eval_loss(after) < eval_loss(before) - 1e-3, (eval_loss(before), eval_loss(after))
