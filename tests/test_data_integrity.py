"""One source of truth for texts and ids: everything downstream reads the token store, ids are validated once,
and bad or empty input fails loudly, naming the file, line and field, instead of training on wrong data."""

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lit_dr import BM25Negatives, Encoder
from lit_dr.data.formats import DataFormatError, dataset_files, iter_texts, read_negatives, read_qrels
from lit_dr.data.token_store import build_store
from lit_dr.mining.bm25 import bm25_search
from lit_dr.training import RetrievalDataModule

from conftest import write_beir


def make_dm(path, tiny_model_dir, cache_dir, stage="fit", **kw) -> RetrievalDataModule:
    args = dict(tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4, num_negatives=2, bm25_depth=10,
                show_progress=False)
    dm = RetrievalDataModule(str(path), **{**args, **kw})
    dm.prepare_data()
    dm.setup(stage)
    return dm


def append(path: Path, *objs: dict) -> None:
    with open(path, "a") as f:
        f.writelines(json.dumps(o) + "\n" for o in objs)


def insert_line(path: Path, index: int, line: str) -> None:
    lines = path.read_text().splitlines()
    lines.insert(index, line)
    path.write_text("\n".join(lines) + "\n")


# -- 1. BM25 indexes exactly the stored rows -----------------------------------------------------------------
def test_bm25_negatives_follow_the_store_with_duplicates_kept_first(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "dups")
    # A repeated corpus id early in the file (every later raw line is one off from its store row), and a
    # repeated query id whose second text differs.
    insert_line(root / "corpus.jsonl", 3, json.dumps({"_id": "d1", "text": "repeated text of another document"}))
    append(root / "queries.jsonl", {"_id": "q5", "text": "entirely different words later in the file"})
    dm = make_dm(root, tiny_model_dir, cache_dir, duplicate_ids="keep_first", bm25_depth=100)

    # What keep_first means, read independently from the raw files: the first text of each id, in file order.
    corpus_first: dict[str, str] = {}
    for r in iter_texts(root / "corpus.jsonl"):
        corpus_first.setdefault(r.id, r.text)
    query_first: dict[str, str] = {}
    for r in iter_texts(root / "queries.jsonl"):
        query_first.setdefault(r.id, r.text)
    train = dm.split_rows["train"]
    train_ids = [str(dm.queries.ids[q]) for q in train]
    _, ranked = bm25_search(list(corpus_first.values()), [query_first[q] for q in train_ids], k=100)
    doc_ids = list(corpus_first)
    relevant = [{doc_ids.index(str(dm.corpus.ids[d])) for d in dm.relevance[q]} for q in train]
    # Read independently too: the top 100 minus the relevant rows, in rank order.
    expected = [[r for r in ranking if r >= 0 and r not in rel] for ranking, rel in zip(ranked, relevant, strict=True)]
    for q, rows in zip(train, expected, strict=True):
        assert [str(dm.corpus.ids[r]) for r in dm.negatives.candidates[int(q)]] == [doc_ids[r] for r in rows]
    # ... because BM25 read the store's own texts: the kept rows, in store order.
    assert list(dm.corpus.texts()) == [corpus_first[str(i)] for i in dm.corpus.ids]
    assert list(dm.queries.texts(train.tolist())) == [query_first[q] for q in train_ids]
    for q in train:  # the default depth no longer points past the store
        assert dm.negatives.candidates[int(q)].max(initial=0) < len(dm.corpus)
    batch = dm.train_batch(train)
    assert batch.doc_rows.max() < len(dm.corpus)


# -- 2. ids are validated once ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad_id, shown", [
    ("d1\u0000", "U+0000"),  # NumPy strings drop a trailing NUL: it would collapse onto "d1"
    ("d\t1", "U+0009"),
    ("d1\n", "U+000A"),
    ("d 1", "U+0020"),  # a TREC run file could not name it
    ("\ufeffd1", "byte-order mark"),
    ("d\u200b1", "U+200B"),
])
def test_ids_that_cannot_round_trip_are_rejected(tmp_path, bad_id, shown):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"_id": "d1", "text": "a"}) + "\n" + json.dumps({"_id": bad_id, "text": "b"}) + "\n")
    with pytest.raises(DataFormatError, match=re.escape(shown)) as err:
        list(iter_texts(path))
    assert (err.value.line, err.value.field) == (2, "_id")


