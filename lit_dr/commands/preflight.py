"""What `lit-dr fit|validate|test|predict` checks of a parsed config before it builds the model, the data module,
the trainer or the logger: the data set, `--ckpt_path`, the warm start (`init_checkpoint`) and the accelerator.
A mistake there then costs a second, not a model load or a W&B start, and leaves no run directory behind.
Each failure is a `SetupError` whose message names the option and says what to change."""

from __future__ import annotations

import os
from pathlib import Path

from jsonargparse import Namespace

from lit_dr.commands.errors import SetupError

# `--ckpt_path` values Lightning resolves itself.
SPECIAL_CKPT_PATHS = ("best", "last", "hpc", "registry")


def _init_args(value) -> Namespace | None:
    return value.get("init_args") if isinstance(value, Namespace) else None


def check_file(value: str | None, option: str, what: str) -> None:
    if value is None or "://" in str(value):  # remote paths (s3://, hf://) are the loader's to check
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise SetupError(f"{option}={value}: is a directory; give the {what} file in it "
                         f"(e.g. {path / 'checkpoints' / 'last.ckpt'})")
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.ckpt"))[:5] if path.parent.is_dir() else []
        raise SetupError(f"{option}={value}: no such {what}"
                         + (f" (that folder holds: {', '.join(near)})" if near else
                            "" if path.parent.is_dir() else f" (folder {path.parent} does not exist)"))


def first_process() -> bool:
    """Whether this is the job's first process (DDP starts the others with these variables set)."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK"))


def check_dataset(data: Namespace | None) -> None:
    """The data set resolves to a complete directory (found locally, else downloaded as `prepare_data` would)."""
    from lit_dr.training.datamodule import RetrievalDataModule

    if not isinstance(data, Namespace) or data.get("dataset") is None:
        return
    args = (data.dataset, data.get("data_root"), data.get("cache_dir"))
    try:
        files = RetrievalDataModule.locate(*args, download=False)
    except FileNotFoundError as missing:
        close = near_names(data.dataset, data.get("data_root"), data.get("cache_dir"))
        if close:  # a typo of a data set that is here: say so now, rather than try a download of the typo
            raise SetupError(f"--data.dataset={data.dataset}: no such data set here; did you mean "
                             f"{' or '.join(repr(c) for c in close)}? ({missing})") from None
        if not data.get("download", True) or not first_process():
            raise SetupError(f"--data.dataset={data.dataset}: {missing}") from None
        try:  # a BEIR name not here yet: fetched now, as prepare_data would, so a wrong name fails now
            files = RetrievalDataModule.locate(*args, download=True)
        except (OSError, RuntimeError) as error:
            raise SetupError(f"--data.dataset={data.dataset}: {error}") from None
    except ValueError as error:
        raise SetupError(f"--data.dataset={data.dataset}: {error}") from None
    dev_split = data.get("dev_split") or "dev"
    if dev_split != "dev" and dev_split not in files.qrels:
        raise SetupError(f"--data.dev_split={dev_split}: {files.root} has no qrels file of that split (it has: "
                         f"{', '.join(sorted(files.qrels)) or 'none'})")
    if data.get("test_qrels"):
        from lit_dr.data.split_files import qrels_file
        try:
            qrels_file(data.test_qrels, "--data.test_qrels")
        except FileNotFoundError as missing:
            raise SetupError(str(missing)) from None


def near_names(name: str, data_root: str | None, cache_dir: str | None) -> list[str]:
    """Data sets found locally (under `data_root` / `$LIT_DR_DATA` and the cache) whose names are close to `name`."""
    import difflib

    from lit_dr.data.token_store import default_cache_dir

    roots = [Path(r).expanduser() for r in (data_root or os.environ.get("LIT_DR_DATA"),) if r]
    roots.append(Path(cache_dir or default_cache_dir()) / "datasets")
    here = sorted({p.name for r in roots if r.is_dir() for p in r.iterdir() if p.is_dir()})
    return difflib.get_close_matches(Path(name).name, here, n=3, cutoff=0.8)


def check_accelerator(trainer: Namespace | None) -> None:
    accelerator = str((trainer or Namespace()).get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SetupError(f"--trainer.accelerator={accelerator}: no CUDA GPU is visible here "
                             "(torch.cuda.is_available() is False); drop the GPU config "
                             "(configs/gpu/*.yaml, configs/trainer/gpu.yaml) or pass --trainer.accelerator=cpu")
    elif accelerator == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise SetupError("--trainer.accelerator=mps: MPS is not available here; pass --trainer.accelerator=cpu")


def check_run(config: Namespace, data: bool = True) -> None:
    """All checks of one subcommand's parsed config (the data set's with `data`); the first failure raises."""
    check_accelerator(config.get("trainer"))
    ckpt = config.get("ckpt_path")
    if ckpt is not None and str(ckpt) not in SPECIAL_CKPT_PATHS:
        check_file(ckpt, "--ckpt_path", "checkpoint")
    init_args = _init_args(config.get("model"))
    if init_args is not None:
        check_file(init_args.get("init_checkpoint"), "--model.init_args.init_checkpoint", "warm-start checkpoint")
    if data:
        check_dataset(config.get("data"))
