"""What a fit shows while it runs, on a terminal and in a log.

On a terminal: Lightning's rich bar, with the whole fit's time left beside the loss (`FitProgressBar`). Anywhere
else (a file, a pipe: SLURM, `nohup`, W&B's output.log) the rich bar draws nothing, so `LogProgress` writes one
line every N optimizer steps and one per evaluation, with its time:

    fit: 320 optimizer steps (8 epochs of 40); a line every 16 steps
    step 16/320  epoch 1/8  loss 0.4122  lr 5.33e-05  0.45 steps/s  elapsed 35s  left 11m 15s
    validation at step 320: 6.4 s  ndcg@10 0.7560  mrr@10 0.7213  recall@100 0.9377  recall@1000 0.9800

Refreshes and corpus encodings log their own lines (`lit_dr.training.refresh`, `lit_dr.data.progress`), which
`console_logging` shows. `lit-dr` picks the callbacks with `progress_callbacks`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichProgressBar
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)
MAIN_METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


class FitClock:
    """Steps per second and the fit's time left, from the wall time since the fit's first step ended: a one-time
    setup before it (LTRe's corpus index, ANCE's refresh before the first step) would otherwise read as the rate
    of every step, and a 3-minute fit would say 45 minutes left. Refreshes and evaluations after it are part of
    the rate: they are part of what is left."""

    def __init__(self) -> None:
        self.began = self.start = None
        self.first_step, self.total = 0, math.inf

    def begin(self, trainer: L.Trainer) -> None:
        self.began, self.start = time.perf_counter(), None
        total = trainer.estimated_stepping_batches  # max_steps, or max_epochs x steps per epoch (inf: no limit)
        self.total = float(total) if total is not None else math.inf

    def step_done(self, trainer: L.Trainer) -> None:
        """After each training batch: the first one starts the rate's clock."""
        if self.start is None:
            self.start, self.first_step = time.perf_counter(), trainer.global_step

    def since_begin(self) -> float:
        return 0.0 if self.began is None else time.perf_counter() - self.began

    def elapsed(self) -> float:
        return 0.0 if self.start is None else time.perf_counter() - self.start

    def rate(self, step: int) -> float:
        done, elapsed = step - self.first_step, self.elapsed()
        return done / elapsed if done > 0 and elapsed > 0 else 0.0

    def left(self, step: int) -> float:
        rate = self.rate(step)
        return (self.total - step) / rate if rate > 0 and math.isfinite(self.total) else math.inf


def _metrics(trainer: L.Trainer, prefix: str) -> str:
    found = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}
    return "  ".join(f"{k} {found[k]:.4f}" for k in MAIN_METRICS if k in found)


