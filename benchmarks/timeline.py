"""A callback for benchmarks: dev nDCG@10 against training wall time, validation time left out.

Times, per validation: the seconds from the start of the fit to the first training batch (the initial corpus
encoding: ANCE's first refresh, LTRe's index), and the training seconds since the first batch, every
validation's own time excluded (refreshes during training count: they are part of a method's cost).
Written as JSON lines to `path` by global rank 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L


class Timeline(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.fit_start = self.first_batch = self.val_start = None
        self.val_seconds = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_batch is None:
            self.first_batch = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self.val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        seconds, self.val_seconds = now - self.val_start, self.val_seconds + now - self.val_start
        if not trainer.is_global_zero or trainer.sanity_checking or self.first_batch is None:
            return
        record = {
            "step": trainer.global_step,
            "initial_s": self.first_batch - self.fit_start,
            "train_s": now - self.first_batch - self.val_seconds,
            "validation_s": seconds,
            **{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
