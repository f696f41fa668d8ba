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


EVERY_S = 60.0  # without a terminal, a long loop says how far it is this often


class _Count:
    def __init__(self, bar, desc: str = "", total: int | None = None, unit: str = "", log_every: float | None = None
                 ) -> None:
        self.bar, self.n, self.desc, self.total, self.unit = bar, 0, desc, total, unit
        self.start = self.last = time.perf_counter()
        self.log_every = log_every

    def update(self, n: int) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.log_every is not None and (now := time.perf_counter()) - self.last >= self.log_every:
            self.last = now
            share = f"/{self.total} ({100 * self.n / self.total:.0f} %)" if self.total else ""
            log.info("%s: %d%s%s after %.0f s", self.desc, self.n, share, self.unit, now - self.start)


@contextmanager
def progress(desc: str, total: int | None = None, unit: str = " texts", show: bool = True) -> Iterator[_Count]:
    """`with progress("encode corpus", n) as bar: ... bar.update(k)`: tqdm (left on screen only while running)
    on a terminal; otherwise, when `show`, an INFO line every minute (`encode corpus: 2048/5183 (40 %) texts after
    60 s`) and one at the end: `encode corpus: 5183 texts in 141.2 s`."""
    start = time.perf_counter()
    if show and on_terminal():
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, unit=unit, leave=False) as bar:
            yield _Count(bar)
        return
    count = _Count(None, desc, total, unit, EVERY_S if show else None)
    yield count
    if show:
        seconds = time.perf_counter() - start
        log.info("%s: %d%s in %.1f s", desc, count.n, unit, seconds)
