"""The CLI: every YAML under configs/ parses and builds, fit/validate run, CLI checkpoints load from Python."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_dr import BiEncoderModule, BM25Negatives, RetrievalDataModule
from lit_dr.commands.cli import LitDrCLI, run
from lit_dr.evaluation.metrics import read_trec_run

from conftest import write_tiny_fit_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OBJECTIVES = sorted(p for p in CONFIGS.glob("*.yaml"))
FRAGMENTS = sorted(p for p in CONFIGS.glob("*/*.yaml") if p.parent.name not in ("sweeps", "pipelines"))


def build(args: list[str]) -> LitDrCLI:
    return LitDrCLI(BiEncoderModule, RetrievalDataModule, subclass_mode_model=True, args=args, run=False,
                    auto_configure_optimizers=False)


def test_there_is_a_config_per_objective():
    """Every objective module the package exports has a top-level config, and every config builds one of them."""
    import inspect

    import lit_dr

    modules = {name for name in lit_dr.__all__ if inspect.isclass(getattr(lit_dr, name))
               and issubclass(getattr(lit_dr, name), BiEncoderModule) and getattr(lit_dr, name) is not BiEncoderModule}
    assert modules == {"BM25Negatives", "SamToNe", "ANCE", "DANCE", "LTRe", "MarginMSE"}
    configured = {yaml.safe_load(p.read_text())["model"]["class_path"].removeprefix("lit_dr.") for p in OBJECTIVES}
    assert configured == modules
    assert {p.stem for p in OBJECTIVES} == {"bm25neg", "samtone", "ance", "dance_stage1", "dance", "ltre", "margin_mse"}


def test_every_yaml_under_configs_is_parsed_by_a_test():
    """Objectives and fragments here; sweeps in test_sweeps.py, pipelines in test_pipeline.py. A YAML in a new
    folder, or one level deeper, would otherwise never be parsed by the CLI."""
    elsewhere = {p for folder in ("sweeps", "pipelines") for p in (CONFIGS / folder).glob("*.yaml")}
    assert set(CONFIGS.rglob("*.yaml")) == set(OBJECTIVES) | set(FRAGMENTS) | elsewhere
    assert not list(CONFIGS.rglob("*.yml")), "name configs *.yaml: the tests look for that suffix"


@pytest.mark.parametrize("path", OBJECTIVES, ids=lambda p: p.name)
def test_objective_config_builds(path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cli = build(["--config", str(path)])
    assert cli.model.__class__.__name__.lower().startswith(path.stem[:4])
    assert cli.datamodule.hparams.tokenizer == "sentence-transformers/all-MiniLM-L6-v2"  # linked from the model


def leaves(tree: dict, prefix: str = "", list_items: bool = False):
    """(dotted key, value) of every leaf; with `list_items`, a list of mappings (callbacks) is entered too."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.", list_items)
        elif list_items and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield from leaves(dict(enumerate(value)), f"{prefix}{key}.", list_items)
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", FRAGMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fragment_stacks_on_an_objective(path, monkeypatch, capsys):
    # --print_config stops after parsing: fragments naming a GPU or a hub model parse here without one.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # A per-objective GPU fragment (configs/gpu/ltre.yaml) stacks on its own objective, the others on bm25neg.
    base = CONFIGS / f"{path.stem}.yaml" if path.parent.name == "gpu" else CONFIGS / "bm25neg.yaml"
    assert base.exists(), f"{path} has no objective config {base.name} to stack on"
    with pytest.raises(SystemExit) as done:
        run(["fit", "--config", str(base), "--config", str(path), "--print_config"])
    assert done.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    flat = dict(leaves(resolved))
    for key, value in leaves(yaml.safe_load(path.read_text())):
        assert flat.get(key) == value, (key, flat.get(key), value)


CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"
CHECKPOINT_KEYS = ("best_checkpoint", "last_checkpoint")


def resolved(args: list[str], capsys) -> dict:
    """The config `lit-dr fit ... --print_config` prints: parsed, defaults applied, nothing built."""
    with pytest.raises(SystemExit) as done:
        run(["fit", *args, "--print_config"])
    assert done.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def in_run_order(callbacks: list[dict]) -> list[dict]:
    """Lightning runs the ModelCheckpoint callbacks last, in their own order (`_reorder_callbacks`)."""
    return ([c for c in callbacks if c["class_path"] != CHECKPOINT]
            + [c for c in callbacks if c["class_path"] == CHECKPOINT])


