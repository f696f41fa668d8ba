"""Progress of long loops (tokenizing, BM25, encoding a corpus): a bar on a terminal; elsewhere (a file, a pipe, a
SLURM or W&B log, a notebook) no bar fragments, one log line with the loop's time when it ends."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("lit_dr.progress")


def on_terminal() -> bool:
    """True when progress bars can redraw in place: stderr (where tqdm and bm25s draw) is a terminal."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class _Count:
    def __init__(self, bar) -> None:
        self.bar, self.n = bar, 0

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)


@contextmanager
def progress(desc: str, total: int | None = None, unit: str = " texts", show: bool = True) -> Iterator[_Count]:
    """`with progress("encode corpus", n) as bar: ... bar.update(k)`: tqdm (left on screen only while running)
    on a terminal; otherwise, when `show`, one INFO line at the end: `encode corpus: 5183 texts in 41.2 s`."""
    start = time.perf_counter()
    if show and on_terminal():
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit=unit, leave=False) as bar:
            yield _Count(bar)
        return
    count = _Count(None)
    yield count
    if show:
        seconds = time.perf_counter() - start
        log.info("%s: %d%s in %.1f s", desc, count.n, unit, seconds)
