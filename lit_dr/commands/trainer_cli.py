"""`lit-dr fit|validate|test|predict --config configs/<objective>.yaml`: a LightningCLI (imported by
`lit_dr.commands.cli` only when one of these commands runs)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lit_dr.commands.cli import DESCRIPTION
from lit_dr.commands.errors import ConfigError, one_line
from lit_dr.commands.help_cache import store_help, wants_help
from lit_dr.commands.preflight import check_run
from lit_dr.commands.summary import AnnounceRun, RunReport, fit_outcome  # noqa: F401 (fit_outcome: its old home)
from lit_dr.files import atomic_file, run_directory
from lit_dr.objectives.base import BiEncoderModule
from lit_dr.training.datamodule import RetrievalDataModule
from lit_dr.training.progress import console_logging, progress_callbacks
from lit_dr.training.run_files import SaveDevSplit


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


DEFAULT_ROOT_DIR = "runs"
# Seed, logging cadence and the best/last checkpoints every run starts from (jsonargparse's default config file).
DEFAULTS = Path(__file__).with_name("defaults.yaml")
# The checkpoints have keys of their own rather than places in `trainer.callbacks`: jsonargparse merges a list
# given later item by item into an earlier one of the same length (a config's [ModelCheckpoint, X] would inherit the
# default's monitor), and a config's list would replace them.
CHECKPOINT_KEYS = ("best_checkpoint", "last_checkpoint")
# Model options that do not change the weights: the command line and config win over a checkpoint's saved values.
RUN_OPTIONS = ("run_dir", "eval_depth", "index_factory", "search_params")


def default_logger() -> dict:
    """W&B, offline unless an API key is configured, so a run never waits on the network. Its `save_dir` is the
    trainer's `default_root_dir` (`place_run`)."""
    online = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
    return {
        "class_path": "lit_dr.training.wandb.WandbLogger",  # less a warning (lit_dr.training.wandb)
        "init_args": {"project": "lit-dr", "offline": not online},
    }


def place_run(trainer: Namespace) -> None:
    """`--trainer.default_root_dir` places the run, as Lightning users expect: every logger whose `save_dir` was
    not given (absent, or W&B's default ".") writes under it, and checkpoints follow the logger. A `save_dir` given
    in a config or on the command line wins."""
    root = trainer.get("default_root_dir") or DEFAULT_ROOT_DIR
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, Namespace) and isinstance(logger.get("init_args"), Namespace):
            if logger.init_args.get("save_dir") in (None, "", "."):
                logger.init_args.save_dir = root
            # W&B warns "git root <save_dir> does not exist" when the folder is not there yet.
            Path(logger.init_args.get("save_dir") or root).mkdir(parents=True, exist_ok=True)


