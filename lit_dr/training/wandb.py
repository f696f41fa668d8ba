"""Lightning's `WandbLogger`, less a warning on every run that nobody can act on."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as _WandbLogger


class WandbLogger(_WandbLogger):
    """`lightning.pytorch.loggers.WandbLogger`, same arguments. Lightning passes `anonymous=None` to `wandb.init`
    even when it was not set, and wandb >= 0.19 answers "The anonymous setting has no effect and will be removed"
    on every run; the key is passed only when set."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
