"""`last.ckpt`, with the optimizer state only where a resume is worth its size."""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


class LastCheckpoint(ModelCheckpoint):
    """A `ModelCheckpoint` (the CLI's `last_checkpoint`) whose files keep the full training state (optimizer,
    schedule, loops: what `--ckpt_path` needs to resume) only for a fit of at least `full_state_min_steps`
    optimizer steps; a shorter fit's hold the weights only.

    Why: AdamW's two moments double a checkpoint (MiniLM: 90 MB of weights, 270 MB with the state), and a short
    fit (a `--trainer.max_steps=3` try, a smoke run, a few minutes of CPU) is cheaper to run again than to resume.
    The decision is made once, at the start of training, from `trainer.estimated_stepping_batches` (the fit's
    planned optimizer steps: max_steps, max_epochs, limit_train_batches and accumulation all count), and said
    in the log. Weights-only files still load for `validate`, `test`, `predict`, `export` and warm starts.

    Args:
        full_state_min_steps: keep the full state when the fit plans at least this many optimizer steps; 0
            always keeps it (ask for it: `--last_checkpoint.init_args.full_state_min_steps=0`).
        **kwargs: `ModelCheckpoint`'s; its `save_weights_only: true` means weights only whatever the length.
    """

    def __init__(self, full_state_min_steps: int = 100, **kwargs) -> None:
        super().__init__(**kwargs)
        if full_state_min_steps < 0:
            raise ValueError(f"full_state_min_steps must be >= 0, got {full_state_min_steps}")
        self.full_state_min_steps = full_state_min_steps
        self._asked_weights_only = self.save_weights_only

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        planned = trainer.estimated_stepping_batches
        self.save_weights_only = self._asked_weights_only or planned < self.full_state_min_steps
        if self.save_weights_only and not self._asked_weights_only:
            log.info("last.ckpt holds the weights only: this fit plans %s optimizer steps (< %d). To resume it "
                     "later, ask for the full state: --last_checkpoint.init_args.full_state_min_steps=0",
                     planned, self.full_state_min_steps)
