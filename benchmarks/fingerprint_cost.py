"""What the token cache's content fingerprint costs: sha256 of a 1 GB file, against the stat() the old key used.

    .venv/bin/python benchmarks/fingerprint_cost.py [--gib 1] [--dir /tmp]

The file is written first, so it is read back from the page cache (the usual case: a data set read at every
fit start). A cold read from disk adds the disk's own time on top. The in-process memo (same inode, size,
mtime and ctime) makes a second call within one process free, as between prepare_data and setup.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from lit_dr.data import token_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    size = int(args.gib * (1 << 30))
    fd, name = tempfile.mkstemp(dir=args.dir, prefix="fingerprint-", suffix=".bin")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(block)
        t = time.perf_counter()
        path.stat()
        stat_s = time.perf_counter() - t
        timings = []
        for _ in range(3):
            token_store._fingerprints.clear()
            t = time.perf_counter()
            token_store.file_fingerprint(path)
            timings.append(time.perf_counter() - t)
        t = time.perf_counter()
        token_store.file_fingerprint(path)  # memoised
        memo_s = time.perf_counter() - t
        print(f"file size            {size / (1 << 30):.2f} GiB")
        print(f"stat (old key)       {stat_s * 1e6:.0f} us")
        print(f"sha256 fingerprint   {min(timings):.2f} s best of 3 ({', '.join(f'{x:.2f}' for x in timings)})"
              f" = {min(timings) / (size / (1 << 30)):.2f} s per GiB")
        print(f"second call (memo)   {memo_s * 1e6:.0f} us")
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
