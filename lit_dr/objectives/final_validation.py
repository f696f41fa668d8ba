"""Every fit ends evaluated: a validation after the last optimizer step when the loop's own schedule skipped it.

The configs validate every `check_val_every_n_epoch` epochs, so a fit shortened with `--trainer.max_steps` or a
smaller `--trainer.max_epochs` used to end with no dev metrics, no best checkpoint and an empty `fit.json`.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.trainer import call
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


def fit_ends_after_this_epoch(trainer: L.Trainer) -> bool:
    """True in `on_train_epoch_end` of the fit's last epoch: max_steps reached (also mid-epoch), the last of
    max_epochs, or a stop requested (early stopping, max_time)."""
    if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    epochs = trainer.max_epochs if trainer.max_epochs is not None else -1  # -1: no epoch limit
    return (epochs > 0 and trainer.current_epoch >= epochs - 1) or bool(trainer.should_stop)


class FinalValidation(L.Callback):
    """Runs the validation loop at the end of the fit's last epoch unless the last step was validated already
    (so a fit whose schedule ends on a validation evaluates once, not twice). It runs before the checkpoints'
    epoch-end hooks (Lightning calls monitoring callbacks last), so the best checkpoint and last.ckpt see its
    metrics as they would a scheduled validation's. Nothing changes for a fit that validated its last step."""

    def __init__(self) -> None:
        self.validated_step: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.validated_step = trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (not trainer.enable_validation or self.validated_step == trainer.global_step
                or not fit_ends_after_this_epoch(trainer)):
            return
        log.info("step %d is the fit's last and was not validated (check_val_every_n_epoch=%s): validating now",
                 trainer.global_step, trainer.check_val_every_n_epoch)
        # What the training epoch loop does for a scheduled validation (`_TrainingEpochLoop.on_advance_end`).
        trainer.validating = True
        call._call_lightning_module_hook(trainer, "on_validation_model_zero_grad")
        trainer.fit_loop.epoch_loop.val_loop.run()
        trainer.training = True
