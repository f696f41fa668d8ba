"""Grade-0 judgments in every consumer: with `exclude_from_negatives="positives"` (the default, ANCE's released
code) a document judged NON-relevant may be a negative everywhere (BM25 mining, the random top-up, the refresh,
the in-batch mask) and never counts as a positive in the refresh's figures; with "judged" every consumer drops it.

The data set: 32 documents, 16 queries. Training queries q0..q11, each relevant (grade 1) to d_i and judged
non-relevant (grade 0) for d_{(i+1) % 12} (the next query's positive) and for d16..d31; dev q12, q13 and test
q14, q15 (relevant to d12..d15) are never training queries.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lit_dr import DANCE, Encoder, RetrievalDataModule
from lit_dr.training import NegativeRefresh

from conftest import write_beir

N_DOCS, N_QUERIES, N_TRAIN = 32, 16, 12
HEADER = "query-id\tcorpus-id\tscore\n"


def grade0(i: int) -> list[int]:
    """Documents training query q_i judged non-relevant."""
    return [(i + 1) % N_TRAIN, *range(16, N_DOCS)]


def write_graded(root: Path) -> Path:
    write_beir(root, n_docs=N_DOCS, n_queries=N_QUERIES)
    train = [f"q{i}\td{i}\t1\n" for i in range(N_TRAIN)]
    train += [f"q{i}\td{d}\t0\n" for i in range(N_TRAIN) for d in grade0(i)]
    (root / "qrels" / "train.tsv").write_text(HEADER + "".join(train))
    (root / "qrels" / "dev.tsv").write_text(HEADER + "q12\td12\t1\nq13\td13\t1\n")
    (root / "qrels" / "test.tsv").write_text(HEADER + "q14\td14\t1\nq15\td15\t1\n")
    return root


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> Path:
    return write_graded(tmp_path_factory.mktemp("graded") / "data")


def option_args(option: str) -> dict:
    """The default is left unset, so the default case also runs (and fails for what it does) on older code."""
    return {} if option == "positives" else {"exclude_from_negatives": option}


def make_dm(root, tiny_model_dir, cache_dir, **kw) -> RetrievalDataModule:
    args = dict(tokenizer=tiny_model_dir, cache_dir=str(cache_dir), train_batch_size=4, num_negatives=1,
                bm25_depth=N_DOCS, show_progress=False)
    dm = RetrievalDataModule(str(root), **{**args, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def rows(dm, prefix: str, ids) -> list[int]:
    store = dm.corpus if prefix == "d" else dm.queries
    return [store.row_of[f"{prefix}{i}"] for i in ids]


def judged_docs(dm, i: int) -> set[int]:
    return set(rows(dm, "d", [i, *grade0(i)]))


# -- the data module: excluded_docs, BM25 negatives, random top-up, in-batch mask --------------------------------
@pytest.mark.parametrize("option", ["positives", "judged"])
def test_excluded_docs_and_bm25_negatives(graded, tiny_model_dir, cache_dir, option):
    dm = make_dm(graded, tiny_model_dir, cache_dir, **option_args(option))
    q0, d1 = dm.queries.row_of["q0"], dm.corpus.row_of["d1"]
    assert (d1 in dm.negatives.candidates[q0]) == (option == "positives")  # q0's judged non-relevant document
    for i in range(N_TRAIN):
        q = dm.queries.row_of[f"q{i}"]
        excluded = set(rows(dm, "d", [i])) if option == "positives" else judged_docs(dm, i)
        # bm25_depth = corpus size: every document is ranked, so the candidates are all documents but the excluded.
        assert set(dm.negatives.candidates[q].tolist()) == set(range(N_DOCS)) - excluded, i
        assert dm.excluded_docs([q]) == [excluded]


@pytest.mark.parametrize("option", ["positives", "judged"])
def test_random_top_up_and_in_batch_mask(graded, tiny_model_dir, cache_dir, option):
    """No table: every negative is a random draw. Drawing exactly as many as are allowed must return every allowed
    document: with the default the grade-0 ones are among them."""
    excluded_ids = [0] if option == "positives" else [0, *grade0(0)]  # q0's
    dm = make_dm(graded, tiny_model_dir, cache_dir, negatives="none", num_negatives=N_DOCS - len(excluded_ids),
                 **option_args(option))
    q0, q1 = rows(dm, "q", [0, 1])
    batch = dm.train_batch(np.array([q0, q1]))
    g = batch.group_size
    assert set(batch.doc_rows[1:g].tolist()) == set(range(N_DOCS)) - set(rows(dm, "d", excluded_ids))
    # In-batch: q1's positive d1 sits in q0's row of the mask; q0 judged it non-relevant.
    d1 = dm.corpus.row_of["d1"]
    assert int(batch.doc_rows[g]) == d1
    assert bool(batch.excluded[0, g]) == (option == "judged")
    assert bool(batch.excluded[1, g])  # a query's own positive is always masked
    for i, q in enumerate((q0, q1)):
        assert batch.excluded[i].tolist() == [d in dm.excluded_docs([q])[0] for d in batch.doc_rows.tolist()]


@pytest.mark.parametrize("option", ["positives", "judged"])
def test_in_batch_mask_of_a_grade_0_document(graded, tiny_model_dir, cache_dir, option):
    """q1's positive d1 is in the batch; q0 judged it non-relevant: masked for q0 only with "judged"."""
    dm = make_dm(graded, tiny_model_dir, cache_dir, negatives="none", **option_args(option))
    batch = dm.train_batch(np.array(rows(dm, "q", [0, 1])))
    g = batch.group_size
    assert int(batch.doc_rows[g]) == dm.corpus.row_of["d1"]
    assert batch.excluded[:, g].tolist() == [option == "judged", True]


