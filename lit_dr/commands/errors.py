"""Which errors a person can act on, told in one line (`lit-dr <command>: error: <message>`), and the "did you
mean" of a config typo. No torch or Lightning here: `lit_dr.commands.cli` imports this before any command runs."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
# Raised wherever: bad input, a file that is not there or is in the way.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
# Raised by libraries for a setting that cannot work (Lightning: a GPU accelerator on a machine without one).
USER_ERROR_NAMES = ("MisconfigurationException", "ArgumentError", "PipelineError")
# Raised by lit_dr's own code, these are bugs, not messages: they keep their traceback.
BUGS = (AssertionError, AttributeError, NameError, KeyError, IndexError, ZeroDivisionError, RecursionError)


class SetupError(Exception):
    """A run that cannot work, found before the model, the data and the logger are built (a missing data set,
    checkpoint or GPU). Its message says what to change."""


class ConfigError(SetupError):
    """The command line or a config file does not parse (a typo, a bad value)."""


def raised_in_lit_dr(error: BaseException) -> bool:
    tb = error.__traceback__
    last = None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


def user_error_message(error: BaseException) -> str | None:
    """The line to print for an error a person can act on, else None (a bug: the traceback stays)."""
    own = raised_in_lit_dr(error)
    if isinstance(error, (SetupError, *USER_ERRORS)) or type(error).__name__ in USER_ERROR_NAMES:
        message = str(error).strip() or type(error).__name__
        if not own and not isinstance(error, SetupError):  # a library's words: say whose
            module = type(error).__module__
            message += f" ({type(error).__name__}{'' if module == 'builtins' else ' from ' + module})"
        return message
    if own and not isinstance(error, BUGS):
        return str(error).strip() or type(error).__name__
    return None


# -- config typos ----------------------------------------------------------------------------------------------
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_KEY_PATTERNS = (re.compile(r"does not accept option '([^']+)'"), re.compile(r'does not accept option "([^"]+)"'),
                 re.compile(r'Key "([^"]+)" is not expected'), re.compile(r'No action for key "([^"]+)"'),
                 re.compile(r"Key '([^']+)' is not expected"), re.compile(r"No action for key '([^']+)'"))


def unknown_keys(message: str) -> list[str]:
    """The option names a parser's message says it does not know ("trainer.max_epocs"), without dashes."""
    found = _UNRECOGNIZED.search(message)
    if found:
        return [a.lstrip("-").split("=", 1)[0] for a in found.group(1).split() if a.startswith("--")]
    for pattern in _KEY_PATTERNS:
        keys = pattern.findall(message)
        if keys:
            return keys
    return []


def _closest(word: str, candidates: Iterable[str], n: int, cutoff: float) -> list[str]:
    """difflib's close matches, less those clearly worse than the best one."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates), reverse=True)
    scored = [(r, c) for r, c in scored if r >= cutoff]
    return [c for r, c in scored[:n] if r >= scored[0][0] - 0.04]


def suggestions(key: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known keys closest to `key` (difflib), first on the whole dotted key, then on its last part under
    the same parent."""
    known = sorted(set(known))
    close = _closest(key, known, n, 0.75)
    if close:
        return close
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    return [siblings[m] for m in _closest(leaf, siblings, n, 0.6)]


def one_line(message: str, known: Iterable[str], prefix: str = "") -> str:
    """The useful line of a parser's message, with a "did you mean" for each unknown key. `prefix`: what the
    keys in `message` sit under ("model.init_args." for a model's own options)."""
    known = list(known)
    keys = unknown_keys(message)
    if not keys:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        return " ".join(lines[:3]) if lines else message
    parts = []
    for key in keys:
        full = prefix + key if prefix and not key.startswith(prefix) else key
        close = suggestions(full, known)
        parts.append(f"unknown option '{full}'" + (f"; did you mean {' or '.join(repr(c) for c in close)}?"
                                                  if close else ""))
    return "; ".join(parts)
