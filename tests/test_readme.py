"""The README's commands run as written: every shell line of its ```bash blocks (the two commands and "Usage"),
parsed from the file, runs in a workspace laid out like the repository (`.venv/` the environment running the
tests, `configs/` the repository's configs, `../shared/data/scifact` a data set), so a line that no longer works
fails here rather than for the reader who pastes it.

What is substituted, and only this: the workspace's `configs/` are the repository's with the backbone replaced by
the tests' tiny BERT and the sizes cut to a few steps (`tiny_configs`); `scifact` is the tests' tiny BEIR set;
`<run>` in a line is the newest run of `runs/lit-dr/`; `/tmp/` is the workspace's own. The set-up commands
(`python3.11 -m venv`, `pip install`) and `pytest` (this is it) are left out; the `lit-dr` commands after them
in the same line are not. Lines that need a GPU are skipped without one (`NEEDS_GPU`, each naming a README line).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_beir

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SETUP = re.compile(r"^(python3[.\d]* -m venv |\.venv/bin/pip |\.venv/bin/pytest\b)")
# README lines (by a part of their text) that need a CUDA GPU.
NEEDS_GPU = ("--config configs/trainer/gpu.yaml", "pipeline configs/pipelines/gpu.yaml")


def readme_commands(text: str) -> list[str]:
    """Each command of the README's ```bash blocks, in order: comments dropped, `a && b` split, set-up left out."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            line = re.sub(r"(^|\s+)#\s.*$", "", line).strip()  # a comment (the README's have "# " after code)
            if not line or line.startswith("#"):
                continue
            commands += [part.strip() for part in line.split(" && ") if not SETUP.match(part.strip())]
    return commands


def test_the_parser_finds_the_readme_commands():
    commands = readme_commands(README.read_text())
    assert commands[0] == "LIT_DR_DATA=../shared/data .venv/bin/lit-dr pipeline configs/pipelines/bm25neg-ltre.yaml"
    assert "export LIT_DR_DATA=../shared/data" in commands
    assert all("pip install" not in c and "pytest" not in c and "-m venv" not in c for c in commands)
    assert all(c.startswith((".venv/bin/lit-dr ", "export ", "LIT_DR_DATA=")) for c in commands), commands
    for needle in NEEDS_GPU:  # a skip that no longer names a README line is stale
        assert any(needle in c for c in commands), needle
    text = "```bash\n# a comment\nx --a '{nprobe: 16}'   # why\npython3.11 -m venv .venv && .venv/bin/pip install -e . && y\n```\n"
    assert readme_commands(text) == ["x --a '{nprobe: 16}'", "y"]


def _tiny(value, model: str):
    if isinstance(value, dict):
        return {k: _tiny(v, model) for k, v in value.items()}
    if isinstance(value, list):
        return [_tiny(v, model) for v in value]
    return model if value == MINILM else value


def tiny_configs(src: Path, dst: Path, model: str) -> None:
    """The repository's configs with the tiny BERT for MiniLM and a fit cut to 2 steps with one evaluation at its
    end (the pipeline's stages included); everything else as it is."""
    for path in src.rglob("*.yaml"):
        config = _tiny(yaml.safe_load(path.read_text()), model)
        if isinstance(config, dict) and isinstance(config.get("trainer"), dict):
            trainer = config["trainer"]
            trainer.update(max_epochs=1, limit_train_batches=2, check_val_every_n_epoch=1, enable_progress_bar=False)
            data = config.setdefault("data", {})
            data.update(train_batch_size=4, doc_max_length=32, show_progress=False)
            init = config.get("model", {}).get("init_args", {})
            if config.get("model", {}).get("class_path") == "lit_dr.LTRe":
                init["depth"] = 16  # the tiny corpus has 64 documents
            for callback in trainer.get("callbacks") or []:
                if callback.get("class_path") == "lit_dr.NegativeRefresh":
                    callback.setdefault("init_args", {}).update(depth=16, num_negatives=4)
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(config, sort_keys=False))


def newest_run(workspace: Path) -> str:
    runs = sorted((workspace / "runs" / "lit-dr").glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    assert runs, "a line names <run> before any fit wrote runs/lit-dr/<run>/checkpoints/last.ckpt"
    return runs[-1].parents[1].name


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path, tiny_model_dir):
    """Thirteen processes that each import torch: 32 minutes on 2 cores at load average 8 (`--help` alone took
    78 s there, the four-stage pipeline 519 s), a few minutes on a quiet machine."""
    workspace = tmp_path / "repo"
    (workspace / "tmp").mkdir(parents=True)
    (workspace / ".venv").symlink_to(Path(sys.prefix))
    tiny_configs(ROOT / "configs", workspace / "configs", tiny_model_dir)
    write_beir(tmp_path / "shared" / "data" / "scifact")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "LIT_DR_CACHE": str(tmp_path / "cache"),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("LIT_DR_DATA", None)
    ran, skipped = [], []
    for command in readme_commands(README.read_text()):
        if command.startswith("export "):  # the README's `export X=Y` holds for the lines after it
            name, _, value = shlex.split(command)[1].partition("=")
            env[name] = value
            continue
        if any(needle in command for needle in NEEDS_GPU) and not torch.cuda.is_available():
            skipped.append(command)
            continue
        line = command.replace("<run>", newest_run(workspace)) if "<run>" in command else command
        line = line.replace("/tmp/", f"{workspace / 'tmp'}/")
        start = time.perf_counter()
        out = subprocess.run(["bash", "-c", line], cwd=workspace, env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"README line failed: {command}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        ran.append((command, round(time.perf_counter() - start, 1)))
    print("\n".join(f"{seconds:6.1f} s  {command}" for command, seconds in ran))
    assert len(ran) >= 10 and len(skipped) <= len(NEEDS_GPU)
    # What the lines wrote is ignored by git (.gitignore), so a README session leaves `git status` clean.
    made = sorted(p.name + "/" * p.is_dir() for p in workspace.iterdir() if p.name not in (".venv", "configs", "tmp"))
    assert {"runs/", "models/", "indexes/"} <= set(made), made  # a trailing / tells git a directory: /runs/ matches
    check = subprocess.run(["git", "check-ignore", "--no-index", *made], cwd=ROOT, capture_output=True, text=True)
    assert sorted(check.stdout.split()) == made, (made, check.stdout)


def test_the_outputs_of_the_readme_commands_are_ignored_by_git():
    names = ["runs/lit-dr/x/last.ckpt", "models/bm25neg-scifact/model.safetensors", "indexes/scifact/index.json",
             "scifact-train.trec", "wandb/run-1/files", "lightning_logs/version_0", "runs/pipeline-cpu/ance"]
    check = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=ROOT, capture_output=True, text=True)
    if check.returncode == 128:
        pytest.skip("not a git checkout")
    assert sorted(check.stdout.split()) == sorted(names)
