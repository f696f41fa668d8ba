"""`lit-dr fit --help` from a cache: the help of a trainer command needs Lightning's import (7 to 13 s on a busy
CPU), so the first answer is kept under `$LIT_DR_CACHE/help/` (default `~/.cache/lit_dr/help/`) and later ones
are read from there. The key holds everything the text depends on: the arguments, the config files they name
(their contents), lit_dr's source files (their sizes and times), the versions of Lightning, jsonargparse and torch,
the environment variables that change defaults, and the terminal width. `LIT_DR_HELP_CACHE=0` turns it off.

No torch or Lightning here (`lit_dr.commands.cli` imports this before any command runs).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
HELP_FLAGS = ("-h", "--help")
LIBRARIES = ("lightning", "jsonargparse", "torch", "docstring-parser")


def wants_help(argv: list[str]) -> bool:
    """`--help`, or jsonargparse's `--model.help CLASS` (what `model_help_args` turns `--model X --help` into)."""
    return any(a in HELP_FLAGS or a.split("=", 1)[0].endswith(".help") for a in argv)


def model_help_args(argv: list[str]) -> list[str]:
    """`fit --model lit_dr.ANCE --help` -> `fit --model.help lit_dr.ANCE`: jsonargparse lists a class's own options
    only under `--model.help CLASS`, and a plain `--help` would ignore the class given."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--model" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value, end = argv[i + 1], i + 2
        elif arg.startswith("--model="):
            value, end = arg.split("=", 1)[1], i + 1
        if value is not None and not value.endswith((".yaml", ".yml", ".json")) and "{" not in value:
            rest = [a for a in argv[end:] if a not in HELP_FLAGS]
            return [*(a for a in argv[:i] if a not in HELP_FLAGS), "--model.help", value, *rest]
    return argv


def cache_dir() -> Path:
    return Path(os.environ.get("LIT_DR_CACHE", Path.home() / ".cache" / "lit_dr")) / "help"


def enabled() -> bool:
    return os.environ.get("LIT_DR_HELP_CACHE", "1") not in ("0", "false", "")


def key(argv: list[str]) -> str:
    h = hashlib.sha256()

    def add(*parts) -> None:
        for part in parts:
            h.update(str(part).encode("utf-8", "surrogateescape") + b"\0")

    add(sys.executable, sys.version, *argv, shutil.get_terminal_size().columns)
    for arg in argv:
        path = Path(arg.split("=", 1)[-1])
        if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
            add(path.resolve(), hashlib.sha256(path.read_bytes()).hexdigest())
    for root, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".py", ".yaml")):
                stat = os.stat(os.path.join(root, name))
                add(os.path.join(root, name), stat.st_size, stat.st_mtime_ns)
    for library in LIBRARIES:
        try:
            add(library, metadata.version(library))
        except metadata.PackageNotFoundError:
            add(library, None)
    add(*sorted(f"{k}={v}" for k, v in os.environ.items()
                if k.startswith(("JSONARGPARSE_", "LIT_DR_DATA")) or k in ("WANDB_MODE", "COLUMNS")))
    add(bool(os.environ.get("WANDB_API_KEY")))
    return h.hexdigest()[:32]


def cached_help(argv: list[str]) -> str | None:
    if not enabled():
        return None
    path = cache_dir() / f"{key(argv)}.txt"
    return path.read_text() if path.is_file() else None


def store_help(argv: list[str], text: str) -> None:
    """Keep a help text; a cache that cannot be written (read-only home) is no error."""
    if not enabled() or not text:
        return
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / f"{key(argv)}.txt")
    except OSError:
        pass
