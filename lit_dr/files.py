"""Files: written so that a crash never leaves a half-written one behind, and where a run's files go (its
resolved config, TREC runs, embeddings: beside its checkpoints, one directory per run)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import lightning as L


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A temporary file beside `path` (parents created); on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
