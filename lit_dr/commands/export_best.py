"""`ExportBest`: keep a sentence-transformers export of the best checkpoint so far in the run directory."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lit_dr.files import run_directory


class ExportBest(L.Callback):
    """Re-export (`lit_dr.commands.export.export_checkpoint`) whenever the trainer's first `ModelCheckpoint` (the configs'
    monitored one) has a new best file: `--trainer.callbacks+=lit_dr.ExportBest`.

    Lightning saves checkpoints after every other callback's validation hooks, so a new best is exported at the
    next training batch or at the end of the fit. Process 0 exports; the others do not wait for it.

    Args:
        directory: where the export goes; default `export/` in the run directory (beside `checkpoints/`).
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory
        self.exported: str | None = None  # the checkpoint file the export was made from

    def export_if_improved(self, trainer: L.Trainer) -> None:
        from lit_dr.commands.export import export_checkpoint

        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else ""
        if trainer.is_global_zero and best and best != self.exported and Path(best).is_file():
            export_checkpoint(best, Path(self.directory or run_directory(trainer) / "export"), overwrite=True)
            self.exported = best

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.export_if_improved(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.export_if_improved(trainer)
