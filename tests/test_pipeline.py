"""`lit-dr pipeline`: the pipeline YAMLs validate and every stage's config stack parses; mistakes name the file, stage
and field; two real stages chain through fit.json, and a second run skips both."""

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

import lit_dr.commands.pipeline
from lit_dr.commands.cli import run
from lit_dr.commands.pipeline import fit_command, load_pipeline, run_pipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINES = sorted((REPO / "configs" / "pipelines").glob("*.yaml"))


def test_there_is_a_pipeline_per_device():
    assert {p.stem for p in PIPELINES} >= {"cpu", "gpu"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_every_stage_parses(path, monkeypatch, capsys):
    # --print_config stops after parsing: GPU fragments parse here without a GPU.
    monkeypatch.chdir(REPO)  # the YAML's paths are relative to the current directory
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(sys, "argv", ["lit-dr"])  # LightningCLI warns when given args beside pytest's own
    pipeline = load_pipeline(path.relative_to(REPO))
    for stage in pipeline.stages:
        warm = "warm.ckpt" if stage.warm_start else None
        command = fit_command(pipeline, stage, warm)
        assert command[1:4] == ["-m", "lit_dr", "fit"]
        with pytest.raises(SystemExit) as done:
            run([*command[3:], "--print_config"])
        assert done.value.code in (0, None), stage.name
        resolved = yaml.safe_load(capsys.readouterr().out)
        assert resolved["trainer"]["default_root_dir"] == str(pipeline.root_dir / stage.name)
        # the device's fragments were stacked: configs/gpu/ ones select the GPU, the objective configs the CPU
        gpu = any(config.startswith("configs/gpu/") for config in stage.configs)
        assert resolved["trainer"]["accelerator"] == ("gpu" if gpu else "cpu")
        assert resolved["model"]["init_args"]["init_checkpoint"] == warm


def write_pipeline(tmp_path, stages: list[dict], **top) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "runs"), "stages": stages, **top}))
    return path


@pytest.mark.parametrize("stages, where", [
    ([{"name": "a", "configs": ["C"]}, {"name": "a", "configs": ["C"]}], "stage 'a': field 'name'"),
    ([{"name": "a", "configs": ["C"], "warm_start": "b"}, {"name": "b", "configs": ["C"]}],
     "stage 'a': field 'warm_start'"),
    ([{"name": "a", "configs": ["C", "missing.yaml"]}], "stage 'a': field 'configs'.*missing.yaml"),
    ([{"name": "a", "configs": ["C"], "warmstart": "b"}], "stage 'a': unknown field.*warmstart"),
    ([{"name": "a", "configs": ["C"], "args": ["--trainer.default_root_dir=x"]}], "stage 'a': field 'args'"),
    (None, "field 'stages' is missing"),
], ids=["duplicate", "later-warm-start", "missing-config", "unknown-field", "root-dir-arg", "no-stages"])
def test_mistakes_are_named_before_anything_runs(tmp_path, monkeypatch, stages, where):
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    raw = {"root_dir": str(tmp_path / "runs")}
    if stages is not None:
        raw["stages"] = [{**s, "configs": [str(config) if c == "C" else c for c in s["configs"]]} for s in stages]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(lit_dr.commands.pipeline, "run_fit", lambda command: pytest.fail("a stage ran"))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: {where}"):
        run_pipeline(path)


def tiny_stage(tmp_path, name: str, model: str, tiny_beir, tiny_model_dir, cache_dir, **init_args) -> str:
    """A 2-step fit with one validation; the CLI's default checkpoints keep the best (by dev nDCG@10) and the last."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "seed_everything": 0,
        "model": {"class_path": model, "init_args": {
            "encoder": {"class_path": "lit_dr.Encoder", "init_args": {"model_name_or_path": tiny_model_dir}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}, **init_args}},
        "data": {"dataset": str(tiny_beir), "cache_dir": cache_dir, "train_batch_size": 4, "show_progress": False,
                 **({"num_negatives": 0, "negatives": "none"} if model == "lit_dr.LTRe" else {})},
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "enable_progress_bar": False,
                    "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "tiny"}}},
    }))
    return str(path)


def test_two_stages_chain_through_the_best_checkpoint_and_rerun_skips(tmp_path, tiny_beir, tiny_model_dir, cache_dir,
                                                                      monkeypatch, capsys):
    stages = [{"name": "bm25neg", "configs": [tiny_stage(tmp_path, "bm25neg", "lit_dr.BM25Negatives", tiny_beir,
                                                         tiny_model_dir, cache_dir)]},
              {"name": "ltre", "warm_start": "bm25neg", "configs": [
                  tiny_stage(tmp_path, "ltre", "lit_dr.LTRe", tiny_beir, tiny_model_dir, cache_dir, depth=20)]}]
    path = write_pipeline(tmp_path, stages)
    outcomes = run_pipeline(path)  # the subprocesses inherit LIT_DR_CACHE, WANDB_MODE, HF_HUB_OFFLINE
    first = outcomes["bm25neg"]
    assert first["monitor"] == "val/ndcg@10" and first["best_model_score"] == first["metrics"]["val/ndcg@10"]
    assert Path(first["best_model_path"]).is_absolute() and Path(first["best_model_path"]).is_file()
    assert Path(first["last_model_path"]).name == "last.ckpt" and first["global_step"] == 2
    resolved = yaml.safe_load(next((tmp_path / "runs" / "ltre").glob("**/config.yaml")).read_text())
    assert resolved["model"]["init_args"]["init_checkpoint"] == first["best_model_path"]
    assert "best dev nDCG@10" in capsys.readouterr().out  # the summary table

    monkeypatch.setattr(lit_dr.commands.pipeline, "run_fit", lambda command: pytest.fail(f"ran {command}"))
    assert run_pipeline(path) == outcomes
    out = capsys.readouterr().out
    assert f"stage bm25neg done: {first['best_model_path']} (val/ndcg@10 = " in out
    assert "stage ltre done: " in out


def test_a_failed_stage_or_one_without_a_best_checkpoint_stops_the_pipeline(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("{}")
    path = write_pipeline(tmp_path, [{"name": "a", "configs": [str(config)]},
                                     {"name": "b", "configs": [str(config)], "warm_start": "a"}])
    monkeypatch.setattr(lit_dr.commands.pipeline, "run_fit", lambda command: 3)
    with pytest.raises(lit_dr.commands.pipeline.PipelineError, match="stage 'a' failed with exit code 3"):
        run_pipeline(path)
    # A fit that never validated: its fit.json has no best checkpoint, and last.ckpt is no substitute.
    (tmp_path / "runs" / "a" / "v0").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "v0" / "fit.json").write_text(json.dumps(
        {"best_model_path": None, "best_model_score": None, "monitor": None, "last_model_path": str(config)}))
    with pytest.raises(lit_dr.commands.pipeline.PipelineError, match="stage 'a' has no best checkpoint.*check_val_every_n"):
        run_pipeline(path)