def test_given_negatives_follow_the_option(tmp_path, tiny_model_dir, cache_dir):
    root = write_graded(tmp_path / "data")
    (root / "negatives.tsv").write_text("q0\td1,d2,d20\n")  # d1, d20: judged non-relevant for q0
    for option, kept in (("positives", ["d1", "d2", "d20"]), ("judged", ["d2"])):
        dm = make_dm(root, tiny_model_dir, cache_dir, negatives="file", **option_args(option))
        assert dm.negatives.candidates[dm.queries.row_of["q0"]].tolist() == rows(dm, "d", [k[1:] for k in kept])


# -- the refresh: mining and its figures ----------------------------------------------------------------------------
class RecordingRefresh(NegativeRefresh):
    """Keeps the embeddings of every query and document under the weights the refresh mined with."""

    def _mine(self, trainer, pl_module, generation):
        dm = trainer.datamodule
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            self.q = pl_module.encode_queries(dm.queries.batch(np.arange(len(dm.queries)))).double()
            self.d = pl_module.encode_docs(dm.corpus.batch(np.arange(len(dm.corpus)))).double()
        pl_module.train(was_training)
        return super()._mine(trainer, pl_module, generation)


def fit_with_refresh(root, tiny_model_dir, tmp_path, option, query_depth=4, num_negative_queries=1, miner=None):
    """One step of DANCE after a refresh before it (depth = corpus, every candidate kept; negative queries from
    the top `query_depth` training queries of each positive document, all of them kept)."""
    L.seed_everything(0)
    model = DANCE(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir, projection_dim=8, normalize=True), temperature=0.1,
                  dual_weight=0.5, run_dir=str(tmp_path / "runs"))
    dm = RetrievalDataModule(str(root), tokenizer=tiny_model_dir, cache_dir=str(tmp_path / "cache"),
                             train_batch_size=4, num_negatives=1, num_negative_queries=num_negative_queries,
                             negatives="none", show_progress=False, **option_args(option))
    refresh = RecordingRefresh(every_n_steps=1000, depth=N_DOCS, num_negatives=N_DOCS, mine_queries=True,
                               query_depth=query_depth, num_negative_queries=N_TRAIN, table_dir=str(tmp_path / "neg"),
                               miner=miner)
    L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
              callbacks=[refresh]).fit(model, dm)
    return dm, refresh


def best_rank(scores: torch.Tensor, targets: set[int]) -> int:
    """1-based rank of the best-scored row of `targets` in a descending ranking of `scores`."""
    order = torch.argsort(scores, descending=True).tolist()
    return min(order.index(t) for t in targets) + 1


@pytest.mark.parametrize("option", ["positives", "judged"])
def test_refresh_mines_grade_0_by_the_option_and_counts_positives_only(graded, tiny_model_dir, tmp_path, option):
    dm, refresh = fit_with_refresh(graded, tiny_model_dir, tmp_path, option)
    train = dm.split_rows["train"].tolist()
    for i in range(N_TRAIN):
        q = dm.queries.row_of[f"q{i}"]
        excluded = set(rows(dm, "d", [i])) if option == "positives" else judged_docs(dm, i)
        assert set(dm.negatives.candidates[q].tolist()) == set(range(N_DOCS)) - excluded, i
    # The figures, by brute force over the same embeddings: the best rank of a grade > 0 document.
    scores = refresh.q[train] @ refresh.d.T  # (Q, N)
    ranks = [best_rank(scores[j], {int(d) for d in dm.positives[q]}) for j, q in enumerate(train)]
    stats = refresh.history[0]
    assert stats["positive_in_depth"] == 1.0  # depth = corpus size
    assert stats["positive_mean_rank"] == pytest.approx(np.mean(ranks))
    # Counting judged documents as positives (the old figures) would give another number: the check can fail.
    judged_ranks = [best_rank(scores[j], set(dm.relevance[q])) for j, q in enumerate(train)]
    assert np.mean(judged_ranks) < np.mean(ranks) - 1

