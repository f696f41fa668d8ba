"""A dress rehearsal of MS MARCO passage training at any size: every phase through `lit-dr`, timed and measured.

    python benchmarks/msmarco_rehearsal.py --passages 20000 --queries 5000 --out /tmp/rehearsal/run   # small
    python benchmarks/msmarco_rehearsal.py --out /data/rehearsal   # MS MARCO's own counts (8,841,823 passages)
    python benchmarks/msmarco_rehearsal.py --scale 0.1 --processes 2 --phases generate,prepare_data,refresh

`generate` writes an MS MARCO-format set of random text (`lit_dr.data.synthetic.write_msmarco`: MS MARCO's
counts scaled by --scale, or --passages / --queries; Zipf words, lognormal lengths, mean 56 words per passage and
6 per query). The model is the test suite's tiny BERT (2 layers, width 32) with this vocabulary
(`build_word_bert`: one token per word) and `Encoder(projection_dim=768)`, so every embedding is as wide as an
MS MARCO model's while encoding stays cheap: the figures are those of the data, the index and the search, not of
a real encoder's FLOPs. Each phase is one subprocess (`python -m lit_dr ...`, or this script's `--worker=<phase>`
on the data module where lit-dr has no command for it), under `nice`, with OMP_NUM_THREADS=--threads per process:

  prepare_data  tokenize collection + queries into the token store      setup   judgments, carved dev split
  bm25          bm25s over the corpus for the training queries -> negatives.train.tsv (lit_dr's given negatives)
  random_negatives  instead of bm25 (its retrieval did not finish in 35 CPU minutes at 1M passages, one thread):
                20 random unjudged passages per training query in the same file, so `negatives: file` runs at size
  train         lit-dr fit configs/bm25neg.yaml, negatives: file (bm25's; random without it), --steps steps
  refresh       lit-dr fit configs/ance.yaml from train's checkpoint: one NegativeRefresh before the first step
                (--query-chunks K: it mines a K-th of the training queries, ANCE's ann_chunk_factor)
  refresh_ivf   the same refresh with IVF{sqrt N},<--ivf-codec> at --nprobe (default 32): its time beside the exact
                one (codec Flat holds N x 768 x 4 bytes, 27 GB at 8.8M; SQ8 a quarter of that)
  dev_eval      lit-dr validate on qrels.dev.small.tsv (--data.dev_split=dev.small, as configs/data/msmarco.yaml)
  ltre          lit-dr fit configs/ltre.yaml from train's checkpoint: the fixed index, then --steps steps
  index/search  lit-dr index (Flat) of collection.tsv, lit-dr search of queries.dev.small.tsv
  ivf_recall    recall@10/100 of IVF{sqrt N},<--ivf-codec> at each --nprobe against exact search (lit_dr's, streamed
                over the memory-mapped files), with both times, on the embeddings of --recall-on: the index phase's,
                or refresh_ivf's (made by train's checkpoint: no third encoding of the corpus at 8.8M)

Per phase: wall time; CPU seconds of the phase's processes (polled from /proc/<pid>/stat: on a shared machine the
figure to compare, as wall time includes waiting for the CPU); peak anonymous memory (RssAnon of
/proc/<pid>/status, the largest any one process of the phase's tree reached, polled every 0.2 s: a spike shorter
than that can be missed; file-backed pages such as the memory-mapped token store and embeddings are not counted); disk written (du of --out before and after, so files
a phase writes and deletes again do not show). lit_dr's own timings inside a call (refreshes.jsonl time_* fields,
"<loop>: N texts in S s" progress lines) are listed beside it. Fits run with validation off
(limit_val_batches 0): evaluation is the dev_eval phase. The table is printed and written to --out/rehearsal.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PHASES = ("generate", "prepare_data", "setup", "bm25", "random_negatives", "train", "refresh", "refresh_ivf", "dev_eval", "ltre", "index",
          "search", "ivf_recall")
DIM, DOC_LEN, QUERY_LEN, BM25_DEPTH, NEGATIVES = 768, 128, 32, 100, 20
MB = 2**20


# -- measurement ---------------------------------------------------------------------------------------------
def rss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
    except OSError:  # exited between listing and reading
        return 0


def tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children") if Path(f"/proc/{p}").exists() else ():
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (fields 14 and 15 of /proc/<pid>/stat), 0 once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """Polls the tree of `pid` every 0.2 s. `stop()` gives the largest RssAnon (MB) any one of its processes reached,
    how many processes it saw, and their CPU seconds summed (each as last seen: up to 0.2 s of each is missed;
    not `getrusage`, which misses a DDP rank nobody waits for)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peaks, self.cpu, self._stop = pid, {}, {}, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            for p in tree(self.pid):
                self.peaks[p] = max(self.peaks.get(p, 0), rss_anon_kb(p))
                self.cpu[p] = max(self.cpu.get(p, 0.0), cpu_s(p))
            if self._stop.wait(0.2):
                return

    def stop(self) -> tuple[float, int, float]:
        self._stop.set()
        self._thread.join()
        return max(self.peaks.values(), default=0) / 1024, len(self.peaks), sum(self.cpu.values())


