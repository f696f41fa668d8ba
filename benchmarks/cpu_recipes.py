"""The runs behind command 1's recipe and the SamToNe finding (issue 9): named fits on SciFact, their dev metrics, and
per-query nDCG@10 against a baseline run with a paired randomization test.

    LIT_DR_DATA=../shared/data python benchmarks/cpu_recipes.py --runs lr5e-5_decay_8ep lr2e-5_8ep --parallel 2
    python benchmarks/cpu_recipes.py --table --baseline lr2e-5_8ep          # only read what the runs wrote

Each run is `lit-dr fit --config configs/<objective>.yaml` plus the overrides in RUNS, in `--out/<name>/`, with
its console in `--out/<name>.log`. Quality depends on the steps taken, not on wall time, so runs may go
`--parallel` at `--threads` each (2 at a time with 1 thread each finish about 1.5 times sooner on 2 cores than one
after the other at 2 threads); the wall times printed are then not command 1's (time that alone, from a fresh
clone). Dev is 162 queries: read differences under about 0.02 nDCG@10 with the p-value beside them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")


def epochs(n: int) -> list[str]:
    """Train `n` SciFact epochs (40 steps of 16 queries each) and evaluate dev once, at the end."""
    return [f"--trainer.max_epochs={n}", f"--trainer.check_val_every_n_epoch={n}"]


def decay(lr: float, n: int, warmup: int = 30) -> list[str]:
    """AdamW at `lr`, linear warm-up, then linear decay to 0 at the end of `n` epochs."""
    return [f"--model.init_args.optimizer.init_args.lr={lr}", f"--model.init_args.scheduler.init_args.warmup_steps={warmup}",
            f"--model.init_args.scheduler.init_args.total_steps={40 * n}"]


SEPARATE_TOWERS = ["--model.init_args.doc_encoder=lit_dr.Encoder",
                   "--model.init_args.doc_encoder.init_args.model_name_or_path=sentence-transformers/all-MiniLM-L6-v2",
                   "--model.init_args.doc_encoder.init_args.pooling=mean",
                   "--model.init_args.doc_encoder.init_args.normalize=true"]

# Command 1 before issue 9: a constant 2e-5 after 10 warm-up steps (now written out: the configs moved on).
# (The scheduler as a whole: jsonargparse reads `init_args.total_steps=null` on the command line as a string.)
OLD = ["--model.init_args.optimizer.init_args.lr=2e-5", '--model.init_args.scheduler={"class_path": '
       '"lit_dr.training.schedulers.LinearWarmup", "init_args": {"warmup_steps": 10, "total_steps": null}}']

# Gradient caching: a batch of 64 queries embedded 16 texts at a time (exact gradients; README "Large batches").
BATCH_64 = ["--data.train_batch_size=64", "--model.init_args.grad_cache_chunk_size=16"]  # 647 queries: 10 steps an epoch
MASK = ["--model.init_args.mask_shared_positive_queries=true"]  # samtone.yaml excludes judged documents already
# configs/ance.yaml's NegativeRefresh with other arguments (the list replaced whole: jsonargparse has no item syntax)
REFRESH = '--trainer.callbacks=[{{"class_path": "lit_dr.NegativeRefresh", "init_args": {{{args}}}}}]'
CMD1 = "lr1e-4_decay_8ep"  # command 1's first stage until issue 18 shortened it: the warm start of the rows below
CMD1_5EP = "lr1e-4_decay_5ep"  # command 1's first stage now (configs/bm25neg.yaml)

# name: (objective config, overrides); a run in WARM_START starts from the best checkpoint of the run it names
RUNS: dict[str, tuple[str, list[str]]] = {
    "bm25neg_3ep": ("bm25neg", epochs(3) + OLD),  # command 1 before issue 9
    "lr2e-5_8ep": ("bm25neg", epochs(8) + OLD),
    "lr5e-5_decay_8ep": ("bm25neg", epochs(8) + decay(5e-5, 8)),
    "lr1e-4_decay_8ep": ("bm25neg", epochs(8) + decay(1e-4, 8)),  # command 1 now (configs/bm25neg.yaml)
    # the same recipes, other batches and negatives (the dev split stays seed 0's)
    "lr5e-5_decay_8ep_sampling1": ("bm25neg", epochs(8) + decay(5e-5, 8) + ["--data.sampling_seed=1"]),
    "lr1e-4_decay_8ep_sampling1": ("bm25neg", epochs(8) + decay(1e-4, 8) + ["--data.sampling_seed=1"]),
    # SamToNe against BM25 negatives, each change alone, at command 1's old budget ...
    "samtone_3ep": ("samtone", epochs(3) + OLD),
    "samtone_sym_3ep": ("samtone", epochs(3) + OLD + ["--model.init_args.symmetric=true"]),
    "inbatch_3ep": ("bm25neg", epochs(3) + OLD + ["--data.num_negatives=0"]),
    "samtone_inbatch_3ep": ("samtone", epochs(3) + OLD + ["--data.num_negatives=0"]),
    "towers_3ep": ("bm25neg", epochs(3) + OLD + SEPARATE_TOWERS),
    "samtone_towers_3ep": ("samtone", epochs(3) + OLD + SEPARATE_TOWERS),
    # ... and at command 1's new one
    "samtone_lr1e-4_decay_8ep": ("samtone", epochs(8) + decay(1e-4, 8)),
    # issue 18, SamToNe where its argument is strongest, each against InfoNCE (BM25 negatives) in the same setting:
    # 2 epochs at 1e-4 decayed to 0 (command 1's schedule, shorter); queries sharing a positive masked out of the
    # q-q term; separate query and document towers; batches of 64 (gradient caching) at equal steps, 20 each
    "bm25neg_2ep": ("bm25neg", epochs(2) + decay(1e-4, 2, warmup=8)),
    "samtone_2ep": ("samtone", epochs(2) + decay(1e-4, 2, warmup=8)),
    "samtone_mask_2ep": ("samtone", epochs(2) + decay(1e-4, 2, warmup=8) + MASK),
    "towers_2ep": ("bm25neg", epochs(2) + decay(1e-4, 2, warmup=8) + SEPARATE_TOWERS),
    "samtone_towers_2ep": ("samtone", epochs(2) + decay(1e-4, 2, warmup=8) + SEPARATE_TOWERS),
    "bm25neg_b64_20": ("bm25neg", [*epochs(2), *BATCH_64, "--model.init_args.scheduler.init_args.warmup_steps=2"]),
    "samtone_b64_20": ("samtone", [*epochs(2), *BATCH_64, "--model.init_args.scheduler.init_args.warmup_steps=2"]),
    # issue 18: the refresh objectives and LTRe from command 1's first stage (module defaults and configs as they
    # are unless said; LTRe evaluates every epoch, the table reads its last)
    "ltre_from_cmd1": ("ltre", []),
    "ltre_lr5e-5_from_cmd1": ("ltre", ["--model.init_args.optimizer.init_args.lr=5e-5"]),
    "ltre_listwise_from_cmd1": ("ltre", ["--model.init_args.loss=listwise"]),
    # one epoch: the 3-epoch runs peaked after the first (their per-epoch dev figures are in their metrics.csv)
    "ltre_1ep_lr5e-5_from_cmd1": ("ltre", ["--trainer.max_epochs=1", "--model.init_args.optimizer.init_args.lr=5e-5"]),
    "ltre_1ep_lr1e-4_from_cmd1": ("ltre", ["--trainer.max_epochs=1", "--model.init_args.optimizer.init_args.lr=1e-4"]),
    "ance_from_cmd1": ("ance", []),
    "dance1_from_cmd1": ("dance_stage1", []),
    "dance2_from_dance1": ("dance", []),
    # ANCE at the learning rate that won for LTRe from the same start (the paper: LAMB 1e-6 at batch 64, MS MARCO)
    "ance_lr5e-5_from_cmd1": ("ance", ["--model.init_args.optimizer.init_args.lr=5e-5"]),
    # ANCE's refresh interval halved (4 refreshes in 80 steps, not 2), and its negatives drawn by the positive-aware
    # miner (NV-Retriever's TopK-PercPos 0.95: candidates scoring within 5% of the positive dropped)
    "ance_every20_from_cmd1": ("ance", [REFRESH.format(args='"every_n_steps": 20, "before_first_step": true')]),
    "ance_posaware_from_cmd1": ("ance", [REFRESH.format(
        args='"every_n_steps": 40, "before_first_step": true, "miner": {"class_path": '
             '"lit_dr.mining.miners.PositiveAwareMiner", "init_args": {"max_relative": 0.95}}')]),
    # the chosen command 1, other batches and negatives
    "ltre_from_cmd1_sampling1": ("ltre", []),
    # command 1 since issue 18: 5 epochs of stage 1 (the same fits as `lit-dr pipeline configs/pipelines/bm25neg-ltre.yaml`,
    # whose stage 2 adopts stage 1's corpus embeddings instead of encoding again: the same numbers), two sampling seeds
    "lr1e-4_decay_5ep": ("bm25neg", epochs(5) + decay(1e-4, 5)),
    "lr1e-4_decay_5ep_sampling1": ("bm25neg", epochs(5) + decay(1e-4, 5) + ["--data.sampling_seed=1"]),
    "ltre_from_5ep": ("ltre", []),
    "ltre_from_5ep_sampling1": ("ltre", ["--data.sampling_seed=1"]),  # the pipeline passes the seed to both stages
}
WARM_START = {"ltre_from_cmd1": CMD1, "ltre_lr5e-5_from_cmd1": CMD1, "ltre_listwise_from_cmd1": CMD1,
              "ltre_1ep_lr5e-5_from_cmd1": CMD1, "ltre_1ep_lr1e-4_from_cmd1": CMD1, "ance_from_cmd1": CMD1, "dance1_from_cmd1": CMD1,
              "ance_lr5e-5_from_cmd1": CMD1, "ance_every20_from_cmd1": CMD1, "ance_posaware_from_cmd1": CMD1,
              "dance2_from_dance1": "dance1_from_cmd1", "ltre_from_cmd1_sampling1": f"{CMD1}_sampling1",
              "ltre_from_5ep": CMD1_5EP, "ltre_from_5ep_sampling1": f"{CMD1_5EP}_sampling1"}


def best_checkpoint(name: str, out: Path) -> Path:
    """The best (dev nDCG@10) checkpoint of a finished run: the CLI's `best_checkpoint`, named epoch*-step*.ckpt."""
    found = sorted((out / name).glob("*/*/checkpoints/epoch*-step*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"{name} warm-starts from {WARM_START[name]}, which has no best checkpoint under {out}")
    return found[-1]


def fit(name: str, out: Path, threads: int) -> None:
    objective, overrides = RUNS[name]
    if name in WARM_START:
        overrides = [*overrides, f"--model.init_args.init_checkpoint={best_checkpoint(WARM_START[name], out)}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "lit_dr", "fit", "--config", f"configs/{objective}.yaml",
           "--config", "configs/logger/csv.yaml", "--trainer.enable_progress_bar=false",
           f"--trainer.default_root_dir={out / name}", *overrides]
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    (out / name / "wall_s").write_text(f"{seconds:.0f}\n")
    print(f"{name}: exit {code}, {seconds:.0f} s", flush=True)


def result(name: str, out: Path) -> tuple[dict[str, float], int, Path] | None:
    """(final dev metrics, step, dev TREC file) of a finished run, or None."""
    for metrics_csv in sorted((out / name).glob("*/*/metrics.csv")):
        rows = [r for r in csv.DictReader(open(metrics_csv)) if r.get("val/ndcg@10")]
        if rows:
            step = int(rows[-1]["step"]) + 1  # the CSV logs the step before the increment
            trec = sorted(metrics_csv.parent.glob("runs/dev-step*.trec"), key=lambda p: int(p.stem.split("step")[1]))
            return {k: float(rows[-1][f"val/{k}"]) for k in METRICS}, step, trec[-1]
    for summary in sorted((out / name).glob("*/*/fit.json")):  # a run of another logger (W&B): the CLI's summary
        fit = json.loads(summary.read_text())
        if fit.get("run_file") and all(f"val/{k}" in fit.get("metrics", {}) for k in METRICS):
            trec = summary.parent / "runs" / Path(fit["run_file"]).name
            return {k: float(fit["metrics"][f"val/{k}"]) for k in METRICS}, int(fit["global_step"]), trec
    return None


def table(names: list[str], out: Path, baseline: str | None) -> None:
    from lit_dr.evaluation.analysis import ndcg_per_query, per_query_differences, split_qrels
    from lit_dr.evaluation.metrics import read_trec_run

    qrels = split_qrels("scifact", "dev")
    done = {n: r for n in names if (r := result(n, out))}
    print(f"| run | objective | steps | wall s | {' | '.join(METRICS)} | against | difference: wins/losses, p |")
    print("| --- | --- | --- | --- |" + " --- |" * (len(METRICS) + 2))
    for name, (metrics, step, trec) in done.items():
        # a warm-started run against its warm start, the others against --baseline
        against = WARM_START.get(name, baseline)
        paired = ""
        if against != name and (other := done.get(against) or result(against, out)):
            base = ndcg_per_query(read_trec_run(other[2]), qrels)
            cmp = per_query_differences(base, ndcg_per_query(read_trec_run(trec), qrels))
            c = cmp.counts()
            paired = f"{cmp.diff.mean():+.4f}: {c['wins']}/{c['losses']}, p={cmp.p_value():.3f}"
        wall = out / name / "wall_s"
        print(f"| {name} | {RUNS[name][0]} | {step} | {wall.read_text().strip() if wall.exists() else ''} | "
              + " | ".join(f"{metrics[k]:.4f}" for k in METRICS) + f" | {against if paired else ''} | {paired} |")
    for name in sorted(set(names) - set(done)):
        print(f"(no dev result yet: {name})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/lit_dr_cpu_recipes"))
    parser.add_argument("--parallel", type=int, default=1, help="fits at a time")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per fit (default: cores / parallel)")
    parser.add_argument("--baseline", default="bm25neg_3ep", help="the run the others are compared with per query")
    parser.add_argument("--table", action="store_true", help="print the results of finished runs, run nothing")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(lambda n: fit(n, args.out, threads), args.runs))
    table(args.runs, args.out, args.baseline)


if __name__ == "__main__":
    main()
