"""`lit-dr fit|validate|test|predict --config configs/<objective>.yaml`: a LightningCLI."""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lit_dr.atomic import atomic_file
from lit_dr.data.datamodule import RetrievalDataModule
from lit_dr.modules.base import BiEncoderModule
from lit_dr.run_dir import run_directory


class SaveRunConfig(SaveConfigCallback):
    """Writes the fully resolved config into the run's own directory and gives it to every logger (W&B shows it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        with atomic_file(run_directory(trainer) / self.config_filename) as f:
            f.write(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": self.config.as_dict()})


def default_logger() -> dict:
    """W&B, offline unless an API key is configured, so a run never waits on the network."""
    online = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
    return {
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "lit-dr", "save_dir": "runs", "offline": not online},
    }


class LitDrCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The data module tokenizes with the model's own tokenizer.
        parser.link_arguments("model.init_args.encoder.init_args.model_name_or_path", "data.tokenizer")

    def after_fit(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if self.trainer.is_global_zero and metrics:
            print("\nDev metrics after fit (" + f"step {self.trainer.global_step}):")
            for k, v in sorted(metrics.items()):
                print(f"  {k:<16} {v:.4f}")
            ckpt = self.trainer.checkpoint_callback
            if ckpt is not None and ckpt.best_model_path and ckpt.best_model_score is not None:
                print(f"  best checkpoint  {ckpt.best_model_path} ({ckpt.monitor} = {float(ckpt.best_model_score):.4f})")


def run(args: list[str] | None = None) -> LitDrCLI:
    """Run the CLI and return it (its trainer, model and data module), for use from Python."""
    return LitDrCLI(
        BiEncoderModule,
        RetrievalDataModule,
        subclass_mode_model=True,
        save_config_callback=SaveRunConfig,
        trainer_defaults={"logger": default_logger(), "num_sanity_val_steps": 0},
        args=args,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """The `lit-dr` console script (returns None: a returned object would become the exit status)."""
    run(args)


if __name__ == "__main__":
    main()