def test_surrounding_spaces_are_stripped_from_ids(tmp_path):
    path = tmp_path / "collection.tsv"
    path.write_text(" d1 \tsome text\n")
    assert [r.id for r in iter_texts(path)] == ["d1"]


def test_bom_only_at_the_start_of_a_file(tmp_path):
    concatenated = tmp_path / "collection.tsv"
    concatenated.write_bytes(b"\xef\xbb\xbfd1\tone\nd2\ttwo\n\xef\xbb\xbfd3\tthree\n")
    records = iter_texts(concatenated)
    assert [next(records).id, next(records).id] == ["d1", "d2"]
    with pytest.raises(DataFormatError, match="byte-order mark") as err:
        next(records)
    assert (err.value.path, err.value.line) == (concatenated, 3)


def test_lone_surrogate_in_a_text_names_the_field(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "d1", "text": "broken \\ud800 escape"}\n')
    with pytest.raises(DataFormatError, match="lone surrogate") as err:
        list(iter_texts(path))
    assert (err.value.line, err.value.field) == (1, "text")


def test_qrels_and_negatives_ids_are_validated(tmp_path):
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\x00\t1\n")
    with pytest.raises(DataFormatError, match="U\\+0000") as err:
        read_qrels(qrels)
    assert (err.value.line, err.value.field) == (2, "corpus-id")
    negatives = tmp_path / "negatives.tsv"
    negatives.write_text("q1\td1,d\x072\n")
    with pytest.raises(DataFormatError, match="U\\+0007") as err:
        read_negatives(negatives)
    assert (err.value.line, err.value.field) == (1, "docids")


