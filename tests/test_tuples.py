"""sentence-transformers-style tuples (parquet, JSONL, a `save_to_disk` folder) and BEIR's Hugging Face parquet
layout, read into the same token stores, judgments and given negatives as a BEIR directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lit_dr.data.formats import DataFormatError, dataset_files, iter_texts
from lit_dr.data.tuples import is_tuples, materialize, text_id, tuples_to_beir
from lit_dr.training import RetrievalDataModule

from conftest import write_beir

ROWS = [  # two rows of q-a (two positives), a repeated negative text, a row with fewer negatives (null)
    {"query": "what is alpha", "positive": "alpha is a letter", "negative_1": "beta is a letter",
     "negative_2": "gamma rays", "score": [9.0, 2.0, 1.0]},
    {"query": "what is alpha", "positive": "alpha particles", "negative_1": "beta is a letter",
     "negative_2": None, "score": [8.0, 2.0]},
    {"query": "where is delta", "positive": "the delta of a river", "negative_1": "alpha is a letter",
     "negative_2": "gamma rays", "score": [7.0, 0.5, 0.25]},
]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tuples_make_stores_of_distinct_texts_judgments_and_negatives(tmp_path):
    counts = tuples_to_beir(write_parquet(tmp_path / "t.parquet", ROWS), tmp_path / "beir")
    assert counts == {"source": str(tmp_path / "t.parquet"), "rows": 3, "queries": 2, "documents": 5,
                      "judgments": 3, "negatives": 4, "teacher_scores": 7}
    files = dataset_files(tmp_path / "beir")
    corpus = {r.id: r.text for r in iter_texts(files.corpus)}
    assert sorted(corpus.values()) == sorted({"alpha is a letter", "beta is a letter", "gamma rays",
                                              "alpha particles", "the delta of a river"})
    assert all(i == text_id("d", t) for i, t in corpus.items())  # ids from the text: stable across runs
    qa, qd = text_id("q", "what is alpha"), text_id("q", "where is delta")
    qrels = (tmp_path / "beir/qrels/train.tsv").read_text().splitlines()
    assert qrels[1:] == [f"{qa}\t{text_id('d', 'alpha is a letter')}\t1", f"{qa}\t{text_id('d', 'alpha particles')}\t1",
                         f"{qd}\t{text_id('d', 'the delta of a river')}\t1"]
    negatives = dict(line.split("\t") for line in (tmp_path / "beir/negatives.tsv").read_text().splitlines())
    assert negatives[qa] == f"{text_id('d', 'beta is a letter')},{text_id('d', 'gamma rays')}"
    # "alpha is a letter" is q-d's negative, although a positive of another query
    assert negatives[qd].split(",")[0] == text_id("d", "alpha is a letter")
    scores = (tmp_path / "beir/teacher_scores.tsv").read_text().splitlines()
    assert f"{qd}\t{text_id('d', 'gamma rays')}\t0.25" in scores


def test_parquet_jsonl_and_a_datasets_folder_give_the_same_data_set(tmp_path):
    datasets = pytest.importorskip("datasets")
    plain = [{k: v for k, v in r.items() if k != "score"} for r in ROWS]
    write_parquet(tmp_path / "t.parquet", plain)
    write_jsonl(tmp_path / "t.jsonl", plain)
    datasets.Dataset.from_list(plain).save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(plain)}).save_to_disk(str(tmp_path / "dict"))
    made = {}
    for name in ("t.parquet", "t.jsonl", "folder", "dict"):
        assert is_tuples(tmp_path / name)
        root = materialize(tmp_path / name, tmp_path / "cache")
        made[name] = {f: (root / f).read_bytes() for f in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv",
                                                            "negatives.tsv")}
    assert made["t.parquet"] == made["t.jsonl"] == made["folder"] == made["dict"]
    assert not is_tuples(write_beir(tmp_path / "beir"))


def test_materialized_once_per_content(tmp_path):
    source = write_jsonl(tmp_path / "t.jsonl", ROWS[:1])
    first = materialize(source, tmp_path / "cache")
    assert materialize(source, tmp_path / "cache") == first
    write_jsonl(source, ROWS[:2])
    assert materialize(source, tmp_path / "cache") != first


def test_a_tuple_set_is_described_once_per_process(tmp_path, caplog):
    """The preflight, the module and the summary each locate the data set: the log said it three times."""
    source = write_jsonl(tmp_path / "t.jsonl", ROWS)
    with caplog.at_level("INFO", logger="lit_dr.training.datamodule"):
        for _ in range(3):
            RetrievalDataModule.locate(str(source), cache_dir=tmp_path / "cache")
    assert sum("tuples read as the BEIR data set" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("rows, line, field, message", [
    ([{"question": "q", "positive": "p"}], 1, "query", r"missing column 'query' \(or 'anchor'\); the file has"),
    ([ROWS[0], {"query": None, "positive": "p"}], 2, "query", "missing \\(null\\)"),
    ([ROWS[0], {**ROWS[0], "negative_2": 3}], 2, "negative_2", "expected a string, got int"),
    ([ROWS[0], {**ROWS[0], "negative_1": "  "}], 2, "negative_1", "empty text"),
    ([ROWS[0], {**ROWS[0], "score": [1.0]}], 2, "score", "expected a list of 3 scores"),
    ([ROWS[0], {**ROWS[0], "score": [9.0, 2.5, 1.0]}], 2, "negative_1", "teacher score 2.5 .* scored 2.0 at row 1"),
    ([{"query": "q", "positive": "p", "negative": "n", "label": 0.5}], 1, "label", "a single number per row"),
])
def test_bad_tuples_name_file_row_and_column(tmp_path, rows, line, field, message):
    mixed = len({type(r.get(field)) for r in rows}) > 1 and field == "negative_2"  # no parquet column holds both
    paths = [write_jsonl(tmp_path / "bad.jsonl", rows)] + ([] if mixed else [write_parquet(tmp_path / "b.parquet", rows)])
    for path in paths:
        with pytest.raises(DataFormatError, match=message) as err:
            tuples_to_beir(path, tmp_path / f"out-{path.suffix[1:]}")
        assert (err.value.line, err.value.field) == (line, field)
        assert str(err.value).startswith(f"{path}:{line}: field {field!r}")


def test_a_fit_reads_tuples_with_given_negatives_and_teacher_scores(tmp_path, tiny_model_dir, cache_dir):
    words = [r.text for r in iter_texts(write_beir(tmp_path / "beir") / "corpus.jsonl")]
    rows = [{"anchor": f"query {i} " + words[i], "positive": words[i], "negative_1": words[i + 1],
             "positive_score": 5.0, "negative_1_score": 1.0 + i} for i in range(20)]
    path = write_parquet(tmp_path / "train.parquet", rows)
    dm = RetrievalDataModule(str(path), tokenizer=tiny_model_dir, cache_dir=cache_dir, train_batch_size=4,
                             num_negatives=1, negatives="file", teacher_scores="teacher_scores.tsv",
                             show_progress=False)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.corpus), len(dm.queries)) == (21, 20)
    assert len(dm.split_rows["train"]) == 16 and len(dm.split_rows["dev"]) == 4  # the dev split carved as ever
    q = dm.split_rows["train"][0]
    i = int(dm.queries.text(q).split()[1])
    assert [dm.corpus.text(r) for r in dm.negatives.candidates[q]] == [words[i + 1]]
    batch = dm.train_batch(dm.split_rows["train"][:4])
    assert batch.doc_features["teacher_score"][:2].tolist() == [5.0, 1.0 + i]


# -- BEIR in its Hugging Face layout --------------------------------------------------------------------------
def to_parquet_layout(beir: Path, target: Path, shards: int = 1) -> Path:
    pytest.importorskip("pyarrow")
    target.mkdir()
    for kind in ("corpus", "queries"):
        rows = [json.loads(line) for line in (beir / f"{kind}.jsonl").read_text().splitlines()]
        if shards == 1:
            write_parquet(target / f"{kind}.parquet", rows)
        else:
            (target / kind).mkdir()
            for s in range(shards):
                part = rows[s * len(rows) // shards:(s + 1) * len(rows) // shards]
                write_parquet(target / kind / f"{kind}-{s:05d}.parquet", part)
    (target / "qrels").mkdir()
    (target / "qrels/train.tsv").write_bytes((beir / "qrels/train.tsv").read_bytes())
    return target


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_beir_parquet_gives_the_stores_of_the_jsonl_set(tmp_path, tiny_model_dir, cache_dir, shards):
    beir = write_beir(tmp_path / "beir")
    hf = to_parquet_layout(beir, tmp_path / "hf", shards)
    assert dataset_files(hf).format == "beir-parquet" and len(dataset_files(hf).corpus_sources) == shards
    dms = []
    for root in (beir, hf):
        dm = RetrievalDataModule(str(root), tokenizer=tiny_model_dir, cache_dir=cache_dir, negatives="none",
                                 num_negatives=0, show_progress=False)
        dm.setup("fit")
        dms.append(dm)
    a, b = dms
    for store in ("corpus", "queries"):
        sa, sb = getattr(a, store), getattr(b, store)
        assert list(sa.ids) == list(sb.ids) and list(sa.texts()) == list(sb.texts())
        assert np.array_equal(sa.tokens, sb.tokens)
    assert all(np.array_equal(a.split_rows[s], b.split_rows[s]) for s in ("train", "dev"))


def test_hf_beir_errors_name_file_row_and_field(tmp_path):
    hf = to_parquet_layout(write_beir(tmp_path / "beir"), tmp_path / "hf")
    write_parquet(hf / "corpus.parquet", [{"_id": "d0", "text": "x"}, {"_id": "d1", "text": None}])
    with pytest.raises(DataFormatError, match=r"corpus.parquet:2: field 'text': expected a string, got NoneType"):
        list(iter_texts(hf / "corpus.parquet"))
    (hf / "queries.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete BEIR \\(Hugging Face parquet\\) dataset.*queries"):
        dataset_files(hf)


def test_lit_dr_index_refuses_a_sharded_corpus_rather_than_reading_its_first_shard(tmp_path):
    from lit_dr.commands.inference import corpus_file

    hf = to_parquet_layout(write_beir(tmp_path / "beir"), tmp_path / "hf", shards=3)
    with pytest.raises(ValueError, match="the corpus is 3 parquet files"):
        corpus_file(hf)
    assert corpus_file(to_parquet_layout(write_beir(tmp_path / "b2"), tmp_path / "hf1")).name == "corpus.parquet"
