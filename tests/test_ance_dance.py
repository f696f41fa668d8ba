"""ANCE and DANCE: their losses against naive per-triple loops, the embedding-geometry measures against their
definitions, and the two modules on the tiny BERT."""

import math

import lightning as L
import pytest
import torch

from lit_dr import ANCE, DANCE, Encoder, RetrievalDataModule
from lit_dr.data.batches import TokenBatch, TrainBatch
from lit_dr.models.losses import alignment, dual_two_way_nll, two_way_nll, uniformity
from lit_dr.objectives.dance import embedding_geometry


def embeddings(n, h=8, seed=0, unit=False):
    x = torch.randn(n, h, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=-1) if unit else x


def two_way(pos, neg, tau):
    """-log of the positive's probability in the softmax over {positive, negative}, as the papers write it."""
    return -math.log(math.exp(pos / tau) / (math.exp(pos / tau) + math.exp(neg / tau)))


def naive_two_way_nll(q, d, g, tau):
    terms = [two_way(float(q[i] @ d[i * g]), float(q[i] @ d[i * g + k]), tau)
             for i in range(len(q)) for k in range(1, g)]
    return sum(terms) / len(terms)


def naive_d2q(q, d, neg_q, g, k, tau):
    terms = [two_way(float(d[i * g] @ q[i]), float(d[i * g] @ neg_q[i * k + j]), tau)
             for i in range(len(q)) for j in range(k)]
    return sum(terms) / len(terms)


# Small temperatures go with unit vectors (cosine), as in DANCE, so the naive exponentials stay finite.
SHAPES = [(1, 2, 1.0, False), (4, 3, 1.0, False), (5, 5, 0.5, False), (3, 4, 0.05, True), (6, 3, 0.01, True)]


# -- losses --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("b, g, tau, unit", SHAPES)
def test_two_way_nll_matches_formula(b, g, tau, unit):
    q, d = embeddings(b, seed=b, unit=unit), embeddings(b * g, seed=g + 10, unit=unit)
    assert two_way_nll(q, d, g, tau).item() == pytest.approx(naive_two_way_nll(q, d, g, tau), rel=1e-9)


@pytest.mark.parametrize("b, g, tau, unit", SHAPES)
@pytest.mark.parametrize("k", [1, 2, 4])
def test_dual_two_way_nll_matches_formula(b, g, tau, unit, k):
    q, d = embeddings(b, seed=b, unit=unit), embeddings(b * g, seed=g + 10, unit=unit)
    neg_q = embeddings(b * k, seed=k + 20, unit=unit)
    expected = naive_two_way_nll(q, d, g, tau) + 0.3 * naive_d2q(q, d, neg_q, g, k, tau)
    got = dual_two_way_nll(q, d, neg_q, g, k, tau, dual_weight=0.3).item()
    assert got == pytest.approx(expected, rel=1e-9)


def test_ance_in_batch_negatives_is_one_softmax_over_the_batch(tiny_model_dir):
    """`in_batch_negatives`: -log of the positive's share of e^{s/tau} over every document of the batch, per query
    (a loop here), instead of the 2-way softmaxes."""
    module = ANCE(encoder=Encoder(tiny_model_dir, pooling="cls", projection_dim=8), temperature=0.5,
                  in_batch_negatives=True).eval()
    batch = train_batch(with_negative_queries=False)
    with torch.no_grad():
        q, d = module.encode_queries(batch.queries).double(), module.encode_docs(batch.docs).double()
        got = module.compute_loss(q, d, batch)
    tau = 0.5
    naive = sum(math.log(sum(math.exp(float(q[i] @ c) / tau) for c in d)) - float(q[i] @ d[i * 3]) / tau
                for i in range(3)) / 3
    assert got.item() == pytest.approx(naive, rel=1e-9)
    module.in_batch_negatives = False
    assert module.compute_loss(q, d, batch).item() == pytest.approx(naive_two_way_nll(q, d, 3, tau), rel=1e-9)