class LogProgress(ProgressBar):
    """Progress as plain lines on stdout, for a console that is not a terminal.

    Args:
        every_n_steps: a line every this many optimizer steps (and at the last); None: 5 % of the fit (at least
            every step, for a fit of under 20).
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps, self._enabled = every_n_steps, True
        self.clock, self._every, self._logged_step, self._eval_start = FitClock(), 1, -1, 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args, **kwargs) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(*args, **{"flush": True, **kwargs})

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.begin(trainer)
        total = self.clock.total
        self._every = self.every_n_steps or (max(1, round(total / 20)) if math.isfinite(total) else 50)
        epochs = f" ({trainer.max_epochs} epochs of {self.total_train_batches})" if trainer.max_steps < 0 else ""
        shown = int(total) if math.isfinite(total) else "unlimited"
        self.print(f"fit: {shown} optimizer steps{epochs}; a line every {self._every} steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.clock.step_done(trainer)
        step = trainer.global_step
        if step == self._logged_step or not (step % self._every == 0 or step >= self.clock.total):
            return  # several micro-batches per step under gradient accumulation: one line per step
        self._logged_step = step
        loss = trainer.callback_metrics.get("train/loss")
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        total = int(self.clock.total) if math.isfinite(self.clock.total) else "?"
        self.print(f"step {step}/{total}  epoch {trainer.current_epoch + 1}{epochs}  "
                   f"loss {float('nan') if loss is None else float(loss):.4f}  lr {lr:.3g}  "
                   f"{self.clock.rate(step):.3g} steps/s  elapsed {duration(self.clock.since_begin())}  "
                   f"left {duration(self.clock.left(step))}")

    def _start_eval(self) -> None:
        self._eval_start = time.perf_counter()

    def _end_eval(self, trainer, what: str, prefix: str) -> None:
        step = getattr(trainer.lightning_module, "last_evaluation", {}).get("step", trainer.global_step)
        self.print(f"{what} at step {step}: {duration(time.perf_counter() - self._eval_start)}  "
                   f"{_metrics(trainer, prefix)}".rstrip())

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._start_eval()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._end_eval(trainer, "validation", "val/")

    on_test_start = on_predict_start = on_validation_start

    def on_test_end(self, trainer, pl_module) -> None:
        self._end_eval(trainer, "test", "test/")

    def on_predict_end(self, trainer, pl_module) -> None:
        self.print(f"predict: {duration(time.perf_counter() - self._eval_start)}")


class FitProgressBar(RichProgressBar):
    """Lightning's rich bar (per epoch), with the whole fit's time left (`fit left`) beside the loss."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock = FitClock()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.clock.begin(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.clock.step_done(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.state.fn == TrainerFn.FITTING and self.clock.start is not None:
            metrics["fit left"] = duration(self.clock.left(trainer.global_step))
        return metrics


class ParamsSummary(ModelSummary):
    """Lightning's model summary as plain text, without its FLOPs column and `Total FLOPs: 0` line: FLOPs are
    counted only with an `example_input_array`, which a retriever has none of. (The rich summary, Lightning's
    choice beside the rich bar, also writes its table's colour codes into a log file.)"""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **summarize_kwargs) -> None:
        from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

        columns = [c for c in summary_data if c[0] != "FLOPs" or total_flops]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes,
                                      total_flops, *columns)
        if not total_flops:
            table = table.rsplit("\n", 1)[0]  # the "Total Flops" line
        logging.getLogger("lightning.pytorch.callbacks.model_summary").info("\n" + table)


def stdout_is_terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", None) and sys.stdout.isatty())


def progress_callbacks(trainer_config, configured: list) -> list[L.Callback]:
    """The CLI's progress bar and model summary: `FitProgressBar` on a terminal, else `LogProgress`, and
    `ParamsSummary`; each only where the config neither disables it nor brings its own."""
    callbacks: list[L.Callback] = []
    get = trainer_config.get if hasattr(trainer_config, "get") else (lambda key, default=None: default)
    if get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in configured):
        callbacks.append(FitProgressBar() if stdout_is_terminal() else LogProgress())
    if get("enable_model_summary") is not False and not any(isinstance(c, ModelSummary) for c in configured):
        callbacks.append(ParamsSummary())
    return callbacks


# Lightning's INFO lines about its own wiring, nothing a user acts on: that the CLI brought its own model summary,
# and that the training loader is loaded early (to count the fit's steps for the schedule and the progress lines).
LIGHTNING_CHATTER = ("Trainer already configured with model summary callbacks",
                     "Loading `train_dataloader` to estimate number of stepping batches")


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_CHATTER)


def console_logging() -> None:
    """Show lit_dr's INFO lines (refreshes, evaluations, encodings with their times) on stderr, as Lightning shows
    its own; a handler of the application's (on the root logger) takes them instead. Also drops the warning
    "The dirpath has changed" that Lightning gives on every resume: each run of the CLI has its own directory, so
    a resumed run's checkpoints always go elsewhere, by design."""
    logger = logging.getLogger("lit_dr")
    if not logger.handlers and not logging.getLogger().handlers:  # else the application's logging decides
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropChatter) for f in rank_zero.filters):
        rank_zero.addFilter(_DropChatter())
