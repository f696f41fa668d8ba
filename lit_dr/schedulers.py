"""Learning-rate schedules, as classes so a YAML can name them (`LRSchedulerCallable`)."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class LinearWarmup(LambdaLR):
    """Linear warmup over `warmup_steps`, then constant, or linear decay to 0 at `total_steps` when given (DPR, ANCE)."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | None = None) -> None:
        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / (warmup_steps + 1)
            if total_steps is None:
                return 1.0
            return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

        super().__init__(optimizer, factor)
