"""`lit-dr pipeline PIPELINE_YAML`: fits in stages, each warm-started from an earlier stage's best checkpoint.

    root_dir: runs/pipeline-gpu                  # stage S runs under <root_dir>/<S>
    args: [--config, configs/logger/csv.yaml]    # optional: added to every stage's fit
    stages:
      - name: bm25neg
        configs: [configs/bm25neg.yaml, configs/gpu/bm25neg.yaml]
      - name: ance
        configs: [configs/ance.yaml, configs/gpu/ance.yaml]
        warm_start: bm25neg     # --model.init_args.init_checkpoint=<bm25neg's best checkpoint by dev nDCG@10>
        args: []                # optional: added to this stage's fit

Each stage is a `python -m lit_dr fit` process, so DDP launches as from a plain `lit-dr fit`; its run writes
`fit.json` (`lit_dr.commands.trainer_cli`). A stage with a fit.json is done and is skipped when the pipeline runs again: a pipeline
stopped in stage 3 goes on with stage 3, which restarts from scratch. A done stage is not run again when its
configs or warm start change: delete its directory for that. Paths are relative to the current directory, as with
`lit-dr fit`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

PIPELINE_KEYS = ("root_dir", "args", "stages")
STAGE_KEYS = ("name", "configs", "warm_start", "args")
# The pipeline finds a stage's run under <root_dir>/<name>: an argument moving it would lose the stage.
MOVES_THE_RUN = "--trainer.default_root_dir"


class PipelineError(RuntimeError):
    """A stage failed or left no usable outcome."""


@dataclass(frozen=True)
class Stage:
    name: str
    configs: tuple[str, ...]
    warm_start: str | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pipeline:
    path: Path
    root_dir: Path
    stages: tuple[Stage, ...]
    args: tuple[str, ...] = ()


# -- parsing and planning: pure functions --------------------------------------------------------------
def _strings(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of strings, got {value!r}")
    if any(v.startswith(MOVES_THE_RUN) for v in value):
        raise ValueError(f"{where}: {MOVES_THE_RUN} is set by the pipeline (<root_dir>/<stage name>)")
    return tuple(value)


def _unknown(raw: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} (known: {', '.join(known)})")


def parse_pipeline(raw, path: Path) -> Pipeline:
    """Check a loaded pipeline YAML; each mistake is a ValueError naming the file, the stage and the field."""
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with {', '.join(PIPELINE_KEYS)}")
    _unknown(raw, PIPELINE_KEYS, str(path))
    for field in ("root_dir", "stages"):
        if field not in raw:
            raise ValueError(f"{path}: field '{field}' is missing")
    if not isinstance(raw["root_dir"], str) or not raw["root_dir"]:
        raise ValueError(f"{path}: field 'root_dir': expected a directory, got {raw['root_dir']!r}")
    if not isinstance(raw["stages"], list) or not raw["stages"]:
        raise ValueError(f"{path}: field 'stages': expected a non-empty list of stages")
    stages: list[Stage] = []
    for i, entry in enumerate(raw["stages"]):
        where = f"{path}: stages[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with {', '.join(STAGE_KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{where}: field 'name': expected a directory name, got {name!r}")
        where = f"{path}: stage '{name}'"
        _unknown(entry, STAGE_KEYS, where)
        if name in (s.name for s in stages):
            raise ValueError(f"{where}: field 'name': a stage of this name comes earlier")
        configs = _strings(entry.get("configs"), f"{where}: field 'configs'")
        missing = [c for c in configs if not Path(c).is_file()]
        if not configs or missing:
            raise ValueError(f"{where}: field 'configs': no such file(s) {missing or 'given'} (paths are relative "
                             f"to the current directory, {Path.cwd()})")
        warm_start = entry.get("warm_start")
        if warm_start is not None and warm_start not in (s.name for s in stages):
            raise ValueError(f"{where}: field 'warm_start': {warm_start!r} is not an earlier stage "
                             f"(earlier: {', '.join(s.name for s in stages) or 'none'})")
        args = _strings(entry.get("args", []), f"{where}: field 'args'")
        stages.append(Stage(name, configs, warm_start, args))
    args = _strings(raw.get("args", []), f"{path}: field 'args'")
    return Pipeline(path, Path(raw["root_dir"]), tuple(stages), args)


def load_pipeline(path: str | Path) -> Pipeline:
    return parse_pipeline(yaml.safe_load(Path(path).read_text()), Path(path))


def stage_dir(pipeline: Pipeline, stage: Stage) -> Path:
    return pipeline.root_dir / stage.name


def fit_command(pipeline: Pipeline, stage: Stage, init_checkpoint: str | None, extra: tuple[str, ...] = ()
                ) -> list[str]:
    """The stage's `lit-dr fit`; later arguments win, so the command line's `extra` overrides everything."""
    configs = [arg for config in stage.configs for arg in ("--config", config)]
    warm = [f"--model.init_args.init_checkpoint={init_checkpoint}"] if stage.warm_start else []
    return [sys.executable, "-m", "lit_dr", "fit", *configs, f"{MOVES_THE_RUN}={stage_dir(pipeline, stage)}",
            *warm, *pipeline.args, *stage.args, *extra]


def read_outcome(directory: Path) -> dict | None:
    """The newest fit.json under a stage's directory (written by `lit_dr.commands.trainer_cli` after a fit), or None."""
    found = sorted(directory.glob("**/fit.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()) if found else None


def best_checkpoint(outcome: dict, stage: Stage, pipeline: Pipeline) -> str:
    """The stage's best checkpoint; never last.ckpt instead, which would hide a fit that did not validate."""
    path, score = outcome.get("best_model_path"), outcome.get("best_model_score")
    if not path or score is None:
        raise PipelineError(
            f"{pipeline.path}: stage '{stage.name}' has no best checkpoint to warm-start from: its fit never "
            "validated (check trainer.check_val_every_n_epoch against max_epochs, limit_val_batches) or no "
            "ModelCheckpoint monitors val/ndcg@10. Fix its configs and delete "
            f"{stage_dir(pipeline, stage)} to run it again.")
    if not Path(path).is_file():
        raise PipelineError(f"{pipeline.path}: stage '{stage.name}': its best checkpoint {path} is gone; delete "
                            f"{stage_dir(pipeline, stage)} to run the stage again")
    return path


def describe(outcome: dict) -> str:
    if outcome.get("best_model_score") is None:
        return "no best checkpoint"
    return f"{outcome['best_model_path']} ({outcome['monitor']} = {outcome['best_model_score']:.4f})"


def summary(pipeline: Pipeline, outcomes: dict[str, dict]) -> str:
    rows = [("stage", "warm start", "best dev nDCG@10", "best checkpoint")]
    for stage in pipeline.stages:
        outcome = outcomes[stage.name]
        score = outcome.get("best_model_score")
        monitor = outcome.get("monitor")
        shown = "-" if score is None else f"{score:.4f}" + ("" if monitor == "val/ndcg@10" else f" ({monitor})")
        rows.append((stage.name, stage.warm_start or "-", shown, outcome.get("best_model_path") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]  # the path, last, is not padded
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)), row[3]]) for row in rows)


