"""The CLI's runs from Python, with the CLI's defaults: `lit_dr.fit("configs/samtone.yaml", **{"trainer.max_epochs": 3})`.

A plain `L.Trainer().fit(model, data)` writes `lightning_logs/version_N/` with Lightning's checkpoint only; these
calls run exactly what `lit-dr fit --config ... --key=value` runs: the run directory `runs/<project>/<run id>/`,
the best and last checkpoints, the resolved `config.yaml`, `fit.json`, the quiet console and the W&B (offline) or
configured logger, and the early checks of the data set and checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def command_line(command: str, configs: Sequence[str | Path], overrides: dict[str, Any]) -> list[str]:
    """`[command, --config C..., --key=value...]`. A key is the CLI's dotted option (`"trainer.max_epochs"`;
    `trainer__max_epochs` also works, for keyword arguments); a value that is not a string is written as JSON,
    which the CLI reads as YAML."""
    argv = [command]
    for config in configs:
        argv += ["--config", str(config)]
    for key, value in overrides.items():
        key = key.replace("__", ".")
        argv.append(f"--{key}={value if isinstance(value, str) else json.dumps(value)}")
    return argv


@dataclass
class FitResult:
    """What a fit left: its run directory, checkpoints and last dev metrics (`fit.json`), and the LightningCLI
    (`cli.trainer`, `cli.model`, `cli.datamodule`)."""

    run_dir: Path
    best_model_path: str | None
    last_model_path: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    cli: Any = field(default=None, repr=False)


def run_cli(command: str, *configs: str | Path, **overrides: Any):
    """`lit-dr <command> --config CONFIGS... --key=value...` in this process; returns the LightningCLI."""
    from lit_dr.commands.trainer_cli import run

    return run(command_line(command, configs, overrides))


def fit(*configs: str | Path, **overrides: Any) -> FitResult:
    """Train as `lit-dr fit` does, e.g. `lit_dr.fit("configs/samtone.yaml", **{"trainer.max_epochs": 3})` or
    `lit_dr.fit("configs/bm25neg.yaml", trainer__max_epochs=1, data__dataset="/data/scifact")`."""
    from lit_dr.commands.trainer_cli import fit_outcome
    from lit_dr.files import run_directory

    cli = run_cli("fit", *configs, **overrides)
    outcome = fit_outcome(cli.trainer)
    return FitResult(run_dir=run_directory(cli.trainer), best_model_path=outcome["best_model_path"],
                     last_model_path=outcome["last_model_path"], metrics=outcome["metrics"], cli=cli)
