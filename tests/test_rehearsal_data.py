"""The MS MARCO-format generator of benchmarks/msmarco_rehearsal.py, read back with lit_dr's own readers."""

from __future__ import annotations

import numpy as np
import pytest

from lit_dr.data.formats import dataset_files, iter_texts, read_qrels
from lit_dr.data.synthetic import letter_words, write_msmarco


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("msmarco") / "set"
    counts = write_msmarco(root, passages=4000, train_queries=300, train_judgments=320, dev_queries=40,
                           dev_judgments=43, vocab_size=2000, seed=1, chunk=1500)
    return root, counts


def test_files_parse_with_exact_counts(generated):
    root, counts = generated
    files = dataset_files(root)
    assert files.format == "msmarco" and sorted(files.qrels) == ["dev.small", "train"]
    assert not (root.parent / "set.tmp").exists()
    passages = {r.id: r.text for r in iter_texts(files.corpus)}
    assert list(passages) == [str(i) for i in range(4000)]
    queries = {name: {r.id: r.text for r in iter_texts(root / f"queries.{name}.tsv")} for name in files.qrels}
    assert (len(queries["train"]), len(queries["dev.small"])) == (300, 40)
    assert not set(queries["train"]) & set(queries["dev.small"])  # one queries store holds both
    for name, judgments in (("train", 320), ("dev.small", 43)):
        qrels = read_qrels(files.qrels[name])
        assert sum(map(len, qrels.values())) == judgments == counts[f"{name}_judgments"]
        assert set(qrels) == set(queries[name])
        assert all(d in passages and g == 1 for docs in qrels.values() for d, g in docs.items())
        # Every query's words come from one of its relevant passages (its first, chosen when it was written).
        assert all(set(queries[name][q].split()) <= set().union(*(passages[d].split() for d in docs))
                   for q, docs in qrels.items())


def test_lengths_and_vocabulary(generated):
    root, _ = generated
    lengths = np.array([len(r.text.split()) for r in iter_texts(root / "collection.tsv")])
    assert abs(lengths.mean() - 56) < 2.5 and lengths.min() >= 2 and lengths.max() > 2 * 56  # a long tail
    q_lengths = np.array([len(r.text.split()) for r in iter_texts(root / "queries.train.tsv")])
    assert abs(q_lengths.mean() - 6) < 1.0 and q_lengths.min() >= 1
    words = letter_words(2000)
    assert len(set(words)) == 2000 and min(map(len, words)) >= 3 and all(w.isalpha() for w in words)
    used = {w for r in iter_texts(root / "collection.tsv") for w in r.text.split()}
    assert used <= set(words)
    counts = {w: 0 for w in words}
    for r in iter_texts(root / "collection.tsv"):
        for w in r.text.split():
            counts[w] += 1
    assert counts[words[0]] > 20 * counts[words[1000]]  # Zipf: the first word is far more common


def test_rejects_fewer_judgments_than_queries(tmp_path):
    with pytest.raises(ValueError, match="judgments"):
        write_msmarco(tmp_path / "x", passages=10, train_queries=5, train_judgments=4, dev_queries=1,
                      dev_judgments=1)
