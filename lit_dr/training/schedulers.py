"""Learning-rate schedules, as classes so a YAML can name them (`LRSchedulerCallable`)."""

from __future__ import annotations

from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup_factor(step: int, warmup_steps: int, total_steps: int | None) -> float:
    """The learning rate's multiplier at optimizer step `step` (0-based): (step + 1) / (warmup_steps + 1) during
    warm-up, then 1, or a linear decay reaching 0 at `total_steps` when given."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if total_steps is None:
        return 1.0
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class LinearWarmup(LambdaLR):
    """Linear warmup over `warmup_steps`, then constant, or linear decay to 0 (DPR, ANCE).

    Args:
        warmup_steps: optimizer steps over which the learning rate rises linearly to its configured value.
        total_steps: the step at which the decay reaches 0; "fit": the fit's last step
            (`Trainer.estimated_stepping_batches`, so it follows max_epochs, max_steps and limit_train_batches; the
            module calls `set_fit_length`); None: no decay.
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | Literal["fit"] | None = None
    ) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

        def factor(step: int) -> float:  # a closure, not a method: LambdaLR's state_dict skips plain functions
            total = self.total_steps
            if total == "fit":  # until the module says how long the fit is (before the first step)
                total = None
            return linear_warmup_factor(step, self.warmup_steps, total)

        super().__init__(optimizer, factor)

    def set_fit_length(self, steps: int) -> None:
        """Resolve total_steps="fit"; an explicit total is kept."""
        if self.total_steps == "fit":
            self.total_steps = int(steps)