def test_dual_weight_zero_is_two_way_nll():
    q, d, neg_q = embeddings(4), embeddings(12, seed=1), embeddings(8, seed=2)
    assert torch.equal(dual_two_way_nll(q, d, neg_q, 3, 2, 0.2, dual_weight=0.0), two_way_nll(q, d, 3, 0.2))


def test_two_way_losses_reject_bad_shapes():
    q, d = embeddings(4), embeddings(4, seed=1)
    with pytest.raises(ValueError, match="at least one hard negative"):
        two_way_nll(q, d, 1)
    with pytest.raises(RuntimeError):  # 7 negative queries cannot be 4 x K
        dual_two_way_nll(q, embeddings(8, seed=1), embeddings(7, seed=2), 2, 2)


def test_alignment_matches_definition():
    x, y = embeddings(6), embeddings(6, seed=1)
    expected = sum(float(((x[i] / x[i].norm() - y[i] / y[i].norm()) ** 2).sum()) for i in range(6)) / 6
    assert alignment(x, y).item() == pytest.approx(expected, rel=1e-12)
    assert alignment(x, 5 * x).item() == pytest.approx(0.0, abs=1e-12)  # normalised inside: scale is ignored


@pytest.mark.parametrize("t", [2.0, 0.5])
def test_uniformity_matches_definition(t):
    x = embeddings(7, seed=3)
    u = x / x.norm(dim=1, keepdim=True)
    pairs = [(i, j) for i in range(7) for j in range(i + 1, 7)]
    expected = math.log(sum(math.exp(-t * float(((u[i] - u[j]) ** 2).sum())) for i, j in pairs) / len(pairs))
    assert uniformity(x, t).item() == pytest.approx(expected, rel=1e-12)


def test_uniformity_limits():
    same = embeddings(1).repeat(5, 1)
    assert uniformity(same).item() == pytest.approx(0.0, abs=1e-12)  # log 1
    antipodal = torch.tensor([[3.0, 0.0], [-5.0, 0.0]], dtype=torch.float64)
    assert uniformity(antipodal).item() == pytest.approx(-2.0 * 4.0)  # ||u - (-u)||^2 = 4 on the unit circle
    direction = embeddings(1, h=16)
    clustered = direction + 0.1 * embeddings(50, h=16, seed=1)
    spread = embeddings(50, h=16, seed=2)
    assert uniformity(spread) < uniformity(clustered) < 0
    with pytest.raises(ValueError, match="two points"):
        uniformity(direction)


def test_embedding_geometry():
    queries, docs = embeddings(3, seed=1).float(), embeddings(10, seed=2).float()
    relevance = [{4: 1, 7: 2}, {0: 0}, {9: 1}]  # grade 0 is judged but not relevant
    got = embedding_geometry(queries, docs, relevance)
    assert got["align"] == pytest.approx(alignment(queries[[0, 0, 2]], docs[[4, 7, 9]]).item())
    assert got["unif_q"] == pytest.approx(uniformity(queries).item())
    assert got["unif_d"] == pytest.approx(uniformity(docs).item())

    sampled = embedding_geometry(queries, docs, relevance, sample=4, seed=1)
    assert sampled == embedding_geometry(queries, docs, relevance, sample=4, seed=1)  # same seed, same sample
    assert sampled["unif_d"] != pytest.approx(got["unif_d"])
    assert sampled["unif_q"] == pytest.approx(got["unif_q"])  # 3 queries <= 4: all of them

    empty = embedding_geometry(queries[:1], docs, [{0: 0}])
    assert math.isnan(empty["align"]) and math.isnan(empty["unif_q"]) and not math.isnan(empty["unif_d"])


