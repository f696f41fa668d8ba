"""Anonymous memory the data module's own state takes, old forms against new, on a synthetic corpus.

    python benchmarks/data_memory.py [--docs 50000] [--queries N] [--old_root /path/to/old/checkout]

The corpus is `write_random_corpus` (MS MARCO-like passage lengths; MS MARCO's ratio of training queries to
passages by default, 500k / 8.8M; one judgment per query), tokenized once by the tiny test BERT under `--workdir`.
Each measurement runs in a fresh child process that samples `RssAnon` (/proc/self/status: the Python heap and arrays,
not memory-mapped files) every 10 ms and prints its peak growth over the value just before the measured step, with
`VmHWM` (the peak of the whole resident set, memory-mapped pages included). Steps:

- `prepare_data`: tokenizing into the store (once, on a cold cache; the store's build keeps every id in a dict).
- `setup new`: `RetrievalDataModule.setup("fit")` with `negatives="none"` (the data module's state only, no BM25).
- `setup old` (with `--old_root`, e.g. a `git worktree` of the commit before this change): the same with that
  checkout's `lit_dr` first on the path, on the same store.
- `id map`: old, the dict `{id: row}` `TokenStore.row_of` used to build, plus a lookup of every id through it,
  against the `IdIndex` (memory-mapped: no anonymous memory of its own) plus one bulk lookup of every id, whose
  temporaries (the ids as a NumPy string array, encoded, positions, rows) are what the new figure measures;
  both in this branch's code. 50k documents, 2844 queries (2026-12-02, a loaded 2-core machine): setup 10.1 MB
  old / 1.3 MB new; id map 7.9 / 5.0; judgments 1.4 / 0.2.
- `judgments`: after setup, old: the dict of dicts per split, merged relevance, positives dict of arrays and
  queries-of-document dict of sets the data module held (built as the old code did), against a fresh copy of the
  `JudgmentTable`s (and positives, reverse index) it holds now.

Prints one JSON line per step and a table; MB = 2**20 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
MB = 2**20


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/self/status")


class Peak:
    """Peak RssAnon growth (MB) while the `with` block runs, sampled every 10 ms, and VmHWM (MB) at its end."""

    def __enter__(self) -> Peak:
        self.start = self.peak = status_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, status_kb("RssAnon"))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak, self.end = max(self.peak, status_kb("RssAnon")), status_kb("RssAnon")
        self.record = {"peak_anon_growth_mb": round((self.peak - self.start) / 1024, 1),
                       "kept_anon_growth_mb": round((self.end - self.start) / 1024, 1),
                       "vm_hwm_mb": round(status_kb("VmHWM") / 1024, 1)}


def data_module(args: argparse.Namespace):
    from lit_dr.training.datamodule import RetrievalDataModule

    return RetrievalDataModule(dataset=str(args.data), tokenizer=str(args.tokenizer), cache_dir=str(args.cache),
                               doc_max_length=128, query_max_length=32, negatives="none", num_negatives=0,
                               dev_fraction=0.1, show_progress=False)


def old_judgment_forms(dm) -> tuple:
    """The dict forms the data module held before the tables (built as the old `_load` and `_queries_judging` did)."""
    import numpy as np

    judgments = {split: {q: table[q] for q in table} for split, table in dm.judgments.items()}
    relevance: dict[int, dict[int, int]] = {}
    for split in sorted(judgments, key=lambda name: name == "train"):
        relevance.update(judgments[split])
    positives = {q: np.array([d for d, g in rel.items() if g > 0], dtype=np.int64) for q, rel in relevance.items()}
    index: dict[int, set[int]] = {}
    for q, rel in relevance.items():
        for d, g in rel.items():
            if g > 0:
                index.setdefault(d, set()).add(q)
    return judgments, relevance, positives, index


def new_judgment_forms(dm) -> tuple:
    """A fresh copy of the tables the data module holds now (each split's, the merged one, positives, reverse)."""
    from lit_dr.data.judgment_table import merge

    judgments = {split: table.subset(table.queries) for split, table in dm.judgments.items()}
    relevance = merge([judgments[split] for split in sorted(judgments, key=lambda name: name == "train")])
    return judgments, relevance, relevance.positives(), relevance.queries_of_docs(positives_only=True)


def child(args: argparse.Namespace) -> None:
    """One measured step in this process; prints its JSON record."""
    import numpy as np  # noqa: F401 (imported before the baseline)
    import torch  # noqa: F401

    from lit_dr.data.token_store import TokenStore  # noqa: F401
    from lit_dr.training.datamodule import RetrievalDataModule  # noqa: F401

    dm = data_module(args)
    dm._tokenizer()  # the tokenizer loaded before the baseline: not the data module's state
    record: dict = {"step": args.step, "lit_dr": str(Path(sys.modules["lit_dr"].__file__).parent.parent)}
    if args.step == "prepare_data":
        with Peak() as peak:
            dm.prepare_data()
    elif args.step in ("setup new", "setup old"):
        dm.prepare_data()
        with Peak() as peak:
            dm.setup("fit")
        record["queries"] = {split: len(rows) for split, rows in dm.split_rows.items()}
    elif args.step in ("id map old", "id map new"):
        dm.prepare_data()
        store = dm._store("corpus")
        ids = [str(i) for i in store.ids]  # the ids to look up, as Python strings, before the baseline
        with Peak() as peak:
            if args.step == "id map old":
                row_of = {str(i): r for r, i in enumerate(store.ids)}
                rows = [row_of[i] for i in ids]
            else:
                rows = store.id_index.find(ids)
        assert list(rows) == list(range(len(store))), "lookups must give every row back"
        record["ids"] = len(store)
    elif args.step in ("judgments old", "judgments new"):
        dm.prepare_data()
        dm.setup("fit")
        with Peak() as peak:
            forms = (old_judgment_forms if args.step == "judgments old" else new_judgment_forms)(dm)  # noqa: F841
        record["judgments"] = int(sum(len(t.docs) for t in dm.judgments.values()))
    print(json.dumps({**record, **peak.record}), flush=True)


def run_child(args: argparse.Namespace, step: str, code_root: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--child", step, "--workdir", str(args.workdir), "--docs", str(args.docs),
           "--queries", str(args.queries)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code_root)
    if out.returncode:
        raise RuntimeError(f"{step} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=None, help="default: docs * 500k / 8.8M (MS MARCO's ratio)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lit_dr_data_memory"))
    p.add_argument("--old_root", type=Path, default=None, help="a checkout of the old code, for `setup old`")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.queries = args.queries or max(10, round(args.docs * 502_939 / 8_841_823))
    args.data, args.tokenizer = args.workdir / f"n{args.docs}-q{args.queries}", args.workdir / "tiny-bert"
    args.cache = args.workdir / "cache"
    if args.child:
        args.step = args.child
        return child(args)
    from lit_dr.data.synthetic import build_tiny_bert, write_random_corpus

    if not (args.tokenizer / "config.json").exists():
        build_tiny_bert(args.tokenizer)
    if not (args.data / ".complete").exists():
        write_random_corpus(args.data, args.docs, args.queries, seed=0)
        (args.data / ".complete").write_text("")
    steps = ["prepare_data", "setup new", *(["setup old"] if args.old_root else []), "id map old", "id map new",
             "judgments old", "judgments new"]
    records = []
    for step in steps:
        records.append(run_child(args, step, args.old_root if step == "setup old" else HERE))
        print(json.dumps(records[-1]), flush=True)
    print(f"\n{args.docs} documents, {args.queries} queries; peak RssAnon growth / kept growth / VmHWM (MB)")
    for r in records:
        print(f"{r['step']:<15} {r['peak_anon_growth_mb']:>9.1f} {r['kept_anon_growth_mb']:>9.1f} "
              f"{r['vm_hwm_mb']:>9.1f}  {r['lit_dr']}")


if __name__ == "__main__":
    main()
