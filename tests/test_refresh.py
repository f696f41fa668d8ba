"""The refresh: mining against brute force, and real multi-process runs: 2-process DDP and kill-and-resume."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lit_dr.mining.miners import Ranking, UniformMiner
from lit_dr.mining.tables import load_table, overlap, save_table, table_digest

TESTS = Path(__file__).resolve().parent


def test_uniform_miner_drops_relevant_and_respects_the_window():
    ranked = np.array([[5, 3, 9, 1, 7, -1], [2, 4, 6, 8, 0, 1]])
    mined = UniformMiner(skip=1)(Ranking([10, 11], ranked), exclude=[{3, 7}, {0}], relevant=[{3, 7}, {0}], num=10,
                                 seed=0, generation=1)
    assert mined.candidates[10].tolist() == [1, 9]  # rank 0 skipped, relevant and -1 dropped
    assert mined.candidates[11].tolist() == [1, 4, 6, 8]
    assert mined.stats["positive_in_depth"] == 1.0
    assert mined.stats["positive_mean_rank"] == pytest.approx((2 + 5) / 2)


def test_uniform_miner_is_uniform_and_seeded():
    ranking = Ranking([0], np.arange(200)[None, :])
    draws = [UniformMiner()(ranking, [{0}], [{0}], 20, 0, g).candidates[0] for g in range(300)]
    assert all(len(d) == 20 and 0 not in d for d in draws)
    counts = np.bincount(np.concatenate(draws), minlength=200)[1:]
    assert counts.min() > 10 and counts.max() < 60  # about 30 each: no rank preference
    again = UniformMiner()(ranking, [{0}], [{0}], 20, 0, 5).candidates[0]
    assert np.array_equal(again, draws[5])


def test_mined_negatives_match_brute_force_topk():
    from lit_dr.index.faiss_index import build_index, search

    gen = torch.Generator().manual_seed(0)
    docs, queries = torch.randn(300, 16, generator=gen), torch.randn(20, 16, generator=gen)
    _, ranked = search(build_index(docs.numpy(), "Flat"), queries.numpy(), k=30)
    exact = torch.topk(queries @ docs.T, 30).indices.numpy()
    assert np.array_equal(ranked, exact)
    positives = [{int(exact[i, 0])} for i in range(20)]
    mined = UniformMiner()(Ranking(np.arange(20), ranked), positives, positives, 30, 0, 1)
    for i in range(20):
        assert set(mined.candidates[i].tolist()) == set(exact[i, 1:].tolist())


@pytest.mark.parametrize(("max_steps", "max_epochs", "step", "last_batch", "epoch", "finished"), [
    (-1, 3, 10, True, 2, True),  # the last batch of the last epoch
    (-1, 3, 10, True, 1, False),  # the last batch of an earlier epoch
    (100, -1, 10, True, 5, False),  # step budget, no epoch limit: an epoch's end is not the fit's end
    (100, None, 10, True, 5, False),
    (100, -1, 100, False, 5, True),  # the step budget reached
])
def test_refresh_knows_when_the_fit_is_over(max_steps, max_epochs, step, last_batch, epoch, finished):
    from types import SimpleNamespace

    from lit_dr.training import NegativeRefresh

    trainer = SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs, global_step=step, is_last_batch=last_batch,
                              current_epoch=epoch)
    assert NegativeRefresh._finished(trainer) is finished


def test_table_files_round_trip(tmp_path):
    table = {3: np.array([1, 2]), 7: np.array([], dtype=np.int64)}
    queries = {1: np.array([4])}
    save_table(tmp_path / "t.npz", table, queries)
    loaded, loaded_q = load_table(tmp_path / "t.npz")
    assert table_digest(loaded, loaded_q) == table_digest(table, queries)
    assert table_digest(table, None) != table_digest({3: np.array([1, 3]), 7: np.array([])}, None)
    assert overlap({3: np.array([1, 2])}, {3: np.array([2, 5])}) == 0.5


# -- real processes -----------------------------------------------------------------------------------------
def write_config(path: Path, tiny_beir, tiny_model_dir, cache_dir, callback: dict, trainer: dict) -> Path:
    config = {
        "seed_everything": 0,
        "model": {"class_path": "lit_dr.BM25Negatives", "init_args": {
            "encoder": {"class_path": "lit_dr.Encoder",
                        "init_args": {"model_name_or_path": tiny_model_dir, "normalize": True}},
            "temperature": 0.1,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}}}},
        "data": {"dataset": str(tiny_beir), "cache_dir": cache_dir, "train_batch_size": 4, "num_negatives": 2,
                 "negatives": "none", "show_progress": False},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 12, "limit_val_batches": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "deterministic": True,
                    "default_root_dir": str(path.parent),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(path.parent / "logs")}},
                    "callbacks": [callback, {"class_path": "lit_dr.objectives.random_state.RandomState"}],
                    **trainer},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def lit_dr(*args, env=None, wait=True):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "WANDB_MODE": "disabled", **(env or {})}
    cmd = [sys.executable, "-m", "lit_dr", *args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def kill_at_marker(proc: subprocess.Popen, marker: Path, what: str, timeout_s: float = 240) -> None:
    """SIGKILL `proc` (no handler runs, nothing is flushed) as soon as it has written `marker`."""
    deadline = time.time() + timeout_s
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"the run never reached {what}"
        time.sleep(0.2)
    proc.kill()
    proc.wait()


def refresh_records(table_dir: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (table_dir / "refreshes.jsonl").read_text().splitlines()]
    return {r["generation"]: r for r in records}  # a resumed run appends: the last record of each wins


def run_with_kill(tmp, tiny_beir, tiny_model_dir, cache_dir, pause_at: str):
    tmp.mkdir(parents=True)
    marker = tmp / "paused"
    refresh = {"class_path": "refresh_probes.PausingRefresh", "init_args": {
        "every_n_steps": 4, "depth": 20, "num_negatives": 5, "table_dir": str(tmp / "neg"),
        "pause_generation": 3, "pause_at": pause_at, "marker": str(marker)}}
    checkpoints = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": str(tmp / "ckpt"), "every_n_train_steps": 2, "save_top_k": -1, "filename": "s{step}", "auto_insert_metric_name": False}}
    config = write_config(tmp / "fit.yaml", tiny_beir, tiny_model_dir, cache_dir, refresh, {})
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["callbacks"].append(checkpoints)
    config.write_text(yaml.safe_dump(cfg))
    return config, marker


def final_weights(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / "s12.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("pause_at", ["mining", "written"])
def test_kill_and_resume_continues_like_an_uninterrupted_run(pause_at, tmp_path, tiny_beir, tiny_model_dir,
                                                             cache_dir):
    ref_cfg, _ = run_with_kill(tmp_path / "ref", tiny_beir, tiny_model_dir, cache_dir, pause_at)
    lit_dr("fit", "--config", str(ref_cfg), env={"NO_PAUSE": "1"})

    config, marker = run_with_kill(tmp_path / "killed", tiny_beir, tiny_model_dir, cache_dir, pause_at)
    kill_at_marker(lit_dr("fit", "--config", str(config), wait=False), marker, "the third refresh")
    ckpts = sorted((tmp_path / "killed" / "ckpt").glob("s*.ckpt"), key=lambda p: int(p.stem[1:]))
    assert ckpts[-1].name == "s6.ckpt"  # the refresh at step 8 was under way: nothing from step 8 on
    lit_dr("fit", "--config", str(config), "--ckpt_path", str(ckpts[-1]), env={"NO_PAUSE": "1"})

    ref, resumed = refresh_records(tmp_path / "ref" / "neg"), refresh_records(tmp_path / "killed" / "neg")
    # Refreshes at steps 0, 4 and 8; none at step 12, the last step, where nothing would use it.
    assert sorted(ref) == sorted(resumed) == [1, 2, 3]
    for g in ref:
        assert (resumed[g]["step"], resumed[g]["digest"]) == (ref[g]["step"], ref[g]["digest"]), g
    # Finished work is not redone: a table already written before the kill is loaded.
    assert resumed[3].get("reused", 0.0) == (1.0 if pause_at == "written" else 0.0)
    a, b = final_weights(tmp_path / "ref" / "ckpt"), final_weights(tmp_path / "killed" / "ckpt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_ddp_processes_mine_what_one_process_mines(tmp_path, tiny_beir, tiny_model_dir, cache_dir):
    digests = {}
    for devices in (1, 2):
        run = tmp_path / f"d{devices}"
        run.mkdir()
        refresh = {"class_path": "refresh_probes.RankRecordingRefresh", "init_args": {
            "every_n_steps": 1000, "depth": 20, "num_negatives": 5, "table_dir": str(run / "neg"),
            "mine_queries": True, "num_negative_queries": 3, "record_dir": str(run), "timeout_s": 120}}
        trainer = {"devices": devices, "max_steps": 2}
        if devices == 2:
            trainer["strategy"] = "ddp"
        config = write_config(run / "fit.yaml", tiny_beir, tiny_model_dir, cache_dir, refresh, trainer)
        lit_dr("fit", "--config", str(config))
        digests[devices] = {p.name: p.read_text() for p in run.glob("rank*-g1.txt")}
    assert sorted(digests[2]) == ["rank0-g1.txt", "rank1-g1.txt"]
    assert digests[2]["rank0-g1.txt"] == digests[2]["rank1-g1.txt"] == digests[1]["rank0-g1.txt"]
