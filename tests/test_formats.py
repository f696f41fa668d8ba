"""Readers, layout detection, dataset resolution/download and the dev split of `lit_dr.data.formats`."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest

from lit_dr.data.formats import (
    BEIR_URL,
    DataFormatError,
    TextRecord,
    dataset_files,
    iter_texts,
    read_negatives,
    read_qrels,
    resolve_dataset,
    split_dev,
)

SCIFACT = Path(__file__).parent.parent.parent / "shared/data/scifact"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def assert_names(err: pytest.ExceptionInfo, path: Path, line: int | None, field: str | None) -> None:
    msg = str(err.value)
    assert path.name in msg
    assert err.value.line == line and err.value.field == field
    if line is not None:
        assert f":{line}:" in msg
    if field is not None:
        assert repr(field) in msg


# -- DataFormatError -----------------------------------------------------------------------------------------
def test_error_message_and_pickle():
    e = DataFormatError("corpus.jsonl", 17, "_id", "missing")
    assert str(e) == "corpus.jsonl:17: field '_id': missing"
    assert str(DataFormatError("x.tsv", None, None, "bad")) == "x.tsv: bad"
    assert isinstance(e, ValueError)
    back = pickle.loads(pickle.dumps(e))
    assert (back.path, back.line, back.field, back.problem) == ("corpus.jsonl", 17, "_id", "missing")
    assert str(back) == str(e)


# -- iter_texts ----------------------------------------------------------------------------------------------
def test_beir_jsonl_title_join_int_ids_blank_lines(tmp_path):
    p = write(tmp_path / "corpus.jsonl",
              jsonl({"_id": "d1", "title": "Title", "text": "body text"}) + "\n   \n"
              + jsonl({"_id": 7, "text": " no title ", "metadata": {}})
              + jsonl({"_id": "d3", "title": "", "text": "empty title"})
              + jsonl({"_id": "d4", "title": "only title", "text": ""})
              + jsonl({"_id": "d5", "text": "  "}) + "\n")
    assert list(iter_texts(p)) == [
        TextRecord("d1", "Title body text", 1),
        TextRecord("7", "no title", 4),
        TextRecord("d3", "empty title", 5),
        TextRecord("d4", "only title", 6),
        TextRecord("d5", "", 7),  # empty text is yielded, not an error
    ]


def test_beir_first_line_bom_is_ignored(tmp_path):
    p = write(tmp_path / "q.jsonl", "\ufeff".encode() + jsonl({"_id": "q", "text": "t"}).encode())
    assert list(iter_texts(p)) == [TextRecord("q", "t", 1)]


@pytest.mark.parametrize(("line", "field", "problem"), [
    ('{"_id": "a", "text": ', None, "invalid JSON"),
    ('["a", "b"]', None, "JSON object"),
    ('{"text": "t"}', "_id", "missing"),
    ('{"_id": "  ", "text": "t"}', "_id", "empty"),
    ('{"_id": null, "text": "t"}', "_id", "string or integer"),
    ('{"_id": true, "text": "t"}', "_id", "string or integer"),
    ('{"_id": "a"}', "text", "missing"),
    ('{"_id": "a", "text": 3}', "text", "string"),
    ('{"_id": "a", "title": ["x"], "text": "t"}', "title", "string"),
])
def test_beir_jsonl_errors(tmp_path, line, field, problem):
    p = write(tmp_path / "corpus.jsonl", jsonl({"_id": "ok", "text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(DataFormatError, match=problem) as err:
        list(iter_texts(p))
    assert_names(err, p, 3, field)


def test_invalid_utf8_names_the_line(tmp_path):
    p = write(tmp_path / "collection.tsv", b"1\tfine\n2\tbad \xff byte\n")
    records = iter_texts(p)
    assert next(records) == TextRecord("1", "fine", 1)  # streamed: the good line comes before the error
    with pytest.raises(DataFormatError, match="UTF-8") as err:
        next(records)
    assert_names(err, p, 2, None)


def test_msmarco_tsv_two_and_three_columns(tmp_path):
    content = "1\tplain text\r\n\n2\tA title\tthe body\n3\t\tno title\n4\t\n5\tx\ry\n"
    p = write(tmp_path / "collection.tsv", content)
    assert list(iter_texts(p)) == [
        TextRecord("1", "plain text", 1),
        TextRecord("2", "A title the body", 3),
        TextRecord("3", "no title", 4),
        TextRecord("4", "", 5),
        TextRecord("5", "x\ry", 6),  # a stray carriage return inside a text does not split the line
    ]


@pytest.mark.parametrize(("line", "field"),
                         [("just-an-id", "columns"), ("1\ta\tb\tc", "columns"), (" \ttext", "id")])
def test_msmarco_tsv_errors(tmp_path, line, field):
    p = write(tmp_path / "queries.train.tsv", f"0\tok\n{line}\n")
    with pytest.raises(DataFormatError) as err:
        list(iter_texts(p))
    assert_names(err, p, 2, field)


def test_unknown_suffix(tmp_path):
    with pytest.raises(DataFormatError, match=r"\.csv") as err:
        iter_texts(write(tmp_path / "corpus.csv", "a,b\n"))
    assert "corpus.csv" in str(err.value)


# -- qrels ---------------------------------------------------------------------------------------------------
def test_qrels_beir(tmp_path):
    content = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n\nq2\td1\t0\nq1\td1\t1\n"
    p = write(tmp_path / "test.tsv", content)
    assert read_qrels(p) == {"q1": {"d1": 1, "d2": 2}, "q2": {"d1": 0}}


def test_qrels_trec_tabs_and_spaces(tmp_path):
    p = write(tmp_path / "qrels.dev.tsv", "1185869\t0\t0\t1\n1185868 0 16 2\n1185868  Q0  17  -1\n")
    assert read_qrels(p) == {"1185869": {"0": 1}, "1185868": {"16": 2, "17": -1}}


@pytest.mark.parametrize(("content", "line", "field", "problem"), [
    ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\n", 3, "columns", "3 tab-separated"),
    ("query-id\tcorpus-id\tscore\nq1\td1\t1.5\n", 2, "score", "integer"),
    ("query-id\tcorpus-id\tscore\n\td1\t1\n", 2, "query-id", "empty"),
    ("query-id\tcorpus-id\tscore\nq1\t \t1\n", 2, "corpus-id", "empty"),
    ("q1 0 d1 1\nq1 0 d2\n", 2, "columns", "4 columns"),
    ("q1\td1\t1\n", 1, "columns", "header"),  # BEIR rows without the header are not guessed at
    ("q1 0 d1 yes\n", 1, "rel", "integer"),
])
def test_qrels_errors(tmp_path, content, line, field, problem):
    p = write(tmp_path / "qrels.tsv", content)
    with pytest.raises(DataFormatError, match=problem) as err:
        read_qrels(p)
    assert_names(err, p, line, field)


def test_qrels_conflicting_duplicate_names_both_lines(tmp_path):
    p = write(tmp_path / "train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\nq1\td1\t2\n")
    with pytest.raises(DataFormatError) as err:
        read_qrels(p)
    assert_names(err, p, 4, "score")
    assert "line 2" in str(err.value)


# -- negatives -----------------------------------------------------------------------------------------------
def test_read_negatives(tmp_path):
    p = write(tmp_path / "negatives.tsv", "q1\td3,d1,d3,d2,d1\nq2\t\nq3\t d9 , d8 \n")
    assert read_negatives(p) == {"q1": ["d3", "d1", "d2"], "q2": [], "q3": ["d9", "d8"]}


@pytest.mark.parametrize(("content", "line", "field"), [
    ("q1\td1\nq1\td2\n", 2, "qid"),
    ("q1\td1\nq2\n", 2, "columns"),
    ("q1\td1\tx\n", 1, "columns"),
    ("\td1\n", 1, "qid"),
    ("q1\td1,,d2\n", 1, "docids"),
])
def test_read_negatives_errors(tmp_path, content, line, field):
    p = write(tmp_path / "negatives.tsv", content)
    with pytest.raises(DataFormatError) as err:
        read_negatives(p)
    assert_names(err, p, line, field)
    if content.startswith("q1\td1\nq1"):
        assert "line 1" in str(err.value)


# -- layouts -------------------------------------------------------------------------------------------------
def make_beir(root: Path, splits: tuple[str, ...] = ("train", "test")) -> Path:
    write(root / "corpus.jsonl", jsonl({"_id": "d1", "title": "t", "text": "x"}, {"_id": "d2", "text": "y"}))
    write(root / "queries.jsonl", jsonl({"_id": "q1", "text": "x?"}))
    for s in splits:
        write(root / "qrels" / f"{s}.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return root


def test_dataset_files_beir(tmp_path):
    root = make_beir(tmp_path / "ds")
    files = dataset_files(str(root))
    assert files.format == "beir" and files.root == root
    assert files.corpus == root / "corpus.jsonl" and files.queries == (root / "queries.jsonl",)
    assert files.qrels == {"test": root / "qrels/test.tsv", "train": root / "qrels/train.tsv"}
    assert files.negatives is None
    write(root / "negatives.tsv", "q1\td2\n")
    assert dataset_files(root).negatives == root / "negatives.tsv"


def test_dataset_files_msmarco(tmp_path):
    root = tmp_path / "msmarco"
    write(root / "collection.tsv", "0\tdoc\n")
    for s in ("train", "dev", "eval"):
        write(root / f"queries.{s}.tsv", "1\tq\n")
    for s in ("train", "dev"):
        write(root / f"qrels.{s}.tsv", "1\t0\t0\t1\n")
    write(root / "negatives.train.tsv", "1\t0\n")
    files = dataset_files(root)
    assert files.format == "msmarco" and files.corpus == root / "collection.tsv"
    assert files.queries == tuple(root / f"queries.{s}.tsv" for s in ("dev", "eval", "train"))
    assert files.qrels == {"dev": root / "qrels.dev.tsv", "train": root / "qrels.train.tsv"}
    assert files.negatives == root / "negatives.train.tsv"


def test_dataset_files_missing_pieces(tmp_path):
    root = make_beir(tmp_path / "ds", splits=())
    (root / "queries.jsonl").unlink()
    (root / "qrels").mkdir()  # present but empty
    write(root / "README.txt", "hi")
    with pytest.raises(FileNotFoundError) as err:
        dataset_files(root)
    msg = str(err.value)
    assert "queries.jsonl is missing; no qrels/<split>.tsv file" in msg
    assert "holds: README.txt, corpus.jsonl, qrels/" in msg

    other = write(tmp_path / "other" / "notes.md", "x").parent
    with pytest.raises(FileNotFoundError, match="collection.tsv.*holds: notes.md"):
        dataset_files(other)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dataset_files(tmp_path / "nowhere")


# -- resolve_dataset -----------------------------------------------------------------------------------------
@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("LIT_DR_DATA", raising=False)
    monkeypatch.setenv("LIT_DR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # keeps a default cache out of the real home
    return monkeypatch


def test_resolve_order(tmp_path, env):
    cached = make_beir(tmp_path / "cache" / "datasets" / "toy")
    env_root = make_beir(tmp_path / "env_root" / "toy")
    arg_root = make_beir(tmp_path / "arg_root" / "toy")
    direct = make_beir(tmp_path / "direct")
    no_dl = {"download": False, "url_template": "file:///nonexistent/{name}.zip"}

    assert resolve_dataset(str(direct), **no_dl) == direct
    assert resolve_dataset("toy", **no_dl) == cached  # LIT_DR_CACHE read at call time
    env.setenv("LIT_DR_DATA", str(tmp_path / "env_root"))
    assert resolve_dataset("toy", **no_dl) == env_root
    assert resolve_dataset("toy", data_root=str(tmp_path / "arg_root"), **no_dl) == arg_root
    # data_root wins over LIT_DR_DATA even when it lacks the dataset: the cache is next, not the env var
    assert resolve_dataset("toy", data_root=str(tmp_path / "empty"), **no_dl) == cached
    other_cache = make_beir(tmp_path / "c2" / "datasets" / "toy").parent.parent
    env.delenv("LIT_DR_DATA")
    assert resolve_dataset("toy", cache_dir=other_cache, **no_dl) == other_cache / "datasets" / "toy"


def test_resolve_not_found_lists_places(tmp_path, env):
    env.setenv("LIT_DR_DATA", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError) as err:
        resolve_dataset("scifact", download=False)
    msg = str(err.value)
    for place in (tmp_path / "data" / "scifact", tmp_path / "cache" / "datasets" / "scifact"):
        assert str(place) in msg
    assert "LIT_DR_DATA" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_dataset(str(tmp_path / "no" / "such"), download=True)  # a path is never downloaded


def make_zip(path: Path, name: str) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/corpus.jsonl", jsonl({"_id": "d1", "text": "x"}))
        z.writestr(f"{name}/queries.jsonl", jsonl({"_id": "q1", "text": "x?"}))
        z.writestr(f"{name}/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return path


def test_download_file_url(tmp_path, env):
    make_zip(tmp_path / "toy.zip", "toy")
    template = tmp_path.as_uri() + "/{name}.zip"
    got = resolve_dataset("toy", url_template=template)
    datasets = tmp_path / "cache" / "datasets"
    assert got == datasets / "toy"
    assert dataset_files(got).qrels == {"test": got / "qrels" / "test.tsv"}
    assert [p.name for p in datasets.iterdir()] == ["toy"]  # temp file and temp dir cleaned up
    (tmp_path / "toy.zip").unlink()
    assert resolve_dataset("toy", url_template=template) == got  # now found in the cache, no download


def test_download_failure(tmp_path, env):
    template = (tmp_path / "missing").as_uri() + "/{name}.zip"
    with pytest.raises(RuntimeError) as err:
        resolve_dataset("toy", url_template=template)
    msg = str(err.value)
    assert "could not download" in msg and template.format(name="toy") in msg
    assert str(tmp_path / "cache" / "datasets" / "toy") in msg
    datasets = tmp_path / "cache" / "datasets"
    assert not any(datasets.iterdir())  # no half dataset, no leftovers


def test_download_bad_zip(tmp_path, env):
    write(tmp_path / "toy.zip", "not a zip")
    with pytest.raises(RuntimeError, match="could not download"):
        resolve_dataset("toy", url_template=tmp_path.as_uri() + "/{name}.zip")
    assert not (tmp_path / "cache" / "datasets" / "toy").exists()


def test_download_interrupted_during_unzip_leaves_nothing(tmp_path, env):
    make_zip(tmp_path / "toy.zip", "toy")
    real_extractall = zipfile.ZipFile.extractall

    def extract_then_die(self, path=None, *args, **kwargs):
        real_extractall(self, path, *args, **kwargs)
        raise KeyboardInterrupt  # as if the process were stopped mid-way

    env.setattr(zipfile.ZipFile, "extractall", extract_then_die)
    with pytest.raises(KeyboardInterrupt):
        resolve_dataset("toy", url_template=tmp_path.as_uri() + "/{name}.zip")
    assert not any((tmp_path / "cache" / "datasets").iterdir())


def test_download_zip_top_folder(tmp_path, env):
    make_zip(tmp_path / "toy.zip", "renamed")  # one top folder under another name: accepted
    got = resolve_dataset("toy", url_template=tmp_path.as_uri() + "/{name}.zip")
    assert got == tmp_path / "cache" / "datasets" / "toy" and (got / "corpus.jsonl").is_file()
    with zipfile.ZipFile(tmp_path / "two.zip", "w") as z:
        z.writestr("a/corpus.jsonl", "")
        z.writestr("b/corpus.jsonl", "")
    with pytest.raises(RuntimeError, match="one folder two/"):
        resolve_dataset("two", url_template=tmp_path.as_uri() + "/{name}.zip")
    assert [p.name for p in (tmp_path / "cache" / "datasets").iterdir()] == ["toy"]


def test_beir_url_template():
    assert BEIR_URL.format(name="scifact").endswith("/BEIR/datasets/scifact.zip")


# -- split_dev -----------------------------------------------------------------------------------------------
def test_split_dev():
    ids = [f"q{i}" for i in range(101)]
    train, dev = split_dev(ids, 0.2, seed=3)
    assert len(dev) == 20 and len(train) == 81
    assert sorted(train + dev) == sorted(ids) and train == sorted(train) and dev == sorted(dev)
    assert split_dev(list(reversed(ids)), 0.2, seed=3) == (train, dev)  # input order does not matter
    assert split_dev(ids, 0.2, seed=4) != (train, dev)
    # Pinned: a change of the procedure (or of NumPy's stream) would change splits across machines.
    assert split_dev([f"q{i}" for i in range(10)], 0.3, seed=0)[1] == ["q2", "q4", "q6"]
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            split_dev(ids, bad, seed=0)
    with pytest.raises(ValueError, match="duplicates"):
        split_dev(["a", "a", "b"], 0.5, seed=0)


# -- real data -----------------------------------------------------------------------------------------------
def test_scifact_real_files():
    if not SCIFACT.is_dir():
        pytest.skip(f"{SCIFACT} absent")
    files = dataset_files(SCIFACT)
    assert files.format == "beir"
    corpus = list(iter_texts(files.corpus))
    assert len(corpus) == 5183 and len({r.id for r in corpus}) == 5183
    assert sum(1 for p in files.queries for _ in iter_texts(p)) == 1109
    train = read_qrels(files.qrels["train"])
    assert len(train) == 809 and sum(len(d) for d in train.values()) == 919