@pytest.mark.parametrize("path", OBJECTIVES, ids=lambda p: p.name)
def test_objective_config_resolves_as_frozen(path, monkeypatch, capsys):
    """The objective YAMLs say only how they differ (checkpoints, seed and logging come from the CLI's defaults.yaml,
    other values from the modules' defaults): they must still resolve to the frozen values, every leaf of them."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    frozen = yaml.safe_load((Path(__file__).with_name("expected_configs.yaml")).read_text())
    if path.stem not in frozen:
        pytest.fail(f"tests/expected_configs.yaml has no {path.stem}: add the seed_everything, model, data and trainer "
                    f"(less its logger) that `lit-dr fit --config {path.relative_to(CONFIGS.parent)} --print_config` "
                    "prints, once checked by hand")
    expected = frozen[path.stem]
    got = resolved(["--config", str(path)], capsys)
    # The CLI's checkpoints have keys of their own; Lightning appends them to the trainer's callbacks.
    got["trainer"]["callbacks"] = (got["trainer"]["callbacks"] or []) + [got[k] for k in CHECKPOINT_KEYS]
    for tree in (expected, got):
        tree["trainer"]["callbacks"] = in_run_order(tree["trainer"]["callbacks"])
    assert len(got["trainer"]["callbacks"]) == len(expected["trainer"]["callbacks"])
    flat = dict(leaves({k: got[k] for k in expected}, list_items=True))
    # A key the installed libraries no longer have fails here; a key they added since is not compared.
    for key, value in leaves(expected, list_items=True):
        assert flat.get(key, "<absent>") == value, (key, flat.get(key, "<absent>"), value)


def test_default_checkpoints_stay_beside_config_callbacks_and_the_command_line(monkeypatch, capsys, tmp_path):
    """A config's callbacks (configs/ance.yaml's refresh) and `--trainer.callbacks+=` go beside the CLI's best and
    last checkpoints; a config's own list of the same length as a default one does not inherit its values (what a
    default list in `trainer.callbacks` would do); `--best_checkpoint=null` drops that one."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    ance = ["--config", str(CONFIGS / "ance.yaml")]
    monitor = "lightning.pytorch.callbacks.LearningRateMonitor"

    def classes(args):
        return [c["class_path"] for c in resolved(args, capsys)["trainer"]["callbacks"] or []]

    assert classes(ance) == ["lit_dr.NegativeRefresh"]
    assert classes([*ance, f"--trainer.callbacks+={monitor}"]) == ["lit_dr.NegativeRefresh", monitor]
    best = resolved(ance, capsys)["best_checkpoint"]["init_args"]
    assert best["monitor"] == "val/ndcg@10" and best["mode"] == "max" and best["save_weights_only"] is True
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": CHECKPOINT, "init_args": {"every_n_train_steps": 2, "save_top_k": -1}},
        {"class_path": monitor}]}}))
    config = resolved([*ance, "--config", str(own)], capsys)
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] is None
    assert config["best_checkpoint"]["init_args"]["monitor"] == "val/ndcg@10"

    cli = build(["--config", str(CONFIGS / "bm25neg.yaml"), "--best_checkpoint=null"])
    assert [c.save_last for c in cli.trainer.checkpoint_callbacks] == ["link"]
    cli = build(["--config", str(CONFIGS / "bm25neg.yaml")])
    assert [(c.monitor, c.save_last) for c in cli.trainer.checkpoint_callbacks] == [("val/ndcg@10", None),
                                                                                    (None, "link")]


def tiny_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir) -> Path:
    return write_tiny_fit_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir, "tiny", max_epochs=1,
                                 enable_progress_bar=False)


def test_fit_then_load_checkpoint_and_validate(tmp_path, tiny_beir, tiny_model_dir, cache_dir, capsys):
    config = tiny_config(tmp_path, tiny_beir, tiny_model_dir, cache_dir)
    cli = run(["fit", "--config", str(config)])
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    assert (run_dir / "config.yaml").exists()  # the fully resolved config, beside the checkpoints
    assert "max_epochs: 1" in (run_dir / "config.yaml").read_text()
    assert list((run_dir / "runs").glob("dev-step*.trec"))
    assert "lit-dr fit: done in" in capsys.readouterr().out
    outcome = json.loads((run_dir / "fit.json").read_text())
    # A config without callbacks still gets the CLI's default checkpoints: the best by dev nDCG@10, and last.ckpt.
    ckpt = Path(outcome["best_model_path"])
    assert ckpt.parent == run_dir / "checkpoints" and ckpt.name.startswith("epoch0-step")
    assert outcome["monitor"] == "val/ndcg@10" and outcome["best_model_score"] == outcome["metrics"]["val/ndcg@10"]
    assert Path(outcome["last_model_path"]) == run_dir / "checkpoints" / "last.ckpt"
    assert outcome["global_step"] == cli.trainer.global_step > 0
    assert outcome["metrics"]["val/ndcg@10"] == float(cli.trainer.callback_metrics["val/ndcg@10"])
    loaded = BM25Negatives.load_from_checkpoint(ckpt)
    for (k, a), b in zip(cli.model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert a.equal(b), k
    val = run(["validate", "--config", str(config), "--ckpt_path", str(ckpt)])
    assert val.trainer.callback_metrics["val/ndcg@10"] == cli.trainer.callback_metrics["val/ndcg@10"]
    run(["predict", "--config", str(config), "--ckpt_path", str(ckpt)])  # no test qrels: the dev queries
    predicted = read_trec_run(next((tmp_path / "runs" / "tiny").glob("version_*/runs/predict-step*.trec")))
    assert len(predicted) == len(val.datamodule.split_rows["dev"])
    assert all(len(docs) == 64 for docs in predicted.values())  # every document of the tiny corpus, ranked


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "lit_dr", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "fit" in out.stdout and "predict" in out.stdout