# -- 3. empty splits and given negatives are never silent --------------------------------------------------
@pytest.mark.parametrize("qrels, why", [
    ("query-id\tcorpus-id\tscore\n", "holds no judgments"),
    ("", "holds no judgments"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t0\nq2\td2\t0\n", "none of its 2 judgments is relevant"),
    ("query-id\tcorpus-id\tscore\nq1\tnope\t1\nqX\td1\t1\n", "name no known query with a known document"),
])
def test_empty_training_split_is_an_error_at_fit(tmp_path, tiny_model_dir, cache_dir, qrels, why):
    root = write_beir(tmp_path / "empty")
    (root / "qrels" / "train.tsv").write_text(qrels)
    with pytest.raises(ValueError, match="split 'train' has no queries") as err:
        make_dm(root, tiny_model_dir, cache_dir)
    assert str(root / "qrels" / "train.tsv") in str(err.value) and why in str(err.value)


def test_given_negatives_count_unknown_ids(tmp_path, tiny_model_dir, cache_dir, caplog):
    root = write_beir(tmp_path / "neg")
    (root / "negatives.tsv").write_text("q1\td3,nope,d4\nqX\td1\nq2\tgone\n")
    with caplog.at_level(logging.WARNING):
        dm = make_dm(root, tiny_model_dir, cache_dir, negatives="file", num_negatives=1)
    warnings = [r.getMessage() for r in caplog.records if "unknown" in r.getMessage()]
    assert len(warnings) == 1
    assert "2 negatives name unknown documents and 1 lines unknown queries" in warnings[0]
    assert "line 2" in warnings[0]  # the first unknown query, qX
    q1 = dm.queries.row_of["q1"]
    if q1 in dm.negatives.candidates:
        assert dm.negatives.candidates[q1].tolist() == [3, 4]


def test_missing_negatives_file_names_what_was_looked_for(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "noneg")
    with pytest.raises(FileNotFoundError, match="looked for negatives.tsv"):
        make_dm(root, tiny_model_dir, cache_dir, negatives="file")
    (root / "negatives.tsv").mkdir()
    with pytest.raises(FileNotFoundError, match="negatives.tsv is a directory"):
        make_dm(root, tiny_model_dir, cache_dir, negatives="file")


# -- 4. errors name the right file and what is wrong with it ------------------------------------------------
def test_duplicate_query_in_the_second_msmarco_file_names_that_file(tmp_path, tiny_model_dir, cache_dir):
    root = tmp_path / "marco"
    root.mkdir()
    (root / "collection.tsv").write_text("0\tt1w1 filler\n1\tt2w1 filler\n")
    (root / "queries.dev.tsv").write_text("7\tt1w1\n")
    (root / "queries.train.tsv").write_text("5\tt2w1\n7\tt1w1 again\n")
    (root / "qrels.train.tsv").write_text("5 0 1 1\n")
    with pytest.raises(DataFormatError, match=r"queries\.train\.tsv:2: field 'id'.*first at queries\.dev\.tsv:1"):
        make_dm(root, tiny_model_dir, cache_dir)


def test_a_directory_or_dangling_symlink_is_not_called_missing(tmp_path):
    root = write_beir(tmp_path / "dir")
    (root / "corpus.jsonl").unlink()
    (root / "corpus.jsonl").mkdir()
    with pytest.raises(FileNotFoundError, match="corpus.jsonl is a directory"):
        dataset_files(root)
    (root / "corpus.jsonl").rmdir()
    (root / "corpus.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(FileNotFoundError, match=r"corpus.jsonl is a dangling symlink \(to .*gone.jsonl\)"):
        dataset_files(root)


# -- 5. setup is all or nothing ---------------------------------------------------------------------------
def test_failed_setup_does_not_poison_the_data_module(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "retry")
    good = (root / "qrels" / "train.tsv").read_text()
    (root / "qrels" / "train.tsv").write_text(good + "q1\td1\tbad-grade\n")
    dm = RetrievalDataModule(str(root), tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4,
                             bm25_depth=10, show_progress=False)
    with pytest.raises(DataFormatError, match="bad-grade"):
        dm.setup("fit")
    (root / "qrels" / "train.tsv").write_text(good)
    dm.setup("fit")  # starts over and reads the fixed file
    assert len(dm.split_rows["train"]) + len(dm.split_rows["dev"]) == 32
    assert len(next(iter(dm.train_dataloader()))) == 4


# -- 6. the token cache follows the files' contents, and concurrent builds share one store ----------------
def test_same_size_edit_with_preserved_mtime_gives_new_tokens(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "edit")
    corpus = root / "corpus.jsonl"
    before = make_dm(root, tiny_model_dir, cache_dir)
    old_tokens = before.corpus.batch([0]).input_ids.tolist()
    stat = corpus.stat()
    text = corpus.read_text()
    first_doc = json.loads(text.splitlines()[0])
    edited = text.replace(first_doc["text"], first_doc["text"][::-1], 1)  # same bytes, other order
    corpus.write_text(edited)
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p, tar or rsync -t leave it
    assert corpus.stat().st_size == stat.st_size and corpus.stat().st_mtime_ns == stat.st_mtime_ns
    after = make_dm(root, tiny_model_dir, cache_dir)
    assert after.corpus.directory != before.corpus.directory
    assert after.corpus.batch([0]).input_ids.tolist() != old_tokens
    assert after.corpus.text(0) == f"{first_doc['title']} {first_doc['text'][::-1]}"


class SlowCountingTokenizer:
    """Wraps a tokenizer; slow enough that two builders overlap, and counts the texts it tokenizes."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.texts, self.pad_token_id = tokenizer, 0, tokenizer.pad_token_id

    def __call__(self, texts, **kw):
        import time

        time.sleep(0.3)
        self.texts += len(texts)
        return self.tokenizer(texts, **kw)


def test_concurrent_builders_of_one_store_both_succeed_and_build_once(tmp_path, tiny_beir, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = SlowCountingTokenizer(AutoTokenizer.from_pretrained(tiny_model_dir))
    source = tiny_beir / "corpus.jsonl"
    directory = tmp_path / "cache" / "corpus-key"
    results, errors = [], []

    def build():
        try:
            results.append(build_store(iter_texts(source), [source], tokenizer, 16, directory, show_progress=False))
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert tokenizer.texts == 64  # one builder tokenized; the other waited and reused its store
    assert np.array_equal(results[0].tokens, results[1].tokens)


def test_two_processes_on_a_cold_cache_both_succeed(tmp_path, tiny_beir, tiny_model_dir):
    script = (
        "import sys\n"
        "from lit_dr.training import RetrievalDataModule\n"
        "dm = RetrievalDataModule(sys.argv[1], tokenizer=sys.argv[2], cache_dir=sys.argv[3], bm25_depth=10,"
        " show_progress=False)\n"
        "dm.prepare_data(); dm.setup('fit')\n"
        "print(dm.corpus.directory.name, len(dm.split_rows['train']))\n"
    )
    cache = tmp_path / "cold"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tiny_beir), tiny_model_dir, str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]
    assert len(list((cache / "tokens").glob("corpus-*"))) == 1


# -- 7. a non-finite loss stops the fit ---------------------------------------------------------------------
class NaNLoss(BM25Negatives):
    def compute_loss(self, q, d, batch):
        return super().compute_loss(q, d, batch) * float("nan")


def test_non_finite_loss_names_the_step_and_queries(tiny_beir, tiny_model_dir, cache_dir, tmp_path):
    model = NaNLoss(optimizer=torch.optim.AdamW, encoder=Encoder(tiny_model_dir))
    dm = make_dm(tiny_beir, tiny_model_dir, cache_dir)
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=0, default_root_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss nan at global step 0") as err:
        trainer.fit(model, dm)
    first = next(iter(dm.train_dataloader()))
    assert str([str(dm.queries.ids[r]) for r in first.tolist()]) in str(err.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no step was taken on it


# -- and more input that used to go through silently or fail late ----------------------------------------
def test_each_split_is_evaluated_with_its_own_judgments(tmp_path, tiny_model_dir, cache_dir, caplog):
    root = write_beir(tmp_path / "overlap", test=True)
    test_qrels = root / "qrels" / "test.tsv"
    test_qrels.write_text(test_qrels.read_text().replace("q0\td0\t1", "q0\td5\t1"))
    with caplog.at_level(logging.WARNING):
        dm = make_dm(root, tiny_model_dir, cache_dir)
    q0, d0, d5 = dm.queries.row_of["q0"], dm.corpus.row_of["d0"], dm.corpus.row_of["d5"]
    assert dm.relevance_for([q0], "test") == [{d5: 1}]
    assert dm.relevance[q0] == {d0: 1}  # training keeps the training judgment
    assert any("4 of the 4 test queries are also training queries" in r.getMessage() for r in caplog.records)


def test_fewer_training_queries_than_one_batch_is_an_error(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "small", n_queries=5)
    with pytest.raises(ValueError, match=r"training split has 4 queries .* fewer than train_batch_size=8"):
        make_dm(root, tiny_model_dir, cache_dir, train_batch_size=8)


def test_more_negatives_than_documents_is_an_error(tmp_path, tiny_model_dir, cache_dir):
    root = write_beir(tmp_path / "tiny", n_docs=3, n_queries=3)
    with pytest.raises(ValueError, match=r"num_negatives=3 .* has 3"):
        make_dm(root, tiny_model_dir, cache_dir, num_negatives=3, train_batch_size=1)


def test_null_title_float_grades_and_compressed_files(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "title": null, "text": "body"}\n')
    assert [r.text for r in iter_texts(corpus)] == ["body"]
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1 0 d1 1.0\n")
    assert read_qrels(qrels) == {"q1": {"d1": 1}}
    qrels.write_text("q1 0 d1 0.5\n")
    with pytest.raises(DataFormatError, match="expected an integer grade"):
        read_qrels(qrels)
    root = write_beir(tmp_path / "gz")
    (root / "corpus.jsonl").rename(root / "corpus.jsonl.gz")
    with pytest.raises(FileNotFoundError, match=r"corpus.jsonl is missing \(found corpus.jsonl.gz: decompress it\)"):
        dataset_files(root)
