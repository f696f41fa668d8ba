"""A shortened fit ends evaluated and says where everything went; piped, it logs its progress; its dev split is
written into the run directory and can be scored again; a pipeline checks its stages before the first one runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lit_dr.commands.cli import run
from lit_dr.data.formats import read_qrels
from lit_dr.training.progress import FitClock, duration

from conftest import write_tiny_fit_config


def short_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir, **trainer) -> Path:
    """The tiny fit with the CPU recipes' schedule: validation every 8 epochs, so a 3-step fit is never validated
    by the loop itself."""
    return write_tiny_fit_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir, "short", **{
        "max_epochs": 8, "check_val_every_n_epoch": 8, "enable_model_summary": False, **trainer})


def evaluations(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "runs" / "evaluations.jsonl").read_text().splitlines()]


def test_a_short_fit_ends_with_dev_metrics_a_best_checkpoint_and_a_summary(tmp_path, tiny_beir, tiny_model_dir,
                                                                            cache_dir, capsys, caplog):
    config = short_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir)
    cli = run(["fit", "--config", str(config), "--trainer.max_steps=3", "--trainer.enable_progress_bar=false"])
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    outcome = json.loads((run_dir / "fit.json").read_text())
    assert outcome["global_step"] == 3 and set(outcome["metrics"]) >= {"val/ndcg@10", "val/recall@100"}
    assert outcome["best_model_score"] == outcome["metrics"]["val/ndcg@10"]
    assert Path(outcome["best_model_path"]).name == "epoch0-step3.ckpt" and Path(outcome["best_model_path"]).is_file()
    assert Path(outcome["last_model_path"]) == run_dir / "checkpoints" / "last.ckpt"
    assert Path(outcome["run_file"]) == run_dir / "runs" / "dev-step0000003.trec"
    assert outcome["run_dir"] == str(run_dir) and outcome["wall_time_s"] > 0
    assert [e["step"] for e in evaluations(run_dir)] == [3]  # once, at the last step
    out = capsys.readouterr().out
    assert f"lit-dr fit: run directory {run_dir}" in out  # at the start
    end = out[out.index("lit-dr fit: done in"):].splitlines()
    assert end[0].endswith(", 3 steps")
    assert end[1] == f"  run directory    {run_dir}"
    ndcg = cli.trainer.callback_metrics["val/ndcg@10"]
    assert end[2].startswith(f"  dev metrics      step 3: ndcg@10 {ndcg:.4f}  mrr@10 ")
    assert end[3] == f"  best checkpoint  {outcome['best_model_path']} (val/ndcg@10 = {ndcg:.4f})"
    assert end[4] == f"  last checkpoint  {run_dir / 'checkpoints' / 'last.ckpt'}"
    assert end[5] == f"  run file         {outcome['run_file']}"

    # validate of that checkpoint: the same figure, summarised the same way, from the fit's own corpus embeddings.
    with caplog.at_level("INFO", logger="lit_dr"):
        val = run(["validate", "--config", str(config), "--ckpt_path", outcome["best_model_path"],
                   "--trainer.enable_progress_bar=false"])
    embeddings = run_dir / "embeddings" / "corpus-step0000003"
    assert f"reusing the corpus embeddings of step 3 the fit wrote: {embeddings}" in caplog.text
    assert val.trainer.callback_metrics["val/ndcg@10"] == ndcg
    out = capsys.readouterr().out
    assert "lit-dr validate: run directory" in out
    end = out[out.index("lit-dr validate: done in"):].splitlines()
    assert end[2] == f"  dev metrics      step 3: {end[2].split(': ', 1)[1]}" and f"ndcg@10 {ndcg:.4f}" in end[2]
    assert end[3] == f"  checkpoint       {outcome['best_model_path']}"
    # Encoded otherwise: the embeddings' record names what differs; the fit's files are left alone.
    caplog.clear()
    with caplog.at_level("INFO", logger="lit_dr"):
        run(["validate", "--config", str(config), "--ckpt_path", outcome["best_model_path"],
             "--trainer.enable_progress_bar=false", "--data.eval_batch_size=5"])
    assert "not reusable" in caplog.text and "batch_size differ" in caplog.text
    assert (embeddings / "source.json").is_file()


def test_a_fit_that_validates_its_last_step_is_not_evaluated_twice(tmp_path, tiny_beir, tiny_model_dir, cache_dir):
    config = short_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir, max_epochs=2, check_val_every_n_epoch=1,
                          limit_train_batches=2, enable_progress_bar=False)
    run(["fit", "--config", str(config)])
    assert [e["step"] for e in evaluations(tmp_path / "runs" / "tiny" / "version_0")] == [2, 4]


def test_a_piped_fit_logs_progress_lines(tmp_path, tiny_beir, tiny_model_dir, cache_dir, capsys):
    # Under capsys stdout is not a terminal, as in a SLURM log: the CLI's bar is LogProgress.
    config = short_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir)
    run(["fit", "--config", str(config), "--trainer.max_steps=3"])
    lines = capsys.readouterr().out.splitlines()
    assert "fit: 3 optimizer steps; a line every 1 steps" in lines
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1/3", "2/3", "3/3"]
    for field in ("epoch 1/8", "loss ", "lr ", "steps/s", "elapsed ", "left "):
        assert all(field in s for s in steps), field
    validation = [line for line in lines if line.startswith("validation at step 3: ")]
    assert len(validation) == 1 and "ndcg@10 " in validation[0]
    assert not any("\x1b[" in line or "\r" in line for line in lines)  # no colour codes, no bar fragments


def test_fit_clock_and_durations():
    assert duration(5.4) == "5s" and duration(65) == "1m 05s" and duration(3725) == "1h 02m 05s"
    assert duration(float("inf")) == "?"
    clock = FitClock()
    clock.start, clock.first_step, clock.total = 0.0, 0, 100.0
    clock.elapsed = lambda: 10.0  # 10 steps in 10 s: 90 left at 1 step/s
    assert clock.rate(10) == 1.0 and clock.left(10) == 90.0


def test_a_setup_before_the_first_step_is_not_the_rate_of_every_step(monkeypatch):
    """LTRe's corpus index (or ANCE's first refresh) takes minutes before step 1; the time left must not read it as
    the cost of each of the 40 steps (the clock used to start at on_train_start: '45m left' for a 3-minute fit)."""
    import lit_dr.training.progress as progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])

    class Trainer:
        estimated_stepping_batches, global_step = 40, 0

    clock, trainer = FitClock(), Trainer()
    clock.begin(trainer)
    now[0] = 140.0  # the index: 140 s before the first step
    for step in range(1, 41):
        now[0] += 0.5
        trainer.global_step = step
        clock.step_done(trainer)
        if step == 20:
            assert clock.rate(step) == pytest.approx(2.0) and clock.left(step) == pytest.approx(10.0)
    assert clock.since_begin() == pytest.approx(160.0)  # elapsed, as shown, is the whole fit's


def test_the_dev_split_is_written_into_the_run_and_scored_again(tmp_path, tiny_beir, tiny_model_dir, cache_dir,
                                                               caplog):
    from lit_dr.commands.inference import index_corpus, search_index

    config = short_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir, enable_progress_bar=False)
    cli = run(["fit", "--config", str(config), "--trainer.max_steps=3"])
    dev = tmp_path / "runs" / "tiny" / "version_0" / "dev"
    dm = cli.datamodule
    rows = dm.split_rows["dev"]
    queries = [json.loads(line) for line in (dev / "queries.jsonl").read_text().splitlines()]
    assert [q["_id"] for q in queries] == dm.query_ids(rows)
    assert [q["text"] for q in queries] == list(dm.queries.texts(rows.tolist()))
    qrels = read_qrels(dev / "qrels.tsv")
    assert set(qrels) == set(dm.query_ids(rows)) and not set(qrels) & set(dm.query_ids(dm.split_rows["train"]))
    about = json.loads((dev / "split.json").read_text())
    assert about["carved_from_train"] and about["queries"] == len(rows) and about["seed"] == 0

    # Scored again from those files (the run's dev directory, or the run directory with --split dev), the figure
    # is the fit's: same checkpoint, same queries, same judgments.
    ckpt = json.loads((dev.parent / "fit.json").read_text())["best_model_path"]
    index_corpus(ckpt, tiny_beir, tmp_path / "index", show_progress=False, cache_dir=Path(cache_dir))
    for queries_arg, split in ((dev, None), (dev.parent, "dev")):
        metrics = search_index(tmp_path / "index", queries_arg, tmp_path / "dev.trec", split=split,
                               show_progress=False, cache_dir=Path(cache_dir))
        assert metrics["ndcg@10"] == pytest.approx(float(cli.trainer.callback_metrics["val/ndcg@10"]), abs=1e-6)
    # `lit-dr test` scores them too, given the run's dev folder as the test judgments.
    tested = run(["test", "--config", str(config), "--ckpt_path", ckpt, f"--data.test_qrels={dev}"])
    assert float(tested.trainer.callback_metrics["test/ndcg@10"]) == pytest.approx(
        float(cli.trainer.callback_metrics["val/ndcg@10"]), abs=1e-6)
    assert tested.datamodule.files.qrels["test"] == dev / "qrels.tsv"
    # The data set itself has no dev qrels: the error says where the carved split is.
    with pytest.raises(ValueError, match="carved out of the training queries at run time.*<run directory>/dev"):
        search_index(tmp_path / "index", tiny_beir, tmp_path / "x.trec", split="dev", show_progress=False,
                     cache_dir=Path(cache_dir))
    # Training queries: scored, with a warning.
    with caplog.at_level("WARNING"):
        search_index(tmp_path / "index", tiny_beir, tmp_path / "train.trec", split="train", show_progress=False,
                     cache_dir=Path(cache_dir))
    assert "the model trained on" in caplog.text


def test_a_pipeline_checks_every_stage_before_the_first_runs(tmp_path, tiny_beir, tiny_model_dir, cache_dir,
                                                             monkeypatch, capsys):
    import lit_dr.commands.pipeline
    from lit_dr.commands.pipeline import PipelineError, run_pipeline

    config = short_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir)
    stages = [{"name": "a", "configs": [str(config)], "args": ["--best_checkpoint=null"]},
              {"name": "b", "configs": [str(config)], "warm_start": "a"},
              {"name": "c", "configs": [str(config)], "args": ["--trainer.limit_val_batches=0"]}]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "p"), "stages": stages}))
    monkeypatch.setattr(lit_dr.commands.pipeline, "run_fit", lambda command: pytest.fail("a stage ran"))
    with pytest.raises(PipelineError, match=r"nothing ran(.|\n)*stage 'a' would leave no best checkpoint for b: no "
                                            r"ModelCheckpoint monitors"):
        run_pipeline(path)
    # A dry run warns about the same, and runs nothing; 'c' hands nothing on, so its validation is its own affair.
    run_pipeline(path, dry_run=True)
    out = capsys.readouterr().out
    assert "warning: stage 'a' would leave no best checkpoint for b" in out and "stage 'c'" not in out.split("#")[0]
    # A typo in a stage's arguments shows before anything runs, too.
    with pytest.raises(PipelineError, match="stage 'a': its arguments do not parse"):
        run_pipeline(path, ["--trainer.max_stepz=3"])
    stages[0]["args"] = []
    path.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "p"), "stages": stages[:2]}))
    run_pipeline(path, dry_run=True)
    assert "# check: every stage's config resolves" in capsys.readouterr().out


def test_long_loops_log_lines_without_a_terminal_and_no_bar_fragments(monkeypatch, caplog, capsys):
    import lit_dr.data.progress as progress

    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a line at every update
    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    with caplog.at_level("INFO", logger="lit_dr"), progress.progress("encode corpus", 10) as bar:
        bar.update(4)
        bar.update(6)
    lines = [r.getMessage() for r in caplog.records if r.name == "lit_dr.progress"]
    assert lines[0].startswith("encode corpus: 4/10 (40 %) texts after ") and lines[1].startswith("encode corpus: 10/10")
    assert lines[-1].startswith("encode corpus: 10 texts in ")
    assert "\r" not in capsys.readouterr().err  # no tqdm
