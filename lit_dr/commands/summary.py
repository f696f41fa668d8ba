"""What a `lit-dr fit|validate|test` run says about itself: its run directory when it starts, and at its end a
summary (dev or test metrics at the last step, run directory, last.ckpt, the best checkpoint and its score, the
TREC run file, the wall time). A fit also writes the summary's facts to `fit.json`, which `lit-dr pipeline` reads.

    lit-dr fit: run directory runs/lit-dr/3f9k2x1a
    ...
    lit-dr fit: done in 13m 24s, 320 steps
      run directory    runs/lit-dr/3f9k2x1a
      dev metrics      step 320: ndcg@10 0.7560  mrr@10 0.7213  recall@100 0.9377  recall@1000 0.9800
      best checkpoint  runs/lit-dr/3f9k2x1a/checkpoints/epoch7-step320.ckpt (val/ndcg@10 = 0.7560)
      last checkpoint  runs/lit-dr/3f9k2x1a/checkpoints/last.ckpt
      run file         runs/lit-dr/3f9k2x1a/runs/dev-step0000320.trec
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from lit_dr.files import atomic_file, run_directory

PREFIX = {"fit": "val/", "validate": "val/", "test": "test/"}
SPLIT = {"val/": "dev", "test/": "test"}
ORDER = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")  # the retrieval metrics first, then the rest by name


def _absolute(path) -> str | None:
    return os.path.abspath(path) if path else None  # not resolve(): last.ckpt may be a link, kept as named


def fit_outcome(trainer: L.Trainer) -> dict:
    """Best and last checkpoints (absolute paths, None when not written) and the last dev metrics of a fit. The best
    comes from the ModelCheckpoint that monitors a metric, the last from the one that saves last.ckpt."""
    callbacks = trainer.checkpoint_callbacks
    best = next((c for c in callbacks if c.monitor is not None), trainer.checkpoint_callback)  # None: no checkpoints
    last = next((c for c in callbacks if c.save_last and c.last_model_path), best)
    score = getattr(best, "best_model_score", None)
    return {
        "best_model_path": _absolute(getattr(best, "best_model_path", None)),
        "best_model_score": None if score is None else float(score),
        "monitor": getattr(best, "monitor", None),
        "last_model_path": _absolute(getattr(last, "last_model_path", None)),
        "global_step": trainer.global_step,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        "run_dir": _absolute(run_directory(trainer)),
        "run_file": _absolute(getattr(trainer.lightning_module, "last_run_file", None)),
    }


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def metrics_line(metrics: dict[str, float], prefix: str) -> str:
    names = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    keys = [k for k in ORDER if k in names] + sorted(set(names) - set(ORDER))
    return "  ".join(f"{k} {names[k]:.4f}" for k in keys)


def summary_lines(command: str, trainer: L.Trainer, wall_s: float, outcome: dict | None = None) -> list[str]:
    """The end-of-run summary of `command` (fit, validate or test); `outcome`: a fit's `fit_outcome`."""
    module = trainer.lightning_module
    prefix = PREFIX[command]
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    step = getattr(module, "last_evaluation", {}).get("step", trainer.global_step)
    steps = f", {trainer.global_step} steps" if command == "fit" else ""
    lines = [f"lit-dr {command}: done in {duration(wall_s)}{steps}",
             f"  run directory    {run_directory(trainer)}"]
    shown = metrics_line(metrics, prefix)
    lines.append(f"  {(SPLIT[prefix] + ' metrics').ljust(17)}"
                 + (f"step {step}: {shown}" if shown else "none: nothing was evaluated"))
    if outcome is not None:
        if outcome["best_model_score"] is not None:
            lines.append(f"  best checkpoint  {outcome['best_model_path']} "
                         f"({outcome['monitor']} = {outcome['best_model_score']:.4f})")
        else:
            lines.append("  best checkpoint  none (no ModelCheckpoint monitors a logged metric)")
        lines.append(f"  last checkpoint  {outcome['last_model_path'] or 'none'}")
    elif trainer.ckpt_path:
        lines.append(f"  checkpoint       {trainer.ckpt_path}")
    run_file = getattr(module, "last_run_file", None)
    lines.append(f"  run file         {run_file or 'none'}")
    return lines


def finish_wandb() -> None:
    """End the W&B run now that the command is done. Left to W&B's exit hook, its closing lines ("You can sync this
    run ...") come with raw colour codes in a log file: at interpreter exit click no longer strips them."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


class AnnounceRun(L.Callback):
    """Prints where the run goes as it starts (after the loggers named it: W&B's id exists from then on)."""

    def _announce(self, trainer: L.Trainer, command: str) -> None:
        if trainer.is_global_zero:
            print(f"lit-dr {command}: run directory {run_directory(trainer)}", flush=True)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._announce(trainer, "fit")

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:  # not the validations inside a fit
            self._announce(trainer, "validate")

    def on_test_start(self, trainer, pl_module) -> None:
        self._announce(trainer, "test")


class RunReport:
    """LightningCLI hooks (mixed into `LitDrCLI`): the wall time of each command, `fit.json` after a fit, and the
    summary at the end of fit, validate and test (process 0)."""

    def _started(self) -> None:
        self._start = time.perf_counter()

    before_fit = before_validate = before_test = _started

    def _report(self, command: str, outcome: dict | None = None) -> None:
        wall = time.perf_counter() - getattr(self, "_start", time.perf_counter())
        print("\n" + "\n".join(summary_lines(command, self.trainer, wall, outcome)), flush=True)
        finish_wandb()

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        wall = time.perf_counter() - getattr(self, "_start", time.perf_counter())
        outcome = {**fit_outcome(self.trainer), "wall_time_s": round(wall, 3)}
        # The machine-readable end of a fit: `lit-dr pipeline` warm-starts the next stage from its best checkpoint.
        with atomic_file(Path(run_directory(self.trainer)) / "fit.json") as f:
            json.dump(outcome, f, indent=2)
        self._report("fit", outcome)

    def after_validate(self) -> None:
        if self.trainer.is_global_zero:
            self._report("validate")

    def after_test(self) -> None:
        if self.trainer.is_global_zero:
            self._report("test")
