"""`NegativeRefresh(query_chunks=K)` (ANCE's `ann_chunk_factor`): each refresh mines a K-th of the training queries,
chunk by chunk, and keeps the others' negatives; a resumed run continues the cycle; K=1 is the plain refresh."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from test_refresh import kill_at_marker, lit_dr, refresh_records, write_config

from lit_dr.mining.miners import UniformMiner
from lit_dr.mining.tables import chunk_partition, load_table, merge_tables, table_digest
from lit_dr.training import NegativeRefresh


class RecordingMiner(UniformMiner):
    """ANCE's uniform draw, remembering the keys of every call (the rows a refresh searched and mined for)."""

    def __init__(self, skip: int = 0) -> None:
        super().__init__(skip)
        self.calls: list[tuple[int, list[int]]] = []  # (generation, keys)

    def __call__(self, ranking, exclude, relevant, num, seed=0, generation=0):
        self.calls.append((generation, ranking.keys.tolist()))
        return super().__call__(ranking, exclude, relevant, num, seed, generation)


class TableRecordingRefresh(NegativeRefresh):
    """Keeps a copy of the data module's tables just before each refresh."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.before: dict[int, tuple[dict, dict | None]] = {}

    def refresh(self, trainer, pl_module):
        table = trainer.datamodule.negatives
        self.before[self.generation + 1] = (dict(table.candidates), table.query_candidates)
        return super().refresh(trainer, pl_module)


# -- pure -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_rows", "chunks"), [(26, 3), (10, 10), (7, 1), (101, 5)])
def test_chunk_partition_covers_every_row_once_in_near_equal_sorted_chunks(num_rows, chunks):
    parts = chunk_partition(num_rows, chunks, seed=3)
    assert len(parts) == chunks
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(num_rows))  # every row exactly once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)
    again = chunk_partition(num_rows, chunks, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_chunk_partition_depends_on_the_seed_and_checks_its_arguments():
    a, b = chunk_partition(101, 5, seed=0), chunk_partition(101, 5, seed=1)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    for chunks in (0, 102):
        with pytest.raises(ValueError, match="expected 1 <= chunks <= 101"):
            chunk_partition(101, chunks, seed=0)


def test_merge_tables_keeps_old_keys_and_replaces_new_ones():
    previous = {1: np.array([4, 5]), 2: np.array([6])}
    merged = merge_tables(previous, {2: np.array([7, 8]), 3: np.array([9])})
    assert {k: v.tolist() for k, v in merged.items()} == {1: [4, 5], 2: [7, 8], 3: [9]}
    assert previous[2].tolist() == [6] and sorted(previous) == [1, 2]  # pure: the previous table is untouched
    assert {k: v.tolist() for k, v in merge_tables(None, {5: np.array([1])}).items()} == {5: [1]}


def test_query_chunks_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"query_chunks=0\): expected >= 1"):
        NegativeRefresh(query_chunks=0)
    refresh = NegativeRefresh(query_chunks=4, table_dir=str(tmp_path))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(split_rows={"train": np.arange(3)}))
    with pytest.raises(ValueError, match="training split has only 3 queries"):
        refresh.on_train_start(trainer, None)


# -- real fits ------------------------------------------------------------------------------------------------
def fit(tmp_path: Path, tiny_beir, tiny_model_dir, cache_dir, max_steps: int, **refresh_args):
    """An in-process fit with BM25 warm-start negatives and a `TableRecordingRefresh` using a `RecordingMiner`."""
    from lit_dr.commands.cli import run

    tmp_path.mkdir(parents=True, exist_ok=True)
    refresh = {"class_path": "test_fractional_refresh.TableRecordingRefresh", "init_args": {
        "depth": 20, "num_negatives": 5, "table_dir": str(tmp_path / "neg"),
        "miner": {"class_path": "test_fractional_refresh.RecordingMiner"}, **refresh_args}}
    config = write_config(tmp_path / "fit.yaml", tiny_beir, tiny_model_dir, cache_dir, refresh,
                          {"max_steps": max_steps})
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["negatives"] = "bm25"
    config.write_text(yaml.safe_dump(cfg))
    cli = run(["fit", "--config", str(config)])
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, TableRecordingRefresh))
    return cli, callback


def tables_by_generation(table_dir: Path) -> dict[int, tuple[dict, dict | None]]:
    return {int(p.name.split("-")[1][1:]): load_table(p) for p in table_dir.glob("negatives-g*.npz")}


def test_each_training_query_is_mined_once_per_cycle(tmp_path, tiny_beir, tiny_model_dir, cache_dir):
    k = 3
    cli, refresh = fit(tmp_path, tiny_beir, tiny_model_dir, cache_dir, max_steps=12, every_n_steps=2,
                       query_chunks=k)  # refreshes at steps 0, 2, ..., 10: two cycles
    train = set(cli.datamodule.split_rows["train"].tolist())
    keys = dict(refresh.miner.calls)  # one call per refresh without mine_queries
    assert len(refresh.miner.calls) == len(keys) == len(refresh.history) == 2 * k
    for start in (1, 1 + k):
        cycle = [set(keys[g]) for g in range(start, start + k)]
        assert set().union(*cycle) == train and sum(map(len, cycle)) == len(train)  # each exactly once
    assert all(keys[g] == keys[g + k] for g in range(1, k + 1))  # partitioned once: the same chunks again
    assert max(map(len, keys.values())) - min(map(len, keys.values())) <= 1
    for record in refresh.history:
        g = record["generation"]
        assert (record["query_chunks"], record["chunk"]) == (k, (g - 1) % k)
        assert record["queries_mined"] == len(keys[g])
    # Only the mined rows change; the others keep their negatives, from BM25 until their first refresh.
    tables = tables_by_generation(tmp_path / "neg")
    assert sorted(tables) == list(range(1, 2 * k + 1))
    for g, (after, _) in tables.items():
        before = refresh.before[g][0]
        assert set(before) >= train and set(after) == set(before)
        kept = [q for q in before if q not in set(keys[g])]
        assert len(kept) == len(before) - len(keys[g])
        assert all(np.array_equal(after[q], before[q]) for q in kept)
        assert any(not np.array_equal(after[q], before[q]) for q in keys[g])
    assert table_digest(*tables[2 * k]) == refresh.table_digest


def test_dance_mines_negative_queries_for_the_chunks_positive_documents(tmp_path, tiny_beir, tiny_model_dir,
                                                                        cache_dir):
    cli, refresh = fit(tmp_path, tiny_beir, tiny_model_dir, cache_dir, max_steps=6, every_n_steps=2,
                       query_chunks=2, mine_queries=True, num_negative_queries=3)  # refreshes at steps 0, 2, 4
    dm = cli.datamodule
    calls = refresh.miner.calls  # per refresh: the chunk's queries, then their positive documents
    assert [g for g, _ in calls] == [1, 1, 2, 2, 3, 3]
    queries = {g: calls[2 * (g - 1)][1] for g in (1, 2, 3)}
    docs = {g: calls[2 * (g - 1) + 1][1] for g in (1, 2, 3)}
    assert set(queries[1]) | set(queries[2]) == set(dm.split_rows["train"].tolist()) and queries[3] == queries[1]
    assert not set(queries[1]) & set(queries[2])
    tables = tables_by_generation(tmp_path / "neg")
    for g in (1, 2, 3):
        assert docs[g] == sorted({int(p) for q in queries[g] for p in dm.positives[q]})
        assert refresh.history[g - 1]["documents_mined"] == len(docs[g])
        before = refresh.before[g][1] or {}
        after = tables[g][1]
        assert set(after) == set(before) | set(docs[g])  # the query table is merged the same way
        assert all(np.array_equal(after[d], before[d]) for d in before if d not in set(docs[g]))


@pytest.mark.parametrize("mine_queries", [False, True])
def test_one_chunk_is_the_plain_refresh(mine_queries, tmp_path, tiny_beir, tiny_model_dir, cache_dir):
    runs = {}
    for name, extra in (("default", {}), ("one", {"query_chunks": 1})):
        runs[name] = fit(tmp_path / name, tiny_beir, tiny_model_dir, cache_dir, max_steps=3, every_n_steps=2,
                         mine_queries=mine_queries, num_negative_queries=3, **extra)
    (cli, default), (_, one) = runs["default"], runs["one"]
    assert len(default.history) == len(one.history) == 2
    digests = {n: [r["digest"] for r in refresh_records(tmp_path / n / "neg").values()] for n in runs}
    assert digests["default"] == digests["one"]
    assert table_digest(*load_table(next((tmp_path / "one" / "neg").glob("negatives-g0002-*.npz")))) == one.table_digest
    train = cli.datamodule.split_rows["train"]
    for record in one.history:
        assert (record["query_chunks"], record["chunk"], record["queries_mined"]) == (1, 0, len(train))
    assert [k for _, k in one.miner.calls][:1] == [train.tolist()]  # every training query, in order


# -- kill and resume in the middle of a cycle ---------------------------------------------------------------------
def chunked_run(tmp: Path, tiny_beir, tiny_model_dir, cache_dir) -> tuple[Path, Path]:
    tmp.mkdir(parents=True)
    marker = tmp / "paused"
    refresh = {"class_path": "refresh_probes.PausingRefresh", "init_args": {
        "every_n_steps": 4, "depth": 20, "num_negatives": 5, "table_dir": str(tmp / "neg"), "query_chunks": 3,
        "pause_generation": 3, "pause_at": "mining", "marker": str(marker)}}
    config = write_config(tmp / "fit.yaml", tiny_beir, tiny_model_dir, cache_dir, refresh, {"max_steps": 16})
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["negatives"] = "bm25"
    cfg["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": str(tmp / "ckpt"), "every_n_train_steps": 2, "save_top_k": -1, "filename": "s{step}",
        "auto_insert_metric_name": False}})
    config.write_text(yaml.safe_dump(cfg))
    return config, marker


def test_resume_in_the_middle_of_a_cycle_continues_it(tmp_path, tiny_beir, tiny_model_dir, cache_dir):
    ref_cfg, _ = chunked_run(tmp_path / "ref", tiny_beir, tiny_model_dir, cache_dir)
    lit_dr("fit", "--config", str(ref_cfg), env={"NO_PAUSE": "1"})
    config, marker = chunked_run(tmp_path / "killed", tiny_beir, tiny_model_dir, cache_dir)
    kill_at_marker(lit_dr("fit", "--config", str(config), wait=False), marker, "the third refresh")
    ckpts = sorted((tmp_path / "killed" / "ckpt").glob("s*.ckpt"), key=lambda p: int(p.stem[1:]))
    assert ckpts[-1].name == "s6.ckpt"  # after refreshes 1 and 2 (chunks 0 and 1): the cycle is unfinished
    lit_dr("fit", "--config", str(config), "--ckpt_path", str(ckpts[-1]), env={"NO_PAUSE": "1"})

    ref, resumed = refresh_records(tmp_path / "ref" / "neg"), refresh_records(tmp_path / "killed" / "neg")
    sequence = [(g, r["step"], r["chunk"], r["queries_mined"], r["digest"]) for g, r in sorted(ref.items())]
    assert [(g, step, chunk) for g, step, chunk, _, _ in sequence] == [(1, 0, 0), (2, 4, 1), (3, 8, 2), (4, 12, 0)]
    assert sequence == [(g, r["step"], r["chunk"], r["queries_mined"], r["digest"]) for g, r in sorted(resumed.items())]


def test_a_chunk_is_mined_as_a_full_refresh_mines_its_queries(tmp_path, tiny_beir, tiny_model_dir, cache_dir):
    """Before the first step the weights are the same and the draws are seeded by (seed, generation, row): the
    chunk's rows, and its positive documents' negative queries, are exactly what the full refresh gives them."""
    miner = {"class_path": "lit_dr.mining.miners.PositiveAwareMiner", "init_args": {"max_relative": 0.99}}
    args = {"every_n_steps": 1000, "mine_queries": True, "num_negative_queries": 3, "miner": miner}
    _, full = fit(tmp_path / "full", tiny_beir, tiny_model_dir, cache_dir, max_steps=1, **args)
    cli, part = fit(tmp_path / "part", tiny_beir, tiny_model_dir, cache_dir, max_steps=1, query_chunks=3, **args)
    (full_table, full_queries), = tables_by_generation(tmp_path / "full" / "neg").values()
    (table, queries), = tables_by_generation(tmp_path / "part" / "neg").values()
    train = cli.datamodule.split_rows["train"]
    rows = train[chunk_partition(len(train), 3, seed=0)[0]]
    assert part.history[0]["queries_mined"] == len(rows) < len(train)
    assert part.history[0]["margin_dropped"] > 0  # the positive scores were used
    for q in rows:
        assert np.array_equal(table[int(q)], full_table[int(q)]), q
    docs = {int(p) for q in rows for p in cli.datamodule.positives[q]}
    for d in docs:
        assert np.array_equal(queries[d], full_queries[d]), d
    assert set(queries) == docs  # no query table before: only the chunk's documents have one


def test_two_ddp_processes_mine_a_chunk_as_one_process(tmp_path, tiny_beir, tiny_model_dir, cache_dir):
    digests = {}
    for devices in (1, 2):
        run = tmp_path / f"d{devices}"
        run.mkdir()
        refresh = {"class_path": "refresh_probes.RankRecordingRefresh", "init_args": {
            "every_n_steps": 1000, "depth": 20, "num_negatives": 5, "table_dir": str(run / "neg"),
            "mine_queries": True, "num_negative_queries": 3, "query_chunks": 3, "record_dir": str(run),
            "timeout_s": 120, "miner": {"class_path": "lit_dr.mining.miners.PositiveAwareMiner",
                                        "init_args": {"max_relative": 0.99}}}}
        trainer = {"devices": devices, "max_steps": 2, **({"strategy": "ddp"} if devices == 2 else {})}
        config = write_config(run / "fit.yaml", tiny_beir, tiny_model_dir, cache_dir, refresh, trainer)
        cfg = yaml.safe_load(config.read_text())
        cfg["data"]["negatives"] = "bm25"
        config.write_text(yaml.safe_dump(cfg))
        lit_dr("fit", "--config", str(config))
        digests[devices] = {p.name: p.read_text() for p in run.glob("rank*-g1.txt")}
        assert refresh_records(run / "neg")[1]["chunk"] == 0
    assert sorted(digests[2]) == ["rank0-g1.txt", "rank1-g1.txt"]
    assert digests[2]["rank0-g1.txt"] == digests[2]["rank1-g1.txt"] == digests[1]["rank0-g1.txt"]