# -- modules on the tiny BERT --------------------------------------------------------------------------------
def tokens(n, seed, length=7):
    """n rows of tiny-vocabulary word ids between [CLS] and [SEP]; every other row ends in two pads."""
    ids = torch.randint(5, 85, (n, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, -3] = 2, 3
    mask = torch.ones_like(ids)
    mask[::2, -2:] = 0
    return TokenBatch(ids.masked_fill(mask == 0, 0), mask)


def train_batch(b=3, g=3, k=2, with_negative_queries=True):
    return TrainBatch(
        queries=tokens(b, seed=0, length=6),
        docs=tokens(b * g, seed=1, length=9),
        query_rows=torch.arange(b),
        doc_rows=torch.arange(b * g),
        excluded=torch.zeros(b, b * g, dtype=torch.bool),
        negative_queries=tokens(b * k, seed=2, length=6) if with_negative_queries else None,
    )


def loss_of(module, batch):
    """The loss as the training step computes it: the batch's texts, and those `extra_texts` names, embedded."""
    q, d = module.encode_queries(batch.queries), module.encode_docs(batch.docs)  # (B, H), (B * G, H)
    encode = {"query": module.encode_queries, "doc": module.encode_docs}
    extra = {name: encode[side](tokens) for name, (side, tokens) in module.extra_texts(batch).items()}
    return module.compute_loss(q, d, batch, **extra)


@pytest.mark.parametrize(
    "module_cls, kwargs, with_negative_queries",
    [(ANCE, {}, False), (ANCE, {"in_batch_negatives": True}, False), (DANCE, {}, False), (DANCE, {}, True)],
)
def test_loss_is_finite_and_reaches_the_encoder(module_cls, kwargs, with_negative_queries, tiny_model_dir):
    torch.manual_seed(0)
    normalize = module_cls is DANCE
    module = module_cls(encoder=Encoder(tiny_model_dir, pooling="cls", projection_dim=8, normalize=normalize),
                        **kwargs)
    loss = loss_of(module, train_batch(with_negative_queries=with_negative_queries))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for p in (module.encoder.model.embeddings.word_embeddings.weight, module.encoder.projection[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_dance_stages(tiny_model_dir):
    encoder = Encoder(tiny_model_dir, pooling="cls", projection_dim=8, normalize=True)
    dance = DANCE(optimizer=torch.optim.AdamW, encoder=encoder, temperature=0.05, dual_weight=0.1).eval()  # no dropout: comparable losses
    ance = ANCE(optimizer=torch.optim.AdamW, encoder=encoder, temperature=0.05).eval()
    with torch.no_grad():
        stage1 = loss_of(ance, train_batch())
        assert torch.equal(loss_of(dance, train_batch(with_negative_queries=False)), stage1)
        dual = loss_of(dance, train_batch(k=2))
        b = train_batch(k=2)
        q, d, neg_q = (dance.encode_queries(b.queries), dance.encode_docs(b.docs),
                       dance.encode_queries(b.negative_queries))
        assert torch.allclose(dual, dual_two_way_nll(q, d, neg_q, 3, 2, 0.05, 0.1))
        assert not torch.allclose(dual, stage1)
        dance.dual_weight = 0.0
        assert torch.equal(loss_of(dance, train_batch(k=2)), stage1)


def test_dance_checkpoint_round_trip_and_validation_geometry(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    model = DANCE(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, pooling="cls", projection_dim=8, normalize=True),
                  temperature=0.05, dual_weight=0.3, run_dir=str(tmp_path / "runs"))
    dm = RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir,
                             train_batch_size=8, num_negatives=2, bm25_depth=10, show_progress=False)
    args = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                default_root_dir=str(tmp_path))
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, **args)
    trainer.fit(model, dm)
    metrics = L.Trainer(**args).validate(model, dm, verbose=False)[0]
    # On the unit sphere squared distances lie in [0, 4]: align in [0, 4], uniformity (t = 2) in [-8, 0].
    assert 0 < metrics["val/align"] < 4
    assert -8 < metrics["val/unif_q"] < 0 and -8 < metrics["val/unif_d"] < 0

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = DANCE.load_from_checkpoint(path)
    assert loaded.temperature == 0.05 and loaded.dual_weight == 0.3 and loaded.encoder.normalize
    batch = tokens(2, seed=5)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_queries(batch), loaded.encode_queries(batch))
