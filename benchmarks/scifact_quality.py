"""SciFact dev split, side by side: BM25 (bm25s), MiniLM zero-shot, BM25-negative and SamToNe fine-tuned.

    LIT_DR_DATA=../shared/data python benchmarks/scifact_quality.py [--epochs N] [--only bm25,zeroshot,...]

Every system is scored by the same code on the same dev queries (20% of SciFact's training queries, carved
with seed 0). Fine-tuned models report their final epoch (no checkpoint picked on dev). Wall time covers
everything the system needs from a warm cache: BM25 indexing and search; encoding the corpus; training plus
the final evaluation.
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


def bm25() -> dict[str, float]:
    from lit_dr import BiEncoderModule, RetrievalDataModule
    from lit_dr.commands.cli import LitDrCLI
    from lit_dr.evaluation.metrics import retrieval_metrics
    from lit_dr.mining.bm25 import bm25_search

    # The data module exactly as the fine-tuning config builds it (same tokenization, same dev split).
    dm = LitDrCLI(BiEncoderModule, RetrievalDataModule, subclass_mode_model=True, run=False,
                  args=["--config", str(ROOT / "configs/bm25neg.yaml")], auto_configure_optimizers=False).datamodule
    dm.prepare_data()
    dm.setup("validate")
    rows = dm.split_rows["dev"]
    # The texts the model sees: the token store's rows (BM25 then ranks exactly the stored corpus rows).
    scores, ranked = bm25_search(list(dm.corpus.texts()), list(dm.queries.texts(rows)), k=1000, show_progress=False)
    return retrieval_metrics(scores, ranked, dm.relevance_for(rows), dm.corpus.ids)  # BM25 ties: by id, as trec_eval


def zero_shot() -> dict[str, float]:
    run = cli("validate", "--config", str(ROOT / "configs/bm25neg.yaml"))
    return {k: float(run.trainer.callback_metrics[f"val/{k}"]) for k in METRICS}


def fine_tuned(config: str, epochs: int | None) -> dict[str, float]:
    length = [] if epochs is None else [f"--trainer.max_epochs={epochs}", f"--trainer.check_val_every_n_epoch={epochs}"]
    run = cli("fit", "--config", str(ROOT / config), *length)
    print(f"[checkpoint] {config}: {last_checkpoint(run.trainer)}", flush=True)
    return {k: float(run.trainer.callback_metrics[f"val/{k}"]) for k in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=None, help="default: each config's own")
    parser.add_argument("--only", default="bm25,zeroshot,bm25neg,samtone")
    args = parser.parse_args()
    os.environ.setdefault("LIT_DR_DATA", str(ROOT.parent / "shared" / "data"))
    systems = {
        "bm25": ("BM25 (bm25s)", bm25),
        "zeroshot": ("MiniLM zero-shot", zero_shot),
        "bm25neg": ("MiniLM + BM25 negatives", lambda: fine_tuned("configs/bm25neg.yaml", args.epochs)),
        "samtone": ("MiniLM + SamToNe", lambda: fine_tuned("configs/samtone.yaml", args.epochs)),
    }
    rows = []
    for key in args.only.split(","):
        name, evaluate = systems[key]
        start = time.perf_counter()
        metrics = evaluate()
        rows.append((name, metrics, time.perf_counter() - start))
        print(f"[done] {name}: {metrics}", flush=True)
    print(f"\nSciFact dev ({args.epochs or 'configured'} epochs for fine-tuned models)")
    print("| system | nDCG@10 | MRR@10 | R@100 | R@1000 | wall time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, m, seconds in rows:
        print(f"| {name} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@100']:.4f} | "
              f"{m['recall@1000']:.4f} | {seconds / 60:.1f} min |")


if __name__ == "__main__":
    main()
