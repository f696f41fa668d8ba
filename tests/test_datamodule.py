"""The data module on synthetic data: token cache, splits, negatives, batches, bad input."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_dr.data.formats import DataFormatError
from lit_dr.data.token_store import TokenStore
from lit_dr.training import RetrievalDataModule

from conftest import write_beir


def make_dm(path, tiny_model_dir, cache_dir, **kw) -> RetrievalDataModule:
    args = dict(tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4, num_negatives=2, bm25_depth=10,
                show_progress=False)
    dm = RetrievalDataModule(str(path), **{**args, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_token_store_round_trips_the_tokenizer(tiny_beir, tiny_model_dir, cache_dir):
    from transformers import AutoTokenizer

    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir, doc_max_length=8)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = json.loads((tiny_beir / "corpus.jsonl").read_text().splitlines()[5])
    expected = tok(f"{text['title']} {text['text']}", truncation=True, max_length=8)["input_ids"]
    batch = dm.corpus.batch([5, 0])
    assert batch.input_ids[0].tolist() == expected
    assert batch.attention_mask[0].sum() == len(expected)
    assert isinstance(dm.corpus.tokens, np.memmap)  # memory-mapped, not loaded
    assert dm.corpus.ids[5] == "d5" and dm.corpus.row_of["d5"] == 5


def test_token_cache_is_reused_and_keyed_on_max_length(tiny_beir, tiny_model_dir, cache_dir):
    make_dm(tiny_beir, tiny_model_dir, cache_dir)
    tmp = Path(cache_dir) / "tokens"
    stores = sorted(p.name for p in tmp.glob("[!.]*"))  # dot files: locks and temporary builds
    make_dm(tiny_beir, tiny_model_dir, cache_dir)
    assert sorted(p.name for p in tmp.glob("[!.]*")) == stores  # same key: nothing rebuilt
    make_dm(tiny_beir, tiny_model_dir, cache_dir, doc_max_length=16)
    assert len(list(tmp.glob("[!.]*"))) == len(stores) + 1


def test_dev_split_is_carved_from_train_deterministically(tiny_beir, tiny_model_dir, cache_dir):
    a = make_dm(tiny_beir, tiny_model_dir, cache_dir, dev_fraction=0.25, seed=3)
    b = make_dm(tiny_beir, tiny_model_dir, cache_dir, dev_fraction=0.25, seed=3)
    assert len(a.split_rows["dev"]) == 8 and len(a.split_rows["train"]) == 24
    assert not set(a.split_rows["dev"]) & set(a.split_rows["train"])
    assert a.split_rows["dev"].tolist() == b.split_rows["dev"].tolist()
    c = make_dm(tiny_beir, tiny_model_dir, cache_dir, dev_fraction=0.25, seed=4)
    assert c.split_rows["dev"].tolist() != a.split_rows["dev"].tolist()


def test_given_dev_qrels_are_used(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "withdev", dev=True)
    dm = make_dm(root, tiny_model_dir, cache_dir)
    assert [dm.queries.ids[r] for r in dm.split_rows["dev"]] == ["q0"]
    assert len(dm.split_rows["train"]) == 32  # nothing carved out of train


def test_bm25_negatives_exclude_judged_relevant(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "multi")
    with open(root / "qrels" / "train.tsv", "a") as f:  # q1 is also relevant to d9 (same topic)
        f.write("q1\td9\t1\n")
    dm = make_dm(root, tiny_model_dir, cache_dir)
    assert dm.negatives.source == "bm25@10"
    for q, cands in dm.negatives.candidates.items():
        assert not set(cands.tolist()) & set(dm.relevance[q]), q
    q1 = dm.queries.row_of["q1"]
    if q1 in dm.negatives.candidates:
        assert dm.corpus.row_of["d9"] not in dm.negatives.candidates[q1]


def test_train_batch_layout_and_false_negative_mask(tiny_beir, tiny_model_dir, cache_dir):
    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir)
    batch = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch.group_size == 3
    assert batch.queries.input_ids.shape[0] == 4 and batch.docs.input_ids.shape[0] == 12
    for i, q in enumerate(batch.query_rows.tolist()):
        assert int(batch.doc_rows[i * 3]) in dm.relevance[q]  # positive first
        for j, d in enumerate(batch.doc_rows.tolist()):
            assert bool(batch.excluded[i, j]) == (d in dm.excluded_docs([q])[0])


def test_negatives_are_reproducible_and_change_with_the_epoch(tiny_beir, tiny_model_dir, cache_dir):
    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir, num_negatives=3)
    rows = dm.split_rows["train"]
    first = dm.train_batch(rows).doc_rows.tolist()
    assert first == dm.train_batch(rows).doc_rows.tolist()
    dm.epoch = 1
    assert first != dm.train_batch(rows).doc_rows.tolist()


def test_sampling_seed_changes_batches_not_the_dev_split(tiny_beir, tiny_model_dir, cache_dir):
    base = make_dm(tiny_beir, tiny_model_dir, cache_dir, seed=0)
    same = make_dm(tiny_beir, tiny_model_dir, cache_dir, seed=0, sampling_seed=0)
    other = make_dm(tiny_beir, tiny_model_dir, cache_dir, seed=0, sampling_seed=1)

    def first_epoch(dm):
        return [(b.query_rows.tolist(), b.doc_rows.tolist())
                for b in map(dm.train_batch, (r.numpy() for r in dm.train_dataloader()))]

    for dm in (same, other):
        assert dm.split_rows["dev"].tolist() == base.split_rows["dev"].tolist()
    assert first_epoch(same) == first_epoch(base)  # None means `seed`
    assert first_epoch(other) != first_epoch(base)


def test_sampler_shards_and_skips_after_resume(tiny_beir, tiny_model_dir, cache_dir):
    from lit_dr.data.sampling import EpochSampler

    full = list(EpochSampler(24, seed=0, num_replicas=1, rank=0))
    assert sorted(full) == list(range(24))
    halves = [list(EpochSampler(24, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == list(range(24)) and not set(halves[0]) & set(halves[1])
    resumed = EpochSampler(24, seed=0, num_replicas=1, rank=0, skip=8)
    assert list(resumed) == full[8:]
    assert list(resumed) == full  # the skip applies once
    next_epoch = EpochSampler(24, seed=0, num_replicas=1, rank=0, skip=8, skip_epoch=0)
    next_epoch.set_epoch(1)  # the checkpoint was the epoch's last batch: the resumed run starts epoch 1
    assert len(list(next_epoch)) == 24
    other = EpochSampler(24, seed=0, num_replicas=1, rank=0)
    other.set_epoch(1)
    assert list(other) != full


def test_state_dict_resumes_mid_epoch(tiny_beir, tiny_model_dir, cache_dir):
    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir)
    loader = dm.train_dataloader()
    batches = [dm.on_before_batch_transfer(b, 0).query_rows.tolist() for b in loader]
    state = {"epoch": 0, "consumed": 2}
    resumed = make_dm(tiny_beir, tiny_model_dir, cache_dir)
    resumed.load_state_dict(state)
    rest = [resumed.on_before_batch_transfer(b, 0).query_rows.tolist() for b in resumed.train_dataloader()]
    assert rest == batches[2:]
    assert resumed.consumed == len(batches)


def test_negative_queries_for_dance(tiny_beir, tiny_model_dir, cache_dir):
    import dataclasses

    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir, num_negative_queries=2)
    positive_of = {q: int(dm.positives[q][0]) for q in dm.split_rows["train"]}
    table = dataclasses.replace(dm.negatives, query_candidates={d: np.array([0, 1, 2, 3]) for d in positive_of.values()})
    dm.set_negatives(table)
    batch = dm.train_batch(dm.split_rows["train"][:4])
    assert batch.negative_queries.input_ids.shape[0] == 8
    allowed = {tuple(t[t != 0].tolist()) for t in dm.queries.batch([0, 1, 2, 3]).input_ids}
    drawn = {tuple(t[t != 0].tolist()) for t in batch.negative_queries.input_ids}
    assert drawn <= allowed


def test_no_negatives_means_in_batch_only(tiny_beir, tiny_model_dir, cache_dir):
    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir, num_negatives=0, negatives="none")
    assert dm.train_batch(dm.split_rows["train"][:4]).group_size == 1


def test_negatives_file(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "neg")
    (root / "negatives.tsv").write_text("q0\td1,d0,d2\nq1\td3\n")
    dm = make_dm(root, tiny_model_dir, cache_dir, negatives="file", num_negatives=1)
    q0 = dm.queries.row_of["q0"]
    if q0 in dm.negatives.candidates:  # q0 may have been carved into dev
        assert dm.negatives.candidates[q0].tolist() == [1, 2]  # d0 is q0's positive: dropped


def test_unknown_ids_in_qrels_give_one_counted_warning(tmp_path, tiny_model_dir, cache_dir, caplog):
    root = write_beir(tmp_path / "unknown")
    with open(root / "qrels" / "train.tsv", "a") as f:
        f.write("q1\tnope1\t1\nq2\tnope2\t1\nqX\td1\t1\n")
    with caplog.at_level(logging.WARNING):
        dm = make_dm(root, tiny_model_dir, cache_dir)
    warnings = [r.getMessage() for r in caplog.records if "unknown" in r.getMessage()]
    assert len(warnings) == 1 and "2 judgments name unknown documents and 1 unknown queries" in warnings[0]
    assert len(dm.split_rows["train"]) + len(dm.split_rows["dev"]) == 32


def test_duplicate_ids_error_names_file_and_lines(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "dup")
    with open(root / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "d3", "text": "again"}) + "\n")
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:65: field '_id'.*first at corpus.jsonl:4"):
        make_dm(root, tiny_model_dir, cache_dir)
    # Nothing half-built is left in the cache after the failure.
    assert not [p for p in (tmp_path.parent / "cache").rglob("*") if p.name.startswith(".corpus")]


def test_duplicate_ids_keep_first(tmp_path, tiny_model_dir, cache_dir, caplog):
    root = write_beir(tmp_path / "dup2")
    with open(root / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "d3", "text": "again"}) + "\n")
    with caplog.at_level(logging.WARNING):
        dm = make_dm(root, tiny_model_dir, cache_dir, duplicate_ids="keep_first")
    assert len(dm.corpus) == 64
    assert any("1 duplicate ids skipped" in r.getMessage() for r in caplog.records)


def test_empty_texts_are_kept_with_a_warning(tmp_path, tiny_model_dir, cache_dir, caplog):
    root = write_beir(tmp_path / "empty")
    with open(root / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "blank", "title": "", "text": "  "}) + "\n")
    with caplog.at_level(logging.WARNING):
        dm = make_dm(root, tiny_model_dir, cache_dir)
    assert "blank" in dm.corpus.row_of
    assert any("1 empty texts kept" in r.getMessage() for r in caplog.records)
    assert dm.corpus.batch([dm.corpus.row_of["blank"]]).attention_mask.sum() == 2  # [CLS] [SEP]


def test_bad_json_line_is_reported(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "bad")
    lines = (root / "queries.jsonl").read_text().splitlines()
    lines[6] = '{"_id": "q6", "text": '
    (root / "queries.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"queries.jsonl:7"):
        make_dm(root, tiny_model_dir, cache_dir)


def test_missing_test_split_is_a_clear_error(tiny_beir, tiny_model_dir, cache_dir):
    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir)
    with pytest.raises(ValueError, match=r"no qrels for split 'test'.*have: \['dev', 'train'\]"):
        dm.test_dataloader()


def test_token_store_batch_trims_padding(tiny_beir, tiny_model_dir, cache_dir):
    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir, query_max_length=32)
    store: TokenStore = dm.queries
    batch = store.batch([0, 1, 2])
    assert batch.input_ids.shape[1] == int(store.lengths[[0, 1, 2]].max())
    assert batch.input_ids.dtype == torch.int64


def test_msmarco_layout(tmp_path, tiny_model_dir, cache_dir):
    root = tmp_path / "marco"
    root.mkdir()
    (root / "collection.tsv").write_text("".join(f"{i}\tt{i % 8}w1 t{i % 8}w2 filler\n" for i in range(20)))
    (root / "queries.train.tsv").write_text("".join(f"{100 + i}\tt{i % 8}w1\n" for i in range(10)))
    (root / "queries.dev.tsv").write_text("200\tt3w2\n")
    (root / "qrels.train.tsv").write_text("".join(f"{100 + i}\t0\t{i}\t1\n" for i in range(10)))
    (root / "qrels.dev.tsv").write_text("200\t0\t3\t1\n")
    (root / "negatives.train.tsv").write_text("100\t5,8\n")
    dm = make_dm(root, tiny_model_dir, cache_dir, negatives="file", num_negatives=1, train_batch_size=2)
    assert len(dm.corpus) == 20 and len(dm.queries) == 11
    assert len(dm.split_rows["train"]) == 10 and [dm.queries.ids[r] for r in dm.split_rows["dev"]] == ["200"]
    assert dm.negatives.candidates[dm.queries.row_of["100"]].tolist() == [5, 8]
    assert dm.train_batch(dm.split_rows["train"][:2]).group_size == 2


def test_msmarco_dev_small_validates_when_named(tmp_path, tiny_model_dir, cache_dir):
    """MS MARCO's reported dev set is `qrels.dev.small.tsv`, a split named `dev.small`: without `dev_split` the
    module carved a fifth of the training queries as dev and never looked at it."""
    root = tmp_path / "marco"
    root.mkdir()
    (root / "collection.tsv").write_text("".join(f"{i}\tt{i % 8}w1 t{i % 8}w2 filler\n" for i in range(20)))
    (root / "queries.train.tsv").write_text("".join(f"{100 + i}\tt{i % 8}w1\n" for i in range(10)))
    (root / "queries.dev.tsv").write_text("200\tt3w2\n201\tt4w2\n")
    (root / "queries.dev.small.tsv").write_text("201\tt4w2\n")
    (root / "qrels.train.tsv").write_text("".join(f"{100 + i}\t0\t{i}\t1\n" for i in range(10)))
    (root / "qrels.dev.tsv").write_text("200\t0\t3\t1\n201\t0\t4\t1\n")
    (root / "qrels.dev.small.tsv").write_text("201\t0\t4\t1\n")
    dm = make_dm(root, tiny_model_dir, cache_dir, dev_split="dev.small")
    assert len(dm.split_rows["train"]) == 10  # nothing carved out of training
    assert [dm.queries.ids[r] for r in dm.split_rows["dev"]] == ["201"]  # dev.small, not the full dev
    assert "dev.small" not in dm.split_rows
    dm.write_split("dev", tmp_path / "written")
    about = json.loads((tmp_path / "written" / "split.json").read_text())
    assert about["source"].endswith("qrels.dev.small.tsv") and about["carved_from_train"] is False
    with pytest.raises(ValueError, match=r"dev_split=dev\.smal: .* has no qrels file of that split \(it has: "
                                         r"dev, dev\.small, train\)"):
        make_dm(root, tiny_model_dir, cache_dir, dev_split="dev.smal")
    # the same id with another text in a second file is still a conflict
    (root / "queries.dev.small.tsv").write_text("201\tanother text\n")
    with pytest.raises(DataFormatError, match=r"queries.dev.tsv:2: field 'id': duplicate id '201' "
                                              r"\(first at queries.dev.small.tsv:1\)"):
        make_dm(root, tiny_model_dir, cache_dir, dev_split="dev.small")
