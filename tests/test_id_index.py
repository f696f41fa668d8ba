"""IdIndex: the sorted, memory-mapped id -> row index of a token store answers as the dict it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from lit_dr.data.id_index import SORTED_IDS, SORTED_ROWS, IdIndex, RowMap
from lit_dr.data.token_store import TokenStore, cached_store

ODD = ["é", "ü1", "日本", "日本語", "a", "ab", "abc", "b", "Z", "0", "00", "10", "9", "😀", "x" * 40, "-", "a-b"]


def random_ids(rng: np.random.Generator, n: int) -> list[str]:
    alphabet = list("abcXYZ019-_.") + ["é", "ß", "日", "😀"]
    ids = {"".join(rng.choice(alphabet, size=rng.integers(1, 9))) for _ in range(n)}
    return sorted(ids | set(ODD), key=lambda _: rng.random())  # distinct, in a random row order


def test_find_and_get_equal_the_dict_on_random_ids():
    rng = np.random.default_rng(0)
    ids = random_ids(rng, 3000)
    row_of = {i: r for r, i in enumerate(ids)}
    index = IdIndex.build(np.array(ids), "ids.npy")
    absent = ["nope", "a" * 60, "日本語x", "", "é" * 9, "ab\x00", "abc ", " abc"]
    queries = [*rng.choice(ids, size=2000).tolist(), *ids[:50], *ids[:50], *absent]  # repeats included
    assert index.find(queries).tolist() == [row_of.get(q, -1) for q in queries]
    assert [index.get(q) for q in queries] == [row_of.get(q) for q in queries]
    assert index.get(5) is None and index.find([]).tolist() == []
    assert index.rows(ids).tolist() == list(range(len(ids)))


def test_a_repeated_id_keeps_the_last_row_as_a_dict_built_in_row_order():
    ids = ["b", "a", "b", "c", "a"]
    index = IdIndex.build(np.array(ids), "ids.npy")
    assert index.find(["a", "b", "c"]).tolist() == [{i: r for r, i in enumerate(ids)}[k] for k in "abc"]


def test_rows_names_the_missing_id_and_the_file():
    index = IdIndex.build(np.array(["d1", "d2"]), "/data/tokens/corpus/ids.npy")
    with pytest.raises(KeyError) as error:
        index.rows(["d2", "dX", "dY"])
    assert "'dX'" in str(error.value) and "/data/tokens/corpus/ids.npy" in str(error.value)
    assert "2 of 3" in str(error.value)


def test_written_and_memory_mapped_on_reopen(tmp_path):
    ids = np.array(ODD)
    first = IdIndex.open(tmp_path, ids)
    assert (tmp_path / SORTED_IDS).is_file() and (tmp_path / SORTED_ROWS).is_file()
    again = IdIndex.open(tmp_path, ids)
    assert isinstance(again.keys, np.memmap) and isinstance(again.row_at, np.memmap)
    assert again.find(ODD).tolist() == first.find(ODD).tolist() == list(range(len(ODD)))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file
    with pytest.raises(ValueError, match="delete the two id_index files"):
        IdIndex.open(tmp_path, ids[:-1])


def test_a_read_only_directory_keeps_the_index_in_memory(tmp_path, monkeypatch, caplog):
    def refuse(self, directory):
        raise PermissionError(13, "Permission denied", str(directory))

    monkeypatch.setattr(IdIndex, "write", refuse)  # as a shared cache another user built
    with caplog.at_level("INFO", logger="lit_dr.data.id_index"):
        index = IdIndex.open(tmp_path, np.array(["q1", "q2"]))
    assert index.find(["q2", "q3"]).tolist() == [1, -1] and not (tmp_path / SORTED_IDS).exists()
    assert "kept in memory" in caplog.text


def test_row_map_is_the_old_dict(tmp_path):
    ids = np.array(ODD)
    row_map = RowMap(IdIndex.build(ids, "ids.npy"), ids)
    old = {str(i): r for r, i in enumerate(ids)}
    assert row_map == old and list(row_map) == list(old) and len(row_map) == len(old)
    assert "日本" in row_map and "日" not in row_map and 3 not in row_map
    assert row_map["😀"] == old["😀"] and row_map.get("nope", -7) == -7
    with pytest.raises(KeyError):
        row_map["nope"]


def test_a_store_built_before_the_index_gets_it_on_first_use(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    source = tmp_path / "corpus.tsv"
    source.write_text("".join(f"{i}\tword {i}\n" for i in ["d3", "d1", "é2", "d10"]))
    store = cached_store("corpus", [source], AutoTokenizer.from_pretrained(tiny_model_dir), 8, tmp_path / "cache",
                         show_progress=False)
    assert (store.directory / SORTED_IDS).is_file()  # a new store is built with it
    texts = store.text_sequence()  # what BM25 reads: a sequence decoded on access
    assert len(texts) == 4 and list(texts) == list(store.texts()) and texts[-1] == texts[3] == "word d10"
    for name in (SORTED_IDS, SORTED_ROWS):
        (store.directory / name).unlink()
    old = TokenStore(store.directory)
    assert old.rows(["é2", "d3"]).tolist() == [2, 0] and old.row_of["d10"] == 3
    assert (store.directory / SORTED_IDS).is_file()
