"""A callback that records each process's peak memory during a fit, for `scale_refresh.py`.

A background thread reads `RssAnon` (anonymous resident memory: tensors, arrays, the Python heap; not the
memory-mapped token store or shared libraries, which the kernel can drop and reload) from /proc/self/status
every `interval_s` between setup and teardown. A spike shorter than the interval can be missed; `VmHWM`, the
kernel's exact peak of the whole resident set (file-backed pages included), is recorded beside it.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import lightning as L


def read_status_kb(field: str) -> int:
    """A `kB` field of /proc/self/status (Linux), e.g. "RssAnon" or "VmHWM"."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/self/status")


class MemoryProbe(L.Callback):
    """Writes `{out_dir}/memory-rank{rank}.json`: rank, peak_rss_anon_mb, peak_rss_mb (VmHWM), model_param_mb,
    start_rss_anon_mb (at setup). MB = 2**20 bytes."""

    def __init__(self, out_dir: str, interval_s: float = 0.02) -> None:
        self.out_dir, self.interval_s = out_dir, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_anon_kb = self.start_anon_kb = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_anon_kb = max(self.peak_anon_kb, read_status_kb("RssAnon"))
            self._stop.wait(self.interval_s)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.start_anon_kb = self.peak_anon_kb = read_status_kb("RssAnon")
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="memory-probe", daemon=True)
        self._thread.start()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_anon_kb = max(self.peak_anon_kb, read_status_kb("RssAnon"))
        params = sum(p.numel() * p.element_size() for p in pl_module.parameters())
        record = {
            "rank": trainer.global_rank,
            "peak_rss_anon_mb": self.peak_anon_kb / 1024,
            "peak_rss_mb": read_status_kb("VmHWM") / 1024,
            "model_param_mb": params / 2**20,
            "start_rss_anon_mb": self.start_anon_kb / 1024,
            "lit_dr": str(Path(sys.modules["lit_dr"].__file__).parent),  # which checkout ran
        }
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"memory-rank{trainer.global_rank}.json").write_text(json.dumps(record))