def last_checkpoint(run: Path) -> str:
    """The last checkpoint of the newest fit under `run` (its fit.json)."""
    fits = list(run.glob("**/fit.json"))
    if not fits:
        raise SystemExit(f"msmarco_rehearsal: no fit under {run}: run the {run.name} phase first (--phases)")
    return json.loads(max(fits, key=os.path.getmtime).read_text())["last_model_path"]


def du_mb(path: Path) -> float:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True).stdout.split()[0]) / 1024


LOOP_LINE = re.compile(r"^([A-Za-z][\w .@\-]*): (\d+) [\w ]+ in ([\d.]+) s$")  # lit_dr.data.progress's last line


class Rehearsal:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, Path(args.out).resolve()
        self.data, self.cache, self.runs = self.out / "data", self.out / "cache", self.out / "runs"
        self.model = self.out / "tiny-bert-768"
        self.rows: list[dict] = []
        self.out.mkdir(parents=True, exist_ok=True)

    def measure(self, phase: str, run, notes: str = "") -> None:
        """Runs `run()` (one subprocess: what `call` measured, plus notes) and records its row."""
        before, start = du_mb(self.out), time.perf_counter()
        extra = run() or {}
        wall = time.perf_counter() - start
        row = {"phase": phase, "wall_s": round(wall, 1), "cpu_s": round(extra.pop("cpu_s", 0.0), 1),
               "peak_anon_mb": round(extra.pop("peak_mb", 0.0), 1),
               "procs_seen": extra.pop("procs", 1), "disk_mb": round(du_mb(self.out) - before, 1),
               "lit_dr_timings": extra.pop("timings", ""), "notes": notes or extra.pop("notes", "")}
        self.rows.append(row)
        print(f"## {phase}: {row['wall_s']} s ({row['cpu_s']} s CPU), peak anon {row['peak_anon_mb']} MB, "
              f"disk +{row['disk_mb']} MB"
              f"  {row['lit_dr_timings']}  {row['notes']}", flush=True)

    def call(self, name: str, argv: list[str]) -> dict:
        """One subprocess under nice, output to runs/<name>.log; its peak memory and logged loop timings."""
        threads = str(self.args.threads)
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM":
               "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "LIT_DR_CACHE": str(self.cache),
               "PYTHONPATH": str(REPO)}
        self.runs.mkdir(parents=True, exist_ok=True)
        log = self.runs / f"{name}.log"
        with open(log, "w") as f:  # cwd REPO: `python -m lit_dr` imports this checkout
            proc = subprocess.Popen(["nice", "-n", "19", sys.executable, *argv], cwd=REPO, env=env, stdout=f,
                                    stderr=subprocess.STDOUT)
            probe = PeakMemory(proc.pid)
            code = proc.wait()
        peak, procs, cpu = probe.stop()
        if code != 0:
            raise RuntimeError(f"{name} failed (exit {code}); end of {log}:\n{log.read_text()[-4000:]}")
        loops = [f"{m[1]} {float(m[3]):.1f} s" for m in map(LOOP_LINE.search, log.read_text().splitlines()) if m]
        return {"peak_mb": peak, "procs": procs, "cpu_s": cpu, "timings": "; ".join(loops)}

    def worker(self, name: str) -> dict:
        """This script in a subprocess, running `work_<name>` (below) with this run's options."""
        options = [f"--{k.replace('_', '-')}={v}" for k, v in vars(self.args).items()
                   if v is not None and k not in ("worker", "nprobes", "phases")]
        return self.call(name, [__file__, f"--worker={name}", *options, "--nprobes", *map(str, self.args.nprobes)])

    # -- fits: the objective's config, then a generated fragment with this run's paths and sizes -------------
    def fit(self, name: str, objective: str, init: str | None, trainer: dict, model: dict | None = None,
            data: dict | None = None, command: str = "fit", extra: tuple[str, ...] = ()) -> dict:
        fragment = {
            "model": {"init_args": {"encoder": {"class_path": "lit_dr.Encoder", "init_args": {
                "model_name_or_path": str(self.model), "pooling": "mean", "normalize": True, "projection_dim": DIM}},
                **({"init_checkpoint": init} if init else {}), **(model or {})}},
            "data": {"dataset": str(self.data), "cache_dir": str(self.cache), "query_max_length": QUERY_LEN,
                     "doc_max_length": DOC_LEN, "train_batch_size": self.args.batch_size,
                     "eval_batch_size": self.args.eval_batch_size, "dev_fraction": self.args.dev_fraction,
                     "show_progress": True, **(data or {})},  # not a terminal: one log line per loop, with its time
            # The progress callback stays: without a terminal it logs lines, and encodings log their times with it.
            "trainer": {"default_root_dir": str(self.runs / name), **trainer},
        }
        path = self.runs / f"{name}.yaml"
        self.runs.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(fragment))
        ddp = ["--config", "configs/trainer/ddp_cpu.yaml"] if self.args.processes == 2 else []
        return self.call(name, ["-m", "lit_dr", command, "--config", f"configs/{objective}.yaml", "--config",
                                "configs/logger/csv.yaml", *ddp, "--config", str(path), *extra])

    def logged(self, name: str, start: str = "") -> str:
        """The last line of runs/<name>.log that starts with `start` (stripped)."""
        lines = [line.strip() for line in (self.runs / f"{name}.log").read_text().splitlines()]
        return next((line for line in reversed(lines) if line and line.startswith(start)), "")

    def checkpoint(self, name: str) -> str:
        return last_checkpoint(self.runs / name)

    def refreshed_model(self) -> str:
        """The refresh phase's checkpoint, or refresh_ivf's where only that one ran (dev_eval and index use it)."""
        return self.checkpoint("refresh" if (self.runs / "refresh").exists() else "refresh_ivf")

    def steps(self) -> dict:
        return {"max_steps": self.args.steps, "limit_val_batches": 0}

    # -- the phases ------------------------------------------------------------------------------------------
    def phase_generate(self) -> None:
        self.measure("generate", lambda: {**self.worker("generate"), "notes": self.logged("generate")})

    def phase_prepare_data(self) -> None:
        self.measure("prepare_data", lambda: self.worker("prepare_data"), "data module: tokenize both")

    def phase_setup(self) -> None:
        self.measure("setup", lambda: {**self.worker("setup"), "notes": "data module: stores opened, qrels read, dev "
                                       f"carved; {self.logged('setup', 'queries per split')}"})

    def phase_bm25(self) -> None:
        self.measure("bm25", lambda: self.worker("bm25"), f"bm25s top {BM25_DEPTH} -> negatives.train.tsv")

    def phase_random_negatives(self) -> None:
        self.measure("random_negatives", lambda: self.worker("random_negatives"), "20 random unjudged passages per query")

    def phase_train(self) -> None:
        # Without the bm25 phase's file (--phases without bm25): random negatives, so the later phases can still run.
        negatives = "file" if (self.data / "negatives.train.tsv").exists() else "none"
        self.measure("train", lambda: self.fit("train", "bm25neg", None, self.steps(), data={"negatives": negatives},
                                               extra=("--best_checkpoint=null",)),
                     f"bm25neg, {self.args.steps} steps of {self.args.batch_size} queries, negatives: {negatives}")

    def phase_refresh(self) -> None:
        self.refresh("refresh", self.args.index_factory, self.args.nprobe)

    def phase_refresh_ivf(self) -> None:
        nlist = max(1, round(math.sqrt(self.passages())))
        self.refresh("refresh_ivf", f"IVF{nlist},{self.args.ivf_codec}", self.args.nprobe or 32)

    def passages(self) -> int:
        with open(self.data / "collection.tsv", "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))

    def refresh(self, name: str, index_factory: str, nprobe: int | None) -> None:
        """ANCE from train's checkpoint with one NegativeRefresh before its first step, on `index_factory`."""
        a = self.args
        params = {"nprobe": nprobe} if nprobe and "IVF" in index_factory else None
        callbacks = [{"class_path": "lit_dr.NegativeRefresh", "init_args": {
            "every_n_steps": 10_000, "before_first_step": True, "index_factory": index_factory,
            "search_params": params, "query_chunks": a.query_chunks, "table_dir": str(self.runs / name / "negatives")}}]

        def run():
            result = self.fit(name, "ance", self.checkpoint("train"), {**self.steps(), "callbacks": callbacks},
                              extra=("--best_checkpoint=null",))
            # The last record: the table directory outlives a run, so a rerun into the same --out appends to it.
            record = json.loads((self.runs / name / "negatives" / "refreshes.jsonl").read_text().splitlines()[-1])
            times = "; ".join(f"{k[5:-2]} {v:.1f} s" for k, v in record.items() if k.startswith("time_"))
            return {**result, "timings": f"refreshes.jsonl: {times}"}

        share = f", 1/{a.query_chunks} of the training queries" if a.query_chunks > 1 else ""
        probe = f" nprobe {nprobe}" if params else ""
        self.measure(name, run, f"ANCE, refresh before step 1 ({index_factory}{probe}{share}), {a.steps} steps")

    def phase_dev_eval(self) -> None:
        extra = (f"--ckpt_path={self.refreshed_model()}", "--best_checkpoint=null")
        self.measure("dev_eval", lambda: {**self.fit("dev_eval", "ance", None, {}, data={"dev_split": "dev.small"},
                                                     command="validate", extra=extra),
                                          "notes": "lit-dr validate on dev.small (exact search): "
                                                   + self.logged("dev_eval", "dev metrics")})

    def phase_ltre(self) -> None:
        self.measure("ltre", lambda: self.fit("ltre", "ltre", self.checkpoint("train"), self.steps(),
                                              extra=("--best_checkpoint=null",)),
                     f"LTRe fixed index (Flat) + {self.args.steps} steps")

    def cli_devices(self) -> list[str]:
        return ["--trainer.accelerator=cpu", f"--trainer.devices={self.args.processes}"]

    def phase_index(self) -> None:
        argv = ["-m", "lit_dr", "index", self.refreshed_model(), str(self.data / "collection.tsv"),
                str(self.out / "index"), f"--batch_size={self.args.eval_batch_size}", *self.cli_devices()]
        self.measure("index", lambda: self.call("index", argv), "lit-dr index, Flat (embedding files only)")

    def phase_search(self) -> None:
        argv = ["-m", "lit_dr", "search", str(self.out / "index"), str(self.data / "queries.dev.small.tsv"),
                str(self.out / "dev.small.run"), "--k=1000", *self.cli_devices()]
        self.measure("search", lambda: self.call("search", argv), "lit-dr search, dev.small queries, top 1000")

    def phase_ivf_recall(self) -> None:
        self.measure("ivf_recall", lambda: {**self.worker("ivf_recall"), "notes": self.logged("ivf_recall")})

    # -- the table -------------------------------------------------------------------------------------------
    def report(self) -> None:
        cols = ("phase", "wall_s", "cpu_s", "peak_anon_mb", "procs_seen", "disk_mb", "lit_dr_timings", "notes")
        print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for row in self.rows:
            print("| " + " | ".join(str(row[c]) for c in cols) + " |")
        meta = {"args": vars(self.args), "rows": self.rows}
        tmp = self.out / ".rehearsal.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, self.out / "rehearsal.json")
        print(f"\nwritten: {self.out / 'rehearsal.json'}")


# -- the workers: each phase that is no lit-dr command runs as `python msmarco_rehearsal.py --worker=<phase>` ------
def work_generate(args: argparse.Namespace, out: Path) -> None:
    from lit_dr.data.synthetic import MSMARCO_COUNTS, build_word_bert, letter_words, write_msmarco

    n = args.passages or max(2, round(MSMARCO_COUNTS["passages"] * args.scale))
    q = args.queries or max(1, round(MSMARCO_COUNTS["train_queries"] * args.scale))
    sizes = {"passages": n, "train_queries": q}
    for split in ("train", "dev"):  # MS MARCO's ratios to the training queries
        if split == "dev":
            sizes["dev_queries"] = max(1, round(MSMARCO_COUNTS["dev_queries"] * q / MSMARCO_COUNTS["train_queries"]))
        queries = sizes[f"{split}_queries"]
        ratio = MSMARCO_COUNTS[f"{split}_judgments"] / MSMARCO_COUNTS[f"{split}_queries"]
        sizes[f"{split}_judgments"] = max(queries, round(queries * ratio))
    counts = write_msmarco(out / "data", **sizes, vocab_size=args.vocab, seed=args.seed)
    build_word_bert(out / "tiny-bert-768", letter_words(args.vocab))
    print(", ".join(f"{k} {v:,}" for k, v in counts.items()))


def data_module(args: argparse.Namespace, out: Path):
    """The data module as the fits configure it (negatives: none; each phase calls what it measures)."""
    from lit_dr import RetrievalDataModule

    return RetrievalDataModule(str(out / "data"), tokenizer=str(out / "tiny-bert-768"), query_max_length=QUERY_LEN,
                               doc_max_length=DOC_LEN, dev_fraction=args.dev_fraction, negatives="none",
                               cache_dir=str(out / "cache"))


def work_prepare_data(args: argparse.Namespace, out: Path) -> None:
    data_module(args, out).prepare_data()


def work_setup(args: argparse.Namespace, out: Path) -> None:
    dm = data_module(args, out)
    dm.setup("validate")
    print("queries per split:", {k: len(v) for k, v in dm.split_rows.items()})


def work_bm25(args: argparse.Namespace, out: Path) -> None:
    """lit_dr's BM25 (what `negatives: bm25` calls, with its cache), written as the data set's given negatives:
    each training query's top BM25_DEPTH minus its positives, the first NEGATIVES kept (`read_negatives` format)."""
    from lit_dr.files import atomic_file
    from lit_dr.mining.bm25 import bm25_search

    dm = data_module(args, out)
    dm.setup("validate")
    train = dm.split_rows["train"]
    _, ranked = bm25_search(list(dm.corpus.texts()), list(dm.queries.texts(train.tolist())), k=BM25_DEPTH,
                            cache_dir=dm.cache_dir / "bm25", show_progress=True)  # (Q, depth) corpus rows
    with atomic_file(out / "data" / "negatives.train.tsv") as f:
        for q, row, excluded in zip(train.tolist(), ranked.tolist(), dm.excluded_docs(train), strict=True):
            kept = [str(dm.corpus.ids[d]) for d in row if d >= 0 and d not in excluded][:NEGATIVES]
            f.write(f"{dm.queries.ids[q]}\t{','.join(kept)}\n")


def work_random_negatives(args: argparse.Namespace, out: Path) -> None:
    """negatives.train.tsv as work_bm25 writes it, of NEGATIVES random passages per training query none of which
    is judged for it (drawn with a few spares, then the judged ones dropped)."""
    import numpy as np

    from lit_dr.files import atomic_file

    root = out / "data"
    with open(root / "collection.tsv") as f:
        pids = np.array([line.split("\t", 1)[0] for line in f])
    judged: dict[str, set[str]] = {}
    with open(root / "qrels.train.tsv") as f:
        for line in f:
            q, _, d, _ = line.split()
            judged.setdefault(q, set()).add(d)
    rng = np.random.default_rng(args.seed)
    with open(root / "queries.train.tsv") as queries, atomic_file(root / "negatives.train.tsv") as f:
        for line in queries:
            q = line.split("\t", 1)[0]
            kept = [p for p in pids[rng.integers(0, len(pids), NEGATIVES + 4)] if p not in judged.get(q, ())]
            f.write(f"{q}\t{','.join(kept[:NEGATIVES])}\n")


def recall_inputs(args: argparse.Namespace, out: Path) -> tuple[str, Path]:
    """(model, embedding directory) that ivf_recall measures: the index phase's, or refresh_ivf's corpus embeddings
    (encoded before its first step, so by the train phase's checkpoint, which it starts from)."""
    if args.recall_on == "index":
        return json.loads((out / "index" / "index.json").read_text())["model"], out / "index" / "embeddings"
    return last_checkpoint(out / "runs" / "train"), max((out / "runs" / "refresh_ivf").glob("**/embeddings/corpus-*"))


def work_ivf_recall(args: argparse.Namespace, out: Path) -> None:
    """Recall of IVF{sqrt N},<codec> against exact search for a sample of queries, embedded by the model that made
    the embeddings. Both read the memory-mapped embeddings: the IVF index is the only copy held in memory."""
    import numpy as np
    import torch

    from lit_dr.commands.inference import load_towers
    from lit_dr.data.formats import dataset_files
    from lit_dr.data.token_store import cached_store
    from lit_dr.index.embeddings import EmbeddingShards
    from lit_dr.index.encoding import encode_store
    from lit_dr.index.faiss_index import build_index, search
    from lit_dr.index.search import exact_search_stream

    model, directory = recall_inputs(args, out)
    tower, _ = load_towers(model)
    store = cached_store("queries", list(dataset_files(out / "data").queries), tower.tokenizer, QUERY_LEN,
                         out / "cache", show_progress=False)
    rows = np.sort(np.random.default_rng(args.seed).choice(len(store), min(args.ivf_queries, len(store)), False))
    with torch.inference_mode():
        queries = encode_store(tower.encode, store, rows, batch_size=256, show_progress=False).numpy()  # (Q, H)
    docs = EmbeddingShards(directory)  # (N, H), memory-mapped
    k, nlist = 100, max(1, round(math.sqrt(len(docs))))
    factory = f"IVF{nlist},{args.ivf_codec}"
    print(f"ivf_recall: {len(rows)} queries over {directory} ({model})", flush=True)
    start = time.perf_counter()
    _, exact = exact_search_stream(docs, queries, k)
    flat_s = time.perf_counter() - start
    start = time.perf_counter()
    ivf = build_index(docs, factory)
    parts = [f"{len(rows)} queries, N {len(docs):,}: exact search {flat_s:.2f} s; {factory} built "
             f"{time.perf_counter() - start:.1f} s"]
    for nprobe in args.nprobes:
        start = time.perf_counter()
        _, found = search(ivf, queries, k, params={"nprobe": nprobe})
        seconds = time.perf_counter() - start
        recall = {c: np.mean([len(set(f[:c]) & set(e[:c])) / c for f, e in zip(found, exact, strict=True)])
                  for c in (10, 100)}
        parts.append(f"nprobe {nprobe}: search {seconds:.2f} s, R@10 {recall[10]:.3f}, R@100 {recall[100]:.3f}")
    print("; ".join(parts), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/msmarco_rehearsal")
    p.add_argument("--scale", type=float, default=1.0, help="MS MARCO's counts times this")
    p.add_argument("--passages", type=int, help="passages (instead of --scale)")
    p.add_argument("--queries", type=int, help="training queries (dev queries and judgments in MS MARCO's ratio)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--processes", type=int, choices=(1, 2), default=1, help="2: CPU DDP (configs/trainer/ddp_cpu)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process")
    p.add_argument("--index-factory", default="Flat", help="the refresh's FAISS index, e.g. IVF4096,Flat")
    p.add_argument("--nprobe", type=int, default=None, help="the refresh's nprobe with an IVF index (refresh_ivf: 32)")
    p.add_argument("--query-chunks", type=int, default=1, help="the refresh mines 1/K of the training queries")
    p.add_argument("--nprobes", type=int, nargs="+", default=[32, 64], help="ivf_recall's nprobe values")
    p.add_argument("--ivf-queries", type=int, default=1000)
    p.add_argument("--ivf-codec", default="Flat", help="refresh_ivf's and ivf_recall's IVF codes: Flat, SQ8, PQ96, ...")
    p.add_argument("--recall-on", choices=("index", "refresh_ivf"), default="index",
                   help="whose corpus embeddings ivf_recall measures")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=512)
    p.add_argument("--dev-fraction", type=float, default=0.01, help="of training queries carved as lit_dr's dev")
    p.add_argument("--vocab", type=int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(REPO))  # this checkout's lit_dr, as the subprocesses import it
    if args.worker:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")  # lit_dr's progress lines, with their times
        return globals()[f"work_{args.worker}"](args, Path(args.out).resolve())
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}; choose from {','.join(PHASES)}")
    rehearsal = Rehearsal(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still prints the table of what ran
    print(f"# {' '.join(sys.argv)}", flush=True)
    try:
        for phase in PHASES:
            if phase in args.phases.split(","):
                getattr(rehearsal, f"phase_{phase}")()
    finally:
        rehearsal.report()


if __name__ == "__main__":
    main()
