"""`lit-dr <command>`: the console entry point.

`fit|validate|test|predict` are a LightningCLI (`lit_dr.commands.trainer_cli`); `export|index|search|pipeline` are
parsed by `lit_dr.commands.standalone`. This module imports neither torch nor Lightning: a command's own module
does, when it runs, so `lit-dr --help` and `lit-dr export --help` answer at once, and a repeated
`lit-dr fit --help` comes from a cache (`help_cache`; the first one waits for Lightning's import).

A mistake a person can act on (a file that is not there or is in the way, a bad value, a config typo, a GPU
config on a machine without one) ends the command with one line, `lit-dr <command>: error: <message>`, and exit
status 2; `LIT_DR_TRACEBACK=1` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

from lit_dr.commands.errors import user_error_message
from lit_dr.commands.help_cache import cached_help, model_help_args, wants_help
from lit_dr.commands.standalone import COMMANDS, run_command

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
TRACEBACK_VARIABLE = "LIT_DR_TRACEBACK"
DESCRIPTION = ("lit-dr: train and evaluate dense retrievers (fit, validate, test, predict), driven by YAML. "
               "Using a trained model: lit-dr export | index | search; stages in one command: lit-dr pipeline "
               "(each with --help). A mistake ends with one line and exit status 2; "
               f"{TRACEBACK_VARIABLE}=1 shows its traceback.")
TOP_HELP = f"""usage: lit-dr [-h] {{{",".join(TRAINER_COMMANDS + COMMANDS)}}} ...

{DESCRIPTION}

commands:
  fit        train a model (--config configs/<objective>.yaml)
  validate   score a checkpoint on the dev split (--ckpt_path)
  test       score a checkpoint on the test split (--ckpt_path)
  predict    write a TREC run for a checkpoint (--ckpt_path)
  export     write a sentence-transformers / Hugging Face directory with a model card
  index      encode a corpus into embedding files and a FAISS index
  search     search an index for queries and write a TREC run
  pipeline   run fits in stages, each warm-started from an earlier stage's best checkpoint

options:
  -h, --help  show this help message and exit

`lit-dr <command> --help` lists a command's options; `lit-dr fit --model lit_dr.ANCE --help` an objective's.
"""

# The Lightning side, for `from lit_dr.commands.cli import run` and friends: imported when first asked for.
_TRAINER_NAMES = ("LitDrCLI", "SaveRunConfig", "run", "fit_outcome", "place_run", "default_logger",
                  "quiet_console", "DEFAULT_ROOT_DIR", "DEFAULTS", "CHECKPOINT_KEYS", "RUN_OPTIONS")


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        from lit_dr.commands import trainer_cli

        return getattr(trainer_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def command_of(argv: list[str]) -> str | None:
    return argv[0] if argv and argv[0] in TRAINER_COMMANDS + COMMANDS else None


def dispatch(argv: list[str]) -> None:
    command = command_of(argv)
    if command is None:
        if argv and argv[0] not in ("-h", "--help"):
            choices = ", ".join(TRAINER_COMMANDS + COMMANDS)
            raise UsageError(f"{'no command given' if not argv else f'unknown command {argv[0]!r}'}; "
                             f"choose one of {choices} (lit-dr --help)")
        print(TOP_HELP, end="")
        return
    if command in COMMANDS:
        run_command(argv)
        return
    if wants_help(argv):
        argv = model_help_args(argv)  # `--model lit_dr.ANCE --help`: that objective's options
        text = cached_help(argv)
        if text is not None:
            print(text, end="")
            return
    from lit_dr.commands.trainer_cli import run

    run(argv)


class UsageError(Exception):
    """The command line itself is wrong (no command, an unknown one)."""


def main(args: list[str] | None = None) -> None:
    """The `lit-dr` console script (returns None: a returned object would become the exit status)."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        dispatch(argv)
    except Exception as error:
        message = str(error) if isinstance(error, UsageError) else user_error_message(error)
        if message is None or os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        print(f"lit-dr{' ' + command_of(argv) if command_of(argv) else ''}: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
