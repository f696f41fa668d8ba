"""Before a pipeline's first stage runs: will every stage that a later one warm-starts from leave a best checkpoint?

A stage's fit always ends with a validation (`lit_dr.objectives.final_validation`), so what can still leave a stage
without a best checkpoint is in its resolved config: the best checkpoint dropped or not monitoring a metric,
validation or checkpointing switched off, or no training step. Each stage's config is resolved as its fit would
resolve it (`lit-dr fit ... --print_config`, in this process), so a typo in a stage's arguments also shows here,
before hours of earlier stages.
"""

from __future__ import annotations

import contextlib
import io

import yaml


def checkpoint_problems(config: dict) -> list[str]:
    """Why a fit of this resolved config (`--print_config`'s YAML, loaded) would leave no best checkpoint."""
    trainer = config.get("trainer") or {}
    problems = []
    best = config.get("best_checkpoint")
    monitors = [c for c in [best, *(trainer.get("callbacks") or [])]
                if isinstance(c, dict) and str(c.get("class_path", "")).endswith("ModelCheckpoint")
                and (c.get("init_args") or {}).get("monitor") and (c.get("init_args") or {}).get("save_top_k", 1) != 0]
    if not monitors:
        problems.append("no ModelCheckpoint monitors a dev metric (best_checkpoint is null or has no monitor)")
    if trainer.get("enable_checkpointing") is False:
        problems.append("trainer.enable_checkpointing is false")
    if trainer.get("limit_val_batches") in (0, 0.0):
        problems.append("trainer.limit_val_batches is 0: the fit never validates")
    if trainer.get("max_steps") == 0 or trainer.get("max_epochs") == 0 or trainer.get("limit_train_batches") in (0, 0.0):
        problems.append("no training step (max_steps, max_epochs or limit_train_batches is 0)")
    if trainer.get("fast_dev_run"):
        problems.append("trainer.fast_dev_run writes no checkpoints")
    return problems


def resolve_fit(args: list[str]) -> dict:
    """The config `lit-dr fit ARGS` would run, resolved in this process (no model is built)."""
    from lit_dr.commands.cli import run
    from lit_dr.commands.errors import ConfigError

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run(["fit", *args, "--print_config"])
    except ConfigError as e:  # a typo or a bad value, raised as one line (lit_dr.commands.errors)
        raise ValueError(f"its arguments do not parse: {e}") from None
    except SystemExit as e:
        if e.code not in (0, None):
            last = [line for line in err.getvalue().splitlines() if line.strip()][-1:] or ["(no message)"]
            raise ValueError(f"its arguments do not parse: {last[0]}") from None
    return yaml.safe_load(out.getvalue()) or {}