class LitDrCLI(RunReport, LightningCLI):  # RunReport: fit.json and the summary at the end of fit/validate/test
    def add_arguments_to_parser(self, parser) -> None:
        # Called for every parser that holds the trainer (each subcommand's, or the one parser under run=False), so
        # the defaults apply however the CLI is built. Not the main parser of subcommands: it has no `trainer`.
        for key in CHECKPOINT_KEYS:  # Lightning adds these to the trainer's callbacks; null drops one
            parser.add_lightning_class_args(ModelCheckpoint, key, subclass_mode=True, required=False)
        parser.default_config_files = [str(DEFAULTS)]
        # The data module tokenizes with the model's own tokenizer.
        parser.link_arguments("model.init_args.encoder.init_args.model_name_or_path", "data.tokenizer")

    def parse_arguments(self, parser, args) -> None:
        # A parse error is raised, not printed under 60 lines of usage: `main` tells it in one line.
        for p in parsers_of(parser):
            p.exit_on_error = False
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise ConfigError(one_line(str(error), known_keys(parser))) from None
        # Lightning next overlays a `--ckpt_path` checkpoint's saved hyperparameters on this config; options that do
        # not change the weights are this command's business, so their values are kept here and restored after.
        subcommand = self.config.get("subcommand")
        model = (self.config[subcommand] if subcommand else self.config).get("model")
        init_args = model.get("init_args") if isinstance(model, Namespace) else None
        self._run_options = {k: init_args.get(k) for k in RUN_OPTIONS if k in init_args} if init_args else {}

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Data set, checkpoints, accelerator: before anything is built or written. A CLI built without running a
        # subcommand (`run=False`, as tests and sweeps build one) reads no data, so its data set is not asked for.
        check_run(config, data=self.subcommand is not None)
        place_run(config.trainer)
        init_args = config.model.get("init_args") if isinstance(config.get("model"), Namespace) else None
        for key, value in getattr(self, "_run_options", {}).items():
            if init_args is not None and key in init_args:
                init_args[key] = value
        if "weights_only" in config and config.weights_only is None:
            # `--ckpt_path` loads tensors and plain containers only: a checkpoint never runs code (lit_dr's own
            # checkpoints hold nothing else). `--weights_only=false` for a trusted checkpoint that needs more.
            config.weights_only = True

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """LightningCLI's, less the checkpoint keys set to null (`--best_checkpoint=null`): they are dropped."""
        keys = self._parser(self.subcommand).callback_keys
        extra = [c for c in (self._get(self.config_init, k) for k in keys) if c is not None]
        trainer = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        # Where the run goes, its dev split, progress in a log (lit_dr.commands.summary, lit_dr.training.*).
        extra += [AnnounceRun(), SaveDevSplit(), *progress_callbacks(trainer, list(trainer.get("callbacks") or []))]
        return self._instantiate_trainer(trainer, extra)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_console() -> None:
    """Keep the console to what a run says: Lightning's advertising tips and a deprecation warning Lightning raises
    itself under torch >= 2.10 (nothing a user can act on) are dropped. Called when the CLI runs, not at import."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def parsers_of(parser) -> list:
    """The parser and those of its subcommands (fit, validate, ...)."""
    sub = getattr(parser, "_subcommands_action", None)
    return [parser, *(sub._name_parser_map.values() if sub is not None else ())]


def known_keys(parser) -> list[str]:
    """Every option a subcommand's parser knows, dotted ("trainer.max_epochs"), and each objective's own
    ("model.init_args.temperature"): the candidates of a "did you mean"."""
    import inspect

    import lit_dr.objectives as objectives

    keys: set[str] = set()
    for p in parsers_of(parser):
        for action in p._actions:
            keys.update(o.lstrip("-") for o in action.option_strings if o.startswith("--"))
    for name in objectives.__all__:
        cls = getattr(objectives, name)
        if inspect.isclass(cls) and issubclass(cls, BiEncoderModule):
            for klass in cls.__mro__:
                if "__init__" in vars(klass) and issubclass(klass, BiEncoderModule):
                    keys.update(f"model.init_args.{p}" for p in inspect.signature(klass.__init__).parameters
                                if p not in ("self", "args", "kwargs"))
    return sorted(k for k in keys if k not in ("help", "config", "print_config"))


def run(args: list[str] | None = None) -> LitDrCLI:
    """Run the CLI and return it (its trainer, model and data module), for use from Python."""
    quiet_console()
    console_logging()  # lit_dr's progress and phase lines (lit_dr.training.progress)
    argv = sys.argv[1:] if args is None else list(args)
    if wants_help(argv):  # the help text is kept, for the next `--help` (`lit_dr.commands.help_cache`)
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                return _build(args)
        except SystemExit as done:
            sys.stdout.write(buffer.getvalue())
            if done.code in (0, None):
                store_help(argv, buffer.getvalue())
            raise
    return _build(args)


def _build(args: list[str] | None) -> LitDrCLI:
    return LitDrCLI(
        BiEncoderModule,
        RetrievalDataModule,
        subclass_mode_model=True,
        save_config_callback=SaveRunConfig,
        trainer_defaults={"logger": default_logger(), "num_sanity_val_steps": 0, "default_root_dir": DEFAULT_ROOT_DIR},
        args=None if args is not None and list(args) == sys.argv[1:] else args,  # the console script's own argv
        auto_configure_optimizers=False,
        parser_kwargs={"description": DESCRIPTION, "prog": "lit-dr"},
    )
