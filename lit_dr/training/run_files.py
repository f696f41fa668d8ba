"""Files a fit writes into its run directory besides checkpoints and run files: its dev split (`SaveDevSplit`)."""

from __future__ import annotations

import logging

import lightning as L

from lit_dr.files import shared_run_directory

log = logging.getLogger(__name__)
DEV_DIR = "dev"


class SaveDevSplit(L.Callback):
    """At the start of a fit, writes the dev queries and judgments it validates on into `<run>/dev/` (BEIR files,
    `RetrievalDataModule.write_split`): carved out of the training queries at run time when the data set has no
    dev qrels, they could not be scored again otherwise."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if not hasattr(dm, "write_split") or not len(getattr(dm, "split_rows", {}).get("dev", ())):
            return
        directory = shared_run_directory(trainer) / DEV_DIR  # collective: every process asks
        if trainer.is_global_zero:
            dm.write_split("dev", directory)
            log.info("dev split (%d queries) written to %s", len(dm.split_rows["dev"]), directory)