# -- running -----------------------------------------------------------------------------------------
def run_fit(command: list[str]) -> int:
    """One stage's fit as a child process: its output streams to this console, the environment passes on."""
    return subprocess.run(command).returncode


def check_stages(pipeline: Pipeline, extra: tuple[str, ...] = ()) -> list[str]:
    """Problems that would stop the pipeline after a stage ran: each stage not yet done resolves its config, and a
    stage that a later one warm-starts from must keep a best checkpoint (`pipeline_check`)."""
    from lit_dr.commands.pipeline_check import checkpoint_problems, resolve_fit

    problems = []
    for stage in pipeline.stages:
        if read_outcome(stage_dir(pipeline, stage)) is not None:
            continue  # done: its fit.json is what counts
        warm = f"<best checkpoint of {stage.warm_start}>" if stage.warm_start else None
        try:
            config = resolve_fit(fit_command(pipeline, stage, warm, extra)[4:])
        except ValueError as e:
            problems.append(f"stage '{stage.name}': {e}")
            continue
        if any(s.warm_start == stage.name for s in pipeline.stages):
            later = ", ".join(s.name for s in pipeline.stages if s.warm_start == stage.name)
            problems += [f"stage '{stage.name}' would leave no best checkpoint for {later}: {p}"
                         for p in checkpoint_problems(config)]
    return problems


