"""SciFact dev nDCG@10 of BM25 negatives at a batch only gradient caching makes possible here, against the
default batch, at equal training time.

    LIT_DR_DATA=../shared/data python benchmarks/large_batch_quality.py [--minutes 10] [--large 256] [--chunk 32]

Both runs are `configs/bm25neg.yaml` stopped by `trainer.max_time` (the same wall-clock budget each, run one
after the other), then evaluated once on dev. Without caching, batch `--large` does not fit in this machine's
memory (`benchmarks/large_batch.py`: about 125 MB per query at 128 tokens). The large batch keeps the default
learning rate and has no warm-up (ten warm-up steps would be most of its run).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")


def fit_for(minutes: float, *overrides: str) -> tuple[dict[str, float], int, float]:
    """(dev metrics, optimizer steps, training seconds) of one time-boxed fit, then one dev evaluation."""
    from lit_dr.commands.cli import run

    start = time.perf_counter()
    budget = f"00:00:{int(minutes):02d}:{int(minutes % 1 * 60):02d}"
    cli = run(["fit", "--config", str(ROOT / "configs/bm25neg.yaml"), "--config", str(ROOT / "configs/logger/csv.yaml"),
               "--trainer.enable_progress_bar=false", f"--trainer.max_time={budget}", "--trainer.max_epochs=-1",
               "--trainer.check_val_every_n_epoch=100000", *overrides])  # no evaluation inside the budget
    trained = time.perf_counter() - start
    metrics = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]
    return {k: float(metrics[f"val/{k}"]) for k in METRICS}, cli.trainer.global_step, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--large", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args()
    rows = {
        "batch 16 (default)": fit_for(args.minutes),
        f"batch {args.large}, cached by {args.chunk}": fit_for(
            args.minutes, f"--data.train_batch_size={args.large}",
            f"--model.init_args.grad_cache_chunk_size={args.chunk}",
            "--model.init_args.scheduler.init_args.warmup_steps=0"),
    }
    print(f"\nSciFact dev, BM25 negatives, {args.minutes:g} minutes of training each")
    print(f"| run | steps | train s | {' | '.join(METRICS)} |")
    print("| --- | --- | --- |" + " --- |" * len(METRICS))
    for name, (metrics, steps, seconds) in rows.items():
        print(f"| {name} | {steps} | {seconds:.0f} | " + " | ".join(f"{metrics[k]:.4f}" for k in METRICS) + " |")


if __name__ == "__main__":
    main()
