"""Training time: the data module (owner of the data and the corpus index), the negative refresh callback (when to
mine) and learning-rate schedules."""

from lit_dr.training.datamodule import RetrievalDataModule
from lit_dr.training.last_checkpoint import LastCheckpoint
from lit_dr.training.refresh import NegativeRefresh
from lit_dr.training.schedulers import LinearWarmup

__all__ = ["LastCheckpoint", "LinearWarmup", "NegativeRefresh", "RetrievalDataModule"]
