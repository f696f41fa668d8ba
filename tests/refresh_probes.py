"""A refresh callback that stops for a while at a chosen point, so a test can kill the process right there."""

import os
import time
from pathlib import Path
from typing import Literal

import lightning as L

from lit_dr.training import NegativeRefresh


class PausingRefresh(NegativeRefresh):
    def __init__(self, pause_generation: int = 0, pause_at: Literal["mining", "written"] = "mining",
                 marker: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.pause_generation, self.pause_at, self.marker = pause_generation, pause_at, marker

    def _pause(self, where: str, generation: int) -> None:
        if where == self.pause_at and generation == self.pause_generation and not os.environ.get("NO_PAUSE"):
            Path(self.marker).write_text(where)
            time.sleep(60)

    def _mine(self, trainer, pl_module, generation):
        self._pause("mining", generation)
        return super()._mine(trainer, pl_module, generation)

    def _install(self, trainer, candidates, query_candidates):
        self._pause("written", self.generation)
        super()._install(trainer, candidates, query_candidates)


class RankRecordingRefresh(NegativeRefresh):
    """Writes each process's table digest after every refresh, to compare processes under DDP."""

    def __init__(self, record_dir: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.record_dir = record_dir

    def refresh(self, trainer, pl_module):
        table = super().refresh(trainer, pl_module)
        path = Path(self.record_dir) / f"rank{trainer.global_rank}-g{self.generation}.txt"
        path.write_text(self.table_digest)
        return table


class PauseAtStep(L.Callback):
    """Stops for a while after optimizer step `step` (before that step's checkpoint: checkpoints run last), so a test can kill the
    process right there."""

    def __init__(self, step: int = 0, marker: str = "") -> None:
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not os.environ.get("NO_PAUSE"):
            Path(self.marker).write_text(str(self.step))
            time.sleep(60)
