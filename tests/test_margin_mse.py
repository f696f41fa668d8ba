"""MarginMSE and the batch's feature channel: the loss against a hand computation, teacher scores attached by the
data module (and teacher negatives), every field gathered across processes, a short fit, and the gradient with
gradient caching and with negatives shared by 2 gloo processes equal to plain training's."""

import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from test_large_batch import assert_same_grads, chunked, ddp_inputs, probe, step_grads  # noqa: F401 (a fixture)

from lit_dr import Encoder, MarginMSE, RetrievalDataModule
from lit_dr.data.batches import TokenBatch, TrainBatch
from lit_dr.data.synthetic import write_beir
from lit_dr.models import large_batch
from lit_dr.models.losses import margin_mse


def teacher_score(i: int, j: int) -> float:
    """The synthetic teacher: q_i's own document highest, a fixed spread over the others."""
    return 2.0 if i == j else ((7 * i + 3 * j) % 11) / 11


def write_teacher(path, n_queries=32, n_docs=64, skip=()) -> str:
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{j}\t{teacher_score(i, j)}" for i in range(n_queries)
                                              for j in range(n_docs) if (i, j) not in skip]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# -- the loss --------------------------------------------------------------------------------------------------
def test_margin_mse_matches_a_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # (B 2, H 2)
    d = torch.tensor([[1.0, 1.0], [0.5, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])  # (B * G 6, H)
    t = torch.tensor([3.0, 1.0, 0.0, 2.0, 2.5, float("nan")])  # query 1's last negative unscored
    # student scores: q0 -> 1, .5, 2 ; q1 -> 2, 0, 6.  margins s: (.5, -1), (2, -4); t: (2, 3), (-.5, nan)
    expected = ((0.5 - 2) ** 2 + (-1 - 3) ** 2 + (2 + 0.5) ** 2) / 3
    torch.testing.assert_close(margin_mse(q, d, 3, t), torch.tensor(expected))
    loop = [((q[i] @ d[i * 3]) - (q[i] @ d[i * 3 + k]) - (t[i * 3] - t[i * 3 + k])) ** 2
            for i in range(2) for k in (1, 2) if not t[i * 3 + k].isnan()]
    torch.testing.assert_close(margin_mse(q, d, 3, t), torch.stack(loop).mean())


def test_margin_mse_unscored_pairs_get_no_gradient_and_no_nan():
    q = torch.randn(2, 4, requires_grad=True)
    d = torch.randn(4, 4, requires_grad=True)
    loss = margin_mse(q, d, 2, torch.tensor([1.0, 0.0, 1.0, float("nan")]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(d.grad).all() and torch.isfinite(q.grad).all()
    assert d.grad[2:].abs().sum() == 0 and q.grad[1].abs().sum() == 0  # query 1's only pair is unscored
    assert margin_mse(q, d, 2, torch.full((4,), float("nan"))) == 0
    with pytest.raises(ValueError, match="at least one negative"):
        margin_mse(q, d[:2], 1, torch.zeros(2))


# -- the data module -------------------------------------------------------------------------------------------
@pytest.fixture()
def teacher_data(tmp_path):
    data = write_beir(tmp_path / "data")
    write_teacher(data / "teacher.tsv", skip={(0, 5), (1, 5), (1, 6)})
    return data


def dm_for(data, tiny_model_dir, cache_dir, **kw) -> RetrievalDataModule:
    args = dict(tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=8, num_negatives=2,
                negatives="teacher", teacher_scores="teacher.tsv", show_progress=False)
    return RetrievalDataModule(str(data), **{**args, **kw})


def test_every_batch_carries_the_teacher_score_of_each_document(teacher_data, tiny_model_dir, cache_dir):
    dm = dm_for(teacher_data, tiny_model_dir, cache_dir, negatives="none")  # random negatives: some unscored
    dm.setup("fit")
    rows = dm.split_rows["train"][:8]
    batch = dm.train_batch(rows)
    scores = batch.doc_features["teacher_score"]
    assert scores.dtype == torch.float32 and scores.shape == (24,)
    for k, (d, score) in enumerate(zip(batch.doc_rows.tolist(), scores.tolist(), strict=True)):
        i, j = int(dm.queries.ids[rows[k // 3]][1:]), int(dm.corpus.ids[d][1:])
        if (i, j) in {(0, 5), (1, 5), (1, 6)}:
            assert np.isnan(score)
        else:
            assert score == pytest.approx(teacher_score(i, j))
    assert batch.to("cpu").doc_features["teacher_score"] is not None  # the channel moves with the batch
    # Without teacher scores nothing is attached (the default batch is unchanged).
    plain = dm_for(teacher_data, tiny_model_dir, cache_dir, negatives="none", teacher_scores=None)
    plain.setup("fit")
    assert plain.train_batch(rows).doc_features == {}


def test_an_unscored_negative_is_nan_with_one_counted_warning(teacher_data, tiny_model_dir, cache_dir, caplog):
    dm = dm_for(teacher_data, tiny_model_dir, cache_dir, negatives="none", num_negatives=20)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="lit_dr.training.datamodule"):
        for _ in range(3):
            batch = dm.train_batch(np.array([dm.queries.row_of["q1"]] * 8))
    warned = [r.getMessage() for r in caplog.records if "no teacher score" in r.getMessage()]
    assert len(warned) == 1 and "teacher.tsv" in warned[0]
    assert batch.doc_features["teacher_score"].isnan().any()


def test_teacher_negatives_follow_the_teacher_ranking_minus_positives(teacher_data, tiny_model_dir, cache_dir):
    dm = dm_for(teacher_data, tiny_model_dir, cache_dir)
    dm.setup("fit")
    q = dm.queries.row_of["q3"]
    got = [int(dm.corpus.ids[r][1:]) for r in dm.negatives.candidates[q]]
    expected = sorted((j for j in range(64) if j != 3), key=lambda j: -teacher_score(3, j))
    assert [teacher_score(3, j) for j in got] == [teacher_score(3, j) for j in expected]  # ties in any order
    assert 3 not in got and dm.negatives.source.startswith("teacher")


def test_a_positive_without_a_teacher_score_fails_at_setup(teacher_data, tiny_model_dir, cache_dir):
    write_teacher(teacher_data / "teacher.tsv", skip={(4, 4)})
    with pytest.raises(ValueError, match=r"teacher.tsv: 1 positives .* query 'q4' document 'd4'"):
        dm_for(teacher_data, tiny_model_dir, cache_dir).setup("fit")


def test_teacher_scores_path_relative_to_the_data_set_or_absolute(teacher_data, tiny_model_dir, cache_dir, tmp_path):
    elsewhere = write_teacher(tmp_path / "elsewhere.tsv")
    dm = dm_for(teacher_data, tiny_model_dir, cache_dir, teacher_scores=elsewhere)
    assert dm.teacher_scores_path == tmp_path / "elsewhere.tsv"
    assert dm_for(teacher_data, tiny_model_dir, cache_dir).teacher_scores_path == teacher_data / "teacher.tsv"
    with pytest.raises(FileNotFoundError, match="missing.tsv is missing"):
        dm_for(teacher_data, tiny_model_dir, cache_dir, teacher_scores="missing.tsv").setup("fit")
    with pytest.raises(ValueError, match="no teacher scores"):
        dm_for(teacher_data, tiny_model_dir, cache_dir, teacher_scores=None).setup("fit")


# -- the channel across processes ------------------------------------------------------------------------------
def fake_two_ranks(monkeypatch):
    """`gather_train_batch` as if a second process held this batch's tensors plus 100 (no process group)."""
    monkeypatch.setattr(large_batch, "gather_keep_local", lambda x: torch.cat([x, x + 100]))
    monkeypatch.setattr(large_batch, "gather_padded", lambda x, pad_value=0: torch.cat([x, x]))


def tiny_batch(**kw) -> TrainBatch:
    tokens = TokenBatch(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    return TrainBatch(queries=tokens, docs=tokens, query_rows=torch.tensor([0]), doc_rows=torch.tensor([4, 5]),
                      excluded=torch.zeros(1, 2, dtype=torch.bool), **kw)


def test_gather_keeps_every_field_and_feature(monkeypatch):
    fake_two_ranks(monkeypatch)
    batch = tiny_batch(query_features={"w": torch.tensor([1.0])}, doc_features={"t": torch.tensor([0.5, 0.25])})
    out = large_batch.gather_train_batch(batch, lambda rows: [set()] * len(rows))
    assert torch.equal(out.doc_features["t"], torch.tensor([0.5, 0.25, 100.5, 100.25]))
    assert torch.equal(out.query_features["w"], torch.tensor([1.0, 101.0]))
    assert torch.equal(out.doc_rows, torch.tensor([4, 5, 104, 105])) and out.negative_queries is None
    assert out.excluded.shape == (2, 4)


def test_gather_refuses_a_field_it_cannot_gather(monkeypatch):
    fake_two_ranks(monkeypatch)
    with pytest.raises(TypeError, match=r"TrainBatch.doc_features is a list"):
        large_batch.gather_train_batch(tiny_batch(doc_features=[1.0]), lambda rows: [set()] * len(rows))


@pytest.fixture(scope="module")
def mmse_inputs(ddp_inputs):  # noqa: F811 (the fixture imported above)
    _, data, _ = ddp_inputs
    write_teacher(Path(data) / "teacher.tsv")
    return ddp_inputs


def test_two_processes_and_caching_give_plain_training_gradient(mmse_inputs, tmp_path):
    """MarginMSE through the real 2-process gather: the teacher scores, a query feature and a field of a
    `TrainBatch` subclass reach the loss as one process holds them, and the gradient is plain training's."""
    probe(1, mmse_inputs, tmp_path, "mmse")
    probe(2, mmse_inputs, tmp_path, "mmse", "mmse_cached", "mmse_local")
    one = torch.load(tmp_path / "mmse-w1-r0.pt")
    assert one["features"]["doc"]["teacher_score"].shape == (16,) and one["extra"] is not None
    for case in ("mmse", "mmse_cached"):
        for rank in (0, 1):
            two = torch.load(tmp_path / f"{case}-w2-r{rank}.pt")
            assert_same_grads(two["grads"], one["grads"])
            for key in ("query_rows", "doc_rows", "extra"):
                assert torch.equal(two[key], one[key]), (case, key)
            for side in ("query", "doc"):
                assert two["features"][side].keys() == one["features"][side].keys()
                for name, value in one["features"][side].items():
                    assert torch.equal(two["features"][side][name], value), (case, side, name)
    # Without sharing, the loss sees this process's half (the recording tells the two apart). MarginMSE has no
    # in-batch terms, so the DDP average of the halves' means is the global mean: the same gradient.
    local = torch.load(tmp_path / "mmse_local-w2-r0.pt")
    assert local["features"]["doc"]["teacher_score"].shape == (8,) and local["extra"].shape == (8,)
    assert_same_grads(local["grads"], one["grads"])


# -- training --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [3, 1000])
def test_cached_gradient_equals_uncached_with_dropout(chunk, teacher_data, tiny_model_dir, cache_dir):
    dm = dm_for(teacher_data, tiny_model_dir, cache_dir)
    dm.setup("fit")
    batch = dm.train_batch(dm.split_rows["train"][:5])  # G 3: chunks of 3 split the groups unevenly
    torch.manual_seed(0)
    reference = chunked(MarginMSE, chunk)(encoder=Encoder(tiny_model_dir, projection_dim=8, normalize=True))
    cached = MarginMSE(encoder=Encoder(tiny_model_dir, projection_dim=8, normalize=True), grad_cache_chunk_size=chunk)
    cached.load_state_dict(reference.state_dict())
    expected, _ = step_grads(reference, batch)
    got, _ = step_grads(cached, batch)
    assert_same_grads(got, expected)


def test_a_short_fit_lowers_the_loss_and_refuses_a_batch_without_scores(teacher_data, tiny_model_dir, cache_dir,
                                                                        tmp_path):
    L.seed_everything(0)
    dm = dm_for(teacher_data, tiny_model_dir, cache_dir)
    model = MarginMSE(encoder=Encoder(tiny_model_dir, normalize=True), run_dir=str(tmp_path / "runs"),
                      optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    dm.setup("fit")
    batch = dm.train_batch(dm.split_rows["train"][:8])

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return model.compute_loss(model.encode_queries(batch.queries), model.encode_docs(batch.docs), batch).item()

    before = loss()
    model.train()
    trainer = L.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(model, dm)
    assert loss() < 0.5 * before, (before, loss())
    batch.doc_features.clear()
    with pytest.raises(ValueError, match="MarginMSE needs teacher scores"):
        model.compute_loss(torch.zeros(8, 4), torch.zeros(24, 4), batch)
