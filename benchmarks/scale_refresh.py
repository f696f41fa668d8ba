"""Time and memory of one ANCE-style negative refresh as the corpus grows, with 1 and 2 DDP processes on CPU.

    python benchmarks/scale_refresh.py [--sizes 100000 300000 1000000] [--procs 1 2] [--queries 2000]
    python benchmarks/scale_refresh.py --quick      # 2,000 documents, 1 process, 200 queries: a smoke run

For each corpus size a random BEIR corpus (`lit_dr.data.synthetic.write_random_corpus`, MS MARCO-like passage
lengths) is written and tokenized once under `--workdir`. For each process count, `python -m lit_dr fit` runs one
optimizer step of `BM25Negatives` with a `NegativeRefresh` before it (Flat index, top 200, 20 negatives) on the
tiny test BERT with a 768-wide projection, so embeddings are as wide as MS MARCO models' while encoding stays
cheap. Each row gives the refresh's phase times (from `refreshes.jsonl`), the fit's wall time, and each rank's
peak anonymous memory (`benchmarks/memory_probe.py`) with and without the model's parameters.

The number of training queries is fixed (`--queries`) across sizes: the refresh's memory question is about the
corpus side (N x 768 embeddings, the index), which does not depend on it, while an exact search costs
queries x N x 768 multiply-adds; 2,000 queries keep the search at 1M documents near a minute on 2 cores
instead of MS MARCO's 500k training queries making it the whole measurement.
Threads: each process gets cores // procs (OMP_NUM_THREADS, MKL_NUM_THREADS), so 2 processes do not fight
over 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

BENCHMARKS = Path(__file__).resolve().parent
DIM = 768
PHASES = ("encode_corpus", "encode_queries", "build_index", "search", "sample")
MB = 2**20


def build_model(workdir: Path) -> str:
    from lit_dr.data.synthetic import build_tiny_bert

    path = workdir / "tiny-bert"
    if not (path / "config.json").exists():
        build_tiny_bert(path)
    return str(path)


def build_corpus(workdir: Path, size: int, queries: int, model_dir: str) -> tuple[Path, float, float]:
    """The data set for `size` documents, written and tokenized once; returns (root, write s, tokenize s)."""
    from lit_dr.data.synthetic import write_random_corpus
    from lit_dr.training.datamodule import RetrievalDataModule

    root = workdir / "data" / f"n{size}-q{queries}"
    write_s = 0.0
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        write_random_corpus(root, size, queries, seed=0)
        write_s = time.perf_counter() - start
        (root / ".complete").write_text("")
    # The token cache is keyed by the files' size and mtime: built here once per size, reused by every run.
    start = time.perf_counter()
    RetrievalDataModule(str(root), tokenizer=model_dir, query_max_length=32, doc_max_length=128,
                        cache_dir=str(workdir / "cache"), show_progress=False).prepare_data()
    tokenize_s = time.perf_counter() - start
    return root, write_s, tokenize_s


def fit_config(run: Path, data: Path, model_dir: str, workdir: Path, procs: int) -> dict:
    trainer = {
        "accelerator": "cpu", "devices": procs, "max_steps": 1, "limit_val_batches": 0,
        "enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False,
        "default_root_dir": str(run),
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run / "logs")}},
        "callbacks": [
            {"class_path": "lit_dr.training.NegativeRefresh", "init_args": {
                "every_n_steps": 1000, "before_first_step": True, "depth": 200, "num_negatives": 20,
                "index_factory": "Flat", "table_dir": str(run / "negatives")}},
            {"class_path": "memory_probe.MemoryProbe", "init_args": {"out_dir": str(run)}},
        ],
    }
    if procs > 1:
        trainer["strategy"] = "ddp"  # gloo on CPU
    return {
        "seed_everything": 0,
        "model": {"class_path": "lit_dr.BM25Negatives", "init_args": {
            "encoder": {"class_path": "lit_dr.Encoder", "init_args": {
                "model_name_or_path": model_dir, "projection_dim": DIM, "normalize": True}},
            "temperature": 0.05,
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-4}}}},
        "data": {"dataset": str(data), "cache_dir": str(workdir / "cache"), "query_max_length": 32,
                 "doc_max_length": 128, "train_batch_size": 16, "eval_batch_size": 512, "num_negatives": 1,
                 "negatives": "none", "show_progress": False,
                 # 0 is not allowed (no qrels/dev.tsv): a handful of queries go to dev, never evaluated here.
                 "dev_fraction": 0.005},
        "trainer": trainer,
    }


def run_fit(run: Path, config: dict, procs: int, cores: int, code_root: str | None = None) -> tuple[int, float]:
    """Runs the fit as a subprocess (output in `run/fit.log`); returns (exit status, wall seconds)."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "fit.yaml").write_text(yaml.safe_dump(config))
    threads = str(max(1, cores // procs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [code_root, str(BENCHMARKS), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with open(run / "fit.log", "w") as log:
        # cwd: `python -m` puts the working directory first on sys.path, which would shadow `code_root`.
        code = subprocess.run([sys.executable, "-m", "lit_dr", "fit", "--config", str(run / "fit.yaml")],
                              env=env, stdout=log, stderr=subprocess.STDOUT, cwd=run).returncode
    return code, time.perf_counter() - start


def read_results(run: Path) -> tuple[dict, list[dict]]:
    records = [json.loads(line) for line in (run / "negatives" / "refreshes.jsonl").read_text().splitlines()]
    memory = [json.loads(p.read_text()) for p in sorted(run.glob("memory-rank*.json"))]
    return records[0], memory


def fit_line(sizes: list[int], gb: list[float]) -> tuple[float, float]:
    """Least squares peak = base + copies * (N * 768 * 4 bytes); returns (base GB, copies)."""
    copies, base = np.polyfit([n * DIM * 4 / 1e9 for n in sizes], gb, 1)
    return float(base), float(copies)


def print_extrapolation(measured: dict[int, list[tuple[int, float]]]) -> None:
    msmarco = 8_841_823
    emb_gb = msmarco * DIM * 4 / 1e9
    print("\nWhat the pre-change design needs at MS MARCO size (computed, not run)")
    print(f"  embeddings: {msmarco:,} passages x {DIM} float32 = {emb_gb:.1f} GB")
    issue = {100_000: 1.4, 300_000: 3.3, 1_000_000: 7.3}  # peak per process measured in the issue, GB
    base, copies = fit_line(list(issue), list(issue.values()))
    per_process = base + copies * emb_gb
    print("  measured before the change (issue), peak per process: "
          + ", ".join(f"{n:,}: {g} GB" for n, g in issue.items()))
    print(f"  least-squares fit: peak(N) = {base:.2f} GB + {copies:.2f} x (N x {DIM} x 4 B)")
    print(f"    at 1M the ratio is {issue[1_000_000]:.1f} / {1_000_000 * DIM * 4 / 1e9:.2f} GB = "
          f"{issue[1_000_000] / (1_000_000 * DIM * 4 / 1e9):.2f} copies of the embedding matrix")
    print(f"  per process at 8.8M: {base:.2f} + {copies:.2f} x {emb_gb:.1f} = {per_process:.0f} GB")
    print(f"  8 processes on a node: 8 x {per_process:.0f} = {8 * per_process:.0f} GB")
    for procs, points in sorted(measured.items()):
        if len({n for n, _ in points}) < 2 or max(n for n, _ in points) < 100_000:
            continue  # below 100k documents the fixed costs swamp the slope
        base, copies = fit_line([n for n, _ in points], [g for _, g in points])
        at = base + copies * emb_gb
        print(f"  this run ({procs} process(es), rank 0 peak anon), same fit: {base:.2f} GB + {copies:.2f} copies "
              f"-> {at:.0f} GB per process, {8 * at:.0f} GB for 8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--workdir", default="/tmp/lit_dr_scale")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="2,000 documents, 1 process, 200 queries")
    parser.add_argument("--code-root", default=None,
                        help="run another checkout's lit_dr (e.g. the commit before a change) for a side-by-side")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.procs, args.queries = [2000], [1], 200
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(workdir)
    if args.code_root:
        print(f"# lit_dr from {args.code_root}")

    header = (f"{'docs':>9} {'procs':>5} " + " ".join(f"{p:>14}" for p in PHASES)
              + f" {'refresh_s':>9} {'fit_s':>7} {'emb_MB':>7}  per rank: peak anon MB / minus model MB")
    measured: dict[int, list[tuple[int, float]]] = {}
    failed = False
    for size in args.sizes:
        data, write_s, tokenize_s = build_corpus(workdir, size, args.queries, model_dir)
        written = f"written in {write_s:.1f} s" if write_s else "cached"
        print(f"# {size:,} documents, {args.queries} queries: {written}, tokenized (or cache opened) in "
              f"{tokenize_s:.1f} s", flush=True)
        for procs in args.procs:
            run = workdir / "runs" / f"n{size}-p{procs}{'-other' if args.code_root else ''}"
            code, wall = run_fit(run, fit_config(run, data, model_dir, workdir, procs), procs, args.cores,
                                 args.code_root)
            if code != 0:
                failed = True
                tail = (run / "fit.log").read_text()[-3000:]
                print(f"{size:>9} {procs:>5} FAILED (exit {code}); end of {run / 'fit.log'}:\n{tail}", flush=True)
                continue
            record, memory = read_results(run)
            if header:
                print(f"# lit_dr used: {memory[0].get('lit_dr')}")
                print(header)
                header = ""
            times = " ".join(f"{record[f'time_{p}_s']:>14.2f}" if f"time_{p}_s" in record else f"{'-':>14}"
                             for p in PHASES)
            extra = {k: v for k, v in record.items() if k.startswith("time_") and k[5:-2] not in PHASES
                     and k != "time_total_s"}
            total = record.get("time_total_s", sum(v for k, v in record.items() if k.startswith("time_")))
            ranks = "  ".join(f"r{m['rank']} {m['peak_rss_anon_mb']:.0f} / {m['peak_rss_anon_mb'] - m['model_param_mb']:.0f}"
                              for m in memory)
            print(f"{size:>9} {procs:>5} {times} {total:>9.2f} {wall:>7.1f} {size * DIM * 4 / MB:>7.0f}  {ranks}"
                  + (f"  (other phases: {extra})" if extra else ""), flush=True)
            rank0 = next((m for m in memory if m["rank"] == 0), None)
            if rank0 is not None:
                measured.setdefault(procs, []).append((size, rank0["peak_rss_anon_mb"] * MB / 1e9))
    print_extrapolation(measured)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
