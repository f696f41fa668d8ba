"""Where a run's files (resolved config, TREC runs) go: beside its checkpoints, one directory per run."""

from __future__ import annotations

from pathlib import Path

import lightning as L


def run_directory(trainer: L.Trainer) -> Path:
    """`<save_dir>/<name>/<version>` of the first logger (the layout Lightning uses for checkpoints), else the
    trainer's log or root directory."""
    logger = trainer.logger
    if logger is not None and logger.save_dir is not None:
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        return Path(logger.save_dir) / str(logger.name) / version
    return Path(trainer.log_dir or trainer.default_root_dir)


def shared_run_directory(trainer: L.Trainer) -> Path:
    """`run_directory` as process 0 sees it, on every process: loggers may name the run on rank 0 only (W&B's
    run id exists there alone). Collective: every process must call it."""
    return Path(trainer.strategy.broadcast(str(run_directory(trainer))))
