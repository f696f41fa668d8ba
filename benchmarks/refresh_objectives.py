"""ANCE and DANCE on SciFact next to their BM25-negative warm start, and what the refreshes cost.

    LIT_DR_DATA=../shared/data python benchmarks/refresh_objectives.py --warm-start runs/.../last.ckpt

The recipe of the papers: ANCE warm-starts from the BM25-negative checkpoint; DANCE (stage 2, dual loss)
warm-starts from the ANCE checkpoint. Dev metrics are each run's final evaluation. Each refresh's cost is the
ratio of its total time to its own corpus-encoding phase, both measured in the same refresh; the share of fit
time is the refreshes' total over the fit's wall time.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")


def last_checkpoint(trainer) -> str:
    """The path of last.ckpt (written by the configs' unmonitored checkpoint)."""
    return next(c.last_model_path for c in trainer.checkpoint_callbacks if c.last_model_path)


def cli(*args: str):
    from lit_dr.commands.cli import run

    return run([*args, "--config", str(ROOT / "configs/logger/csv.yaml"), "--trainer.enable_progress_bar=false"])


def metrics_of(run) -> dict[str, float]:
    return {k: float(run.trainer.callback_metrics[f"val/{k}"]) for k in METRICS}


def fit(config: str, warm_start: str):
    from lit_dr.training import NegativeRefresh

    start = time.perf_counter()
    run = cli("fit", "--config", str(ROOT / config), f"--model.init_args.init_checkpoint={warm_start}")
    seconds = time.perf_counter() - start
    refresh = next(c for c in run.trainer.callbacks if isinstance(c, NegativeRefresh))
    return run, seconds, refresh.history


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm-start", required=True, help="a BM25-negative checkpoint (configs/bm25neg.yaml)")
    args = parser.parse_args()
    os.environ.setdefault("LIT_DR_DATA", str(ROOT.parent / "shared" / "data"))

    start = time.perf_counter()
    warm = cli("validate", "--config", str(ROOT / "configs/bm25neg.yaml"), f"--ckpt_path={args.warm_start}")
    rows = [("BM25 negatives (warm start)", metrics_of(warm), time.perf_counter() - start, [])]
    ance, seconds, history = fit("configs/ance.yaml", args.warm_start)
    rows.append(("ANCE", metrics_of(ance), seconds, history))
    ance_ckpt = last_checkpoint(ance.trainer)
    dance, seconds, history = fit("configs/dance.yaml", ance_ckpt)
    rows.append(("DANCE (stage 2, from ANCE)", metrics_of(dance), seconds, history))

    print("\nSciFact dev, final evaluation of each run")
    print("| system | nDCG@10 | MRR@10 | R@100 | R@1000 | wall time | refreshes | refresh share of fit |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m, seconds, history in rows:
        share = sum(h["time_total_s"] for h in history) / seconds if history else 0.0
        print(f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} | "
              f"{m['recall@1000']:.4f} | {seconds / 60:.1f} min | {len(history)} | {share:.0%} |")
    print("\nRefreshes (cost = refresh total / its corpus encoding, same refresh)")
    print("| run | generation | step | encode corpus s | total s | cost | positive in top 200 | mean rank | overlap |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, _, _, history in rows:
        for h in history:
            print(f"| {name} | {h['generation']} | {h['step']} | {h['time_encode_corpus_s']:.1f} | "
                  f"{h['time_total_s']:.1f} | {h['time_total_s'] / h['time_encode_corpus_s']:.3f}x | "
                  f"{h['positive_in_depth']:.3f} | {h['positive_mean_rank']:.1f} | {h['overlap_with_previous']:.3f} |")


if __name__ == "__main__":
    main()