def run_pipeline(path: str | Path, extra: list[str] | tuple[str, ...] = (), dry_run: bool = False
                 ) -> dict[str, dict]:
    """Run (or, `dry_run`, print) the pipeline's stages in order; returns each stage's fit.json contents. Before the
    first stage, every stage's config is checked (`check_stages`): a dry run warns, a run stops."""
    pipeline = load_pipeline(path)
    extra = _strings(list(extra), "the command line")  # checked before any stage runs
    problems = check_stages(pipeline, extra)
    if problems and not dry_run:
        raise PipelineError(f"{pipeline.path}: nothing ran, as these would stop the pipeline later:\n  "
                            + "\n  ".join(problems))
    for problem in problems:
        print(f"warning: {problem}", flush=True)
    if dry_run and not problems:
        print("# check: every stage's config resolves, and each stage a later one warm-starts from keeps a best "
              "checkpoint (dev nDCG@10)", flush=True)
    outcomes: dict[str, dict] = {}
    best: dict[str, str] = {}  # warm starts: the best checkpoint of each stage a later stage names
    for stage in pipeline.stages:
        if dry_run:
            warm = f"<best checkpoint of {stage.warm_start}>" if stage.warm_start else None
            print(f"# stage {stage.name}\n{shlex.join(fit_command(pipeline, stage, warm, extra))}")
            continue
        outcome = read_outcome(stage_dir(pipeline, stage))
        if outcome is not None:
            print(f"stage {stage.name} done: {describe(outcome)}", flush=True)
        else:
            command = fit_command(pipeline, stage, best.get(stage.warm_start), extra)
            print(f"stage {stage.name}: {shlex.join(command)}", flush=True)
            code = run_fit(command)
            if code != 0:
                raise PipelineError(f"{pipeline.path}: stage '{stage.name}' failed with exit code {code}; the "
                                    "stages before it are kept, and running the pipeline again starts from it")
            outcome = read_outcome(stage_dir(pipeline, stage))
            if outcome is None:
                raise PipelineError(f"{pipeline.path}: stage '{stage.name}' wrote no fit.json under "
                                    f"{stage_dir(pipeline, stage)}: does a logger save_dir in its configs move "
                                    "the run elsewhere?")
        if any(s.warm_start == stage.name for s in pipeline.stages):
            best[stage.name] = best_checkpoint(outcome, stage, pipeline)
        outcomes[stage.name] = outcome
    if not dry_run:
        print("\n" + summary(pipeline, outcomes))
    return outcomes


# -- the command line ----------------------------------------------------------------------------------
PIPELINE_USAGE = "lit-dr pipeline [-h] [--dry_run] [--print_config] PIPELINE_YAML | --config PIPELINE_YAML [--key=value ...]"
PIPELINE_HELP = f"""usage: {PIPELINE_USAGE}

Run the stages of PIPELINE_YAML (e.g. configs/pipelines/gpu.yaml) as `lit-dr fit` processes in order; stages
with a fit.json are skipped. Options --key=value after it are added to every stage's fit.

options:
  -h, --help            show this help message and exit
  PIPELINE_YAML, --config PIPELINE_YAML
                        the pipeline (root_dir, args, stages); its paths are relative to the current directory.
                        The first of the two names the pipeline: a later --config FILE goes to every stage's fit,
                        as every other fit option does
  --dry_run             print each stage's command and run nothing
  --print_config        print the pipeline that would run (the command line's fit options in its `args`), as
                        a YAML that --config takes back, and run nothing
"""


def parse_command_line(argv: list[str]) -> tuple[str, list[str], bool, bool]:
    """(pipeline file, fit options for every stage, dry run, print config) of `lit-dr pipeline ARGV`. Hand-parsed:
    everything that is not the pipeline's own goes to the fits, as written."""
    path, extra, dry_run, print_config = None, [], False, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(PIPELINE_HELP, end="")
            raise SystemExit(0)
        if arg == "--dry_run":
            dry_run = True
        elif arg == "--print_config":
            print_config = True
        elif path is None and (arg == "--config" or arg.startswith("--config=")):
            if arg == "--config":
                if i + 1 == len(argv):
                    raise ValueError("--config: expected a pipeline YAML after it")
                i += 1
                path = argv[i]
            else:
                path = arg.split("=", 1)[1]
        elif path is None and not arg.startswith("-"):
            path = arg
        else:
            extra.append(arg)
        i += 1
    if path is None:
        raise ValueError(f"no pipeline given; usage: {PIPELINE_USAGE}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such pipeline file")
    return path, extra, dry_run, print_config


def pipeline_yaml(pipeline: Pipeline, extra: tuple[str, ...] = ()) -> str:
    """The pipeline as a YAML `load_pipeline` reads back: the command line's fit options joined to its `args`."""
    stages = []
    for stage in pipeline.stages:
        entry: dict = {"name": stage.name, "configs": list(stage.configs)}
        if stage.warm_start:
            entry["warm_start"] = stage.warm_start
        if stage.args:
            entry["args"] = list(stage.args)
        stages.append(entry)
    raw = {"root_dir": str(pipeline.root_dir), "args": [*pipeline.args, *extra], "stages": stages}
    return yaml.safe_dump(raw, sort_keys=False)


def pipeline_command(argv: list[str]) -> None:
    """`lit-dr pipeline ...`: mistakes in the YAML and failed stages are errors `lit_dr.commands.cli` tells in a line."""
    path, extra, dry_run, print_config = parse_command_line(argv)
    if print_config:
        pipeline = load_pipeline(path)
        print(pipeline_yaml(pipeline, _strings(list(extra), "the command line")), end="")
        return
    run_pipeline(path, extra, dry_run=dry_run)
