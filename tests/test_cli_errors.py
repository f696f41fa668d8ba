"""The command line answers a mistake with one line and exit status 2, before it builds or writes anything; the
commands outside the trainer take `--config` / `--print_config`; `lit_dr.fit` runs what `lit-dr fit` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_dr.commands import help_cache
from lit_dr.commands.cli import main
from lit_dr.commands.errors import one_line, suggestions
from lit_dr.commands.pipeline import load_pipeline, parse_command_line, pipeline_yaml
from lit_dr.commands.standalone import parse

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_logging_errors(monkeypatch) -> None:
    # A handler an earlier test bound to its own (now closed) captured stream would print "--- Logging error ---"
    # with a traceback into this test's stderr.
    import logging

    monkeypatch.setattr(logging, "raiseExceptions", False)


def fails(capsys, *argv: str) -> str:
    """Run `lit-dr ARGV`; it must exit 2 with one line `lit-dr <command>: error: ...` and no traceback."""
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    assert done.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"lit-dr {argv[0]}: error: "), err
    assert "Traceback" not in err and "usage:" not in err, err
    return lines[0]


@pytest.fixture()
def tiny_fit(tmp_path, tiny_beir, tiny_model_dir, cache_dir, monkeypatch) -> list[str]:
    """A tiny fit's arguments, run from an empty directory (nothing may appear in it after a mistake)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lit-dr"])
    config = tmp_path.parent / f"{tmp_path.name}-tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"class_path": "lit_dr.BM25Negatives", "init_args": {
            "encoder": {"class_path": "lit_dr.Encoder", "init_args": {"model_name_or_path": tiny_model_dir}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}}},
        "data": {"dataset": str(tiny_beir), "train_batch_size": 4, "show_progress": False},
        "trainer": {"max_epochs": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger"}}}))
    return ["--config", str(config)]


def nothing_written(tmp_path: Path) -> None:
    assert not list(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


def test_the_entry_point_imports_no_torch_or_lightning():
    """`lit-dr --help` and `lit-dr export --help` answer without torch (the old module imported Lightning first)."""
    code = ("import sys, lit_dr.commands.cli as c; import contextlib, io\n"
            "for argv in (['--help'], ['export', '--help'], ['index', '--help'], ['pipeline', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: c.main(argv)\n"
            "        except SystemExit as e: assert e.code in (0, None), e.code\n"
            "print(sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_config_typo_is_one_line_with_did_you_mean(tiny_fit, tmp_path, capsys):
    line = fails(capsys, "fit", *tiny_fit, "--trainer.max_epocs=1")
    assert "unknown option 'trainer.max_epocs'; did you mean 'trainer.max_epochs'?" in line
    typo = tmp_path.parent / f"{tmp_path.name}-typo.yaml"
    typo.write_text("trainer:\n  max_epocs: 1\n")
    line = fails(capsys, "fit", *tiny_fit, "--config", str(typo))
    assert "'trainer.max_epochs'" in line
    line = fails(capsys, "fit", *tiny_fit, "--data.train_batch_sise=2")
    assert "did you mean 'data.train_batch_size'?" in line
    nothing_written(tmp_path)


def test_did_you_mean_over_the_valid_keys():
    known = ["trainer.max_epochs", "trainer.max_steps", "model.init_args.temperature", "data.dataset"]
    assert suggestions("trainer.max_epocs", known) == ["trainer.max_epochs"]
    assert suggestions("model.init_args.temprature", known) == ["model.init_args.temperature"]
    assert suggestions("nothing.like.it", known) == []
    assert one_line("Subcommand 'fit' does not accept option 'data.datset'", known) == (
        "unknown option 'data.datset'; did you mean 'data.dataset'?")


def test_a_wrong_data_set_fails_before_the_model(tiny_fit, tiny_beir, tmp_path, capsys):
    line = fails(capsys, "fit", *tiny_fit, f"--data.dataset={tiny_beir.name}x", f"--data.data_root={tiny_beir.parent}")
    assert f"did you mean '{tiny_beir.name}'?" in line
    line = fails(capsys, "fit", *tiny_fit, "--data.dataset=no-such-set", "--data.download=false")
    assert "dataset 'no-such-set' not found" in line
    nothing_written(tmp_path)


def test_missing_checkpoints_fail_before_the_model(tiny_fit, tmp_path, capsys):
    line = fails(capsys, "validate", *tiny_fit, "--ckpt_path=runs/x/checkpoints/last.ckpt")
    assert "--ckpt_path=runs/x/checkpoints/last.ckpt: no such checkpoint" in line
    line = fails(capsys, "fit", *tiny_fit, "--model.init_args.init_checkpoint=warm.ckpt")
    assert "--model.init_args.init_checkpoint=warm.ckpt: no such warm-start checkpoint" in line
    nothing_written(tmp_path)


def test_missing_test_judgments_fail_before_the_model(tiny_fit, tmp_path, capsys):
    line = fails(capsys, "test", *tiny_fit, "--data.test_qrels=runs/x/dev")
    assert "--data.test_qrels=runs/x/dev: no such qrels file" in line
    (tmp_path.parent / "empty-dev").mkdir()
    line = fails(capsys, "test", *tiny_fit, f"--data.test_qrels={tmp_path.parent / 'empty-dev'}")
    assert "is a folder without qrels.tsv" in line
    nothing_written(tmp_path)


def test_a_gpu_config_on_a_cpu(tiny_fit, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    line = fails(capsys, "fit", *tiny_fit, "--config", str(REPO / "configs" / "trainer" / "gpu.yaml"))
    assert "--trainer.accelerator=gpu: no CUDA GPU is visible here" in line
    nothing_written(tmp_path)


def test_export_and_index_mistakes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.ckpt").write_bytes(b"")
    (tmp_path / "out").mkdir()
    assert "out exists: choose another directory or pass --overwrite" in fails(capsys, "export", "m.ckpt", "out")
    assert "checkpoint gone.ckpt: no such file" in fails(capsys, "export", "gone.ckpt", "new")
    assert "corpus docs.jsonl: no such file" in fails(capsys, "index", "m.ckpt", "docs.jsonl", "idx")
    assert "index.json missing" in fails(capsys, "search", "idx", "q.tsv", "run.trec")
    line = fails(capsys, "index", "m.ckpt", "docs.jsonl", "idx", "--index_factry=Flat")
    assert "did you mean 'index_factory'?" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "out"]


def test_the_variable_shows_the_traceback(tmp_path, monkeypatch):
    from lit_dr.commands.errors import SetupError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIT_DR_TRACEBACK", "1")
    with pytest.raises(SetupError, match="checkpoint gone.ckpt"):
        main(["export", "gone.ckpt", "new"])


def test_a_bug_is_not_a_user_error():
    from lit_dr.commands.errors import user_error_message

    try:
        {}["x"]
    except KeyError as error:
        assert user_error_message(error) is None
    assert user_error_message(FileNotFoundError("a.tsv missing")).startswith("a.tsv missing")


def options(args) -> dict:
    return {k: v for k, v in args.as_dict().items() if k != "config"}


def test_index_and_search_print_config_round_trips_through_config(tmp_path, capsys):
    for command, argv in (
        ("index", ["m.ckpt", "corpus.jsonl", "idx", "--index_factory=IVF4,Flat", "--search_params={nprobe: 2}",
                   "--batch_size=16", "--max_length=32", "--devices=2", "--embedding_dtype=float16"]),
        ("search", ["idx", "queries.jsonl", "run.trec", "--k=10", "--split=dev", "--data.eval_batch_size=8",
                    "--trainer.accelerator=cpu", "--search_params={efSearch: 64}"]),
    ):
        with pytest.raises(SystemExit) as done:
            main([command, *argv, "--print_config"])
        assert done.value.code in (0, None)
        printed = capsys.readouterr().out
        config = tmp_path / f"{command}.yaml"
        config.write_text(printed)
        assert options(parse(command, ["--config", str(config)])) == options(parse(command, argv)), printed
        resolved = yaml.safe_load(printed)
        assert resolved["search_params"] in ({"nprobe": 2}, {"efSearch": 64})
    index = yaml.safe_load((tmp_path / "index.yaml").read_text())
    # the old short names land on fit's names
    assert index["trainer"]["devices"] == 2 and index["data"]["eval_batch_size"] == 16
    assert index["data"]["doc_max_length"] == 32 and index["data"]["embedding_dtype"] == "float16"
    assert yaml.safe_load((tmp_path / "search.yaml").read_text())["eval_depth"] == 10


def test_pipeline_print_config_round_trips(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    main(["pipeline", "configs/pipelines/cpu.yaml", "--trainer.max_epochs=1", "--print_config"])
    printed = capsys.readouterr().out
    path, extra, dry_run, print_config = parse_command_line(["--config", "configs/pipelines/cpu.yaml",
                                                             "--config", "x.yaml", "--dry_run"])
    assert (path, extra, dry_run, print_config) == ("configs/pipelines/cpu.yaml", ["--config", "x.yaml"], True, False)
    original = load_pipeline("configs/pipelines/cpu.yaml")
    assert yaml.safe_load(printed)["args"] == [*original.args, "--trainer.max_epochs=1"]
    assert yaml.safe_load(printed)["stages"] == yaml.safe_load(pipeline_yaml(original))["stages"]


def test_model_class_help_lists_its_options(cache_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lit-dr"])
    assert help_cache.model_help_args(["fit", "--model", "lit_dr.ANCE", "--help"]) == [
        "fit", "--model.help", "lit_dr.ANCE"]
    with pytest.raises(SystemExit):
        main(["fit", "--model=lit_dr.ANCE", "-h"])
    text = capsys.readouterr().out
    assert "--model.in_batch_negatives" in text and "--model.temperature" in text  # ANCE's own
    assert "--model.optimizer" in text and "--model.index_factory" in text  # and its base's
    # every option of the objective has a description, not just its type
    blocks = text.split("\n  --")[1:]
    bare = [b.split()[0] for b in blocks if b.split("\n", 1)[-1].strip().startswith("(type:")]
    assert not bare, bare
    # and it is kept, as a plain `--help` is: the second answer does not wait for Lightning's import
    assert help_cache.cached_help(["fit", "--model.help", "lit_dr.ANCE"]) == text


def test_every_data_option_has_a_description(cache_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lit-dr"])
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    blocks = [b for b in text.split("\n  --")[1:] if b.startswith("data.")]
    assert len(blocks) > 20
    bare = [b.split()[0] for b in blocks if b.split("\n", 1)[-1].strip().startswith("(type:")
            or b.split(maxsplit=2)[-1].startswith("(type:")]
    assert not bare, bare
    # the second `--help` is read from the cache
    assert help_cache.cached_help(["fit", "--help"]) == text


def test_help_cache_key_follows_the_config_files(tmp_path, cache_dir):
    config = tmp_path / "c.yaml"
    config.write_text("a: 1\n")
    argv = ["fit", "--config", str(config), "--help"]
    help_cache.store_help(argv, "help text")
    assert help_cache.cached_help(argv) == "help text"
    config.write_text("a: 2\n")
    assert help_cache.cached_help(argv) is None


def test_python_api_fits_like_the_cli(tiny_fit, tmp_path):
    import lit_dr

    result = lit_dr.fit(tiny_fit[1], **{"trainer.max_epochs": 1}, trainer__default_root_dir=str(tmp_path / "r"))
    assert result.run_dir.is_relative_to(tmp_path / "r")  # not lightning_logs/ in the current directory
    assert not (tmp_path / "lightning_logs").exists()
    assert (result.run_dir / "fit.json").is_file() and (result.run_dir / "config.yaml").is_file()
    assert Path(result.last_model_path) == result.run_dir / "checkpoints" / "last.ckpt"
    assert json.loads((result.run_dir / "fit.json").read_text())["best_model_path"] == result.best_model_path
    assert "val/ndcg@10" in result.metrics


@pytest.mark.parametrize("name", ["ANCE", "DANCE", "BM25Negatives", "LTRe", "MarginMSE", "SamToNe", "Encoder",
                                  "LinearWarmup", "NegativeRefresh", "RetrievalDataModule", "ExportBest"])
def test_every_option_of_a_configurable_class_has_a_description(name):
    """jsonargparse reads each option's help from the class's "Args:" (one entry per parameter, by its name)."""
    from jsonargparse import ArgumentParser

    import lit_dr

    parser = ArgumentParser()
    parser.add_class_arguments(getattr(lit_dr, name), "x", skip={"optimizer"} if name == "LinearWarmup" else None)
    bare = [a.dest for a in parser._actions if a.dest.startswith("x.") and not (a.help or "").strip()]
    assert not bare, bare
