"""LTRe against ANCE from the same BM25-negative warm start on SciFact: dev nDCG@10 against training wall time.

    LIT_DR_DATA=../shared/data python benchmarks/ltre_vs_ance.py --warm-start runs/.../last.ckpt

Both runs begin with one corpus encoding by the warm-start model (ANCE's first refresh, LTRe's fixed index),
printed separately. After it, training time counts everything but validation: ANCE's later refreshes are part
of its cost; LTRe never re-encodes the corpus. ANCE validates every `--ance-every` steps (each costs a corpus
encoding), LTRe every `--ltre-every` (only the dev queries); `configs/ance.yaml` and `configs/ltre.yaml`, 2 epochs
unless `--epochs`. The question: how long after its initial encoding does
LTRe take to reach ANCE's final dev nDCG@10, against ANCE's own training time (target: at most 1/5)?
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fit(name: str, config: str, warm_start: str, work: Path, args, every: int, extra: list[str]) -> list[dict]:
    timeline = work / f"{name}.jsonl"
    timeline.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "lit_dr", "fit", "--config", str(ROOT / config),
           "--config", str(ROOT / "configs/logger/csv.yaml"), f"--model.init_args.init_checkpoint={warm_start}",
           f"--trainer.max_epochs={args.epochs}", f"--trainer.val_check_interval={every}",
           "--trainer.check_val_every_n_epoch=1", "--trainer.enable_progress_bar=false",
           f"--trainer.logger.init_args.save_dir={work / 'runs'}", f"--trainer.logger.init_args.name={name}",
           "--trainer.callbacks+=timeline.Timeline", f"--trainer.callbacks.path={timeline}", *extra]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'benchmarks'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"{name} failed: see {work / f'{name}.log'}")
    print(f"{name}: fit wall {time.perf_counter() - start:.0f} s", flush=True)
    return [json.loads(line) for line in timeline.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm-start", required=True, help="a BM25-negative checkpoint (configs/bm25neg.yaml)")
    parser.add_argument("--epochs", type=int, default=2)
    # ANCE's validation costs a corpus encoding, LTRe's only the dev queries: LTRe can afford finer points.
    parser.add_argument("--ance-every", type=int, default=20, help="ANCE validates every this many steps")
    parser.add_argument("--ltre-every", type=int, default=5, help="LTRe validates every this many steps")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--ltre-lr", type=float, default=None, help="override configs/ltre.yaml's learning rate")
    args = parser.parse_args()
    os.environ.setdefault("LIT_DR_DATA", str(ROOT.parent / "shared" / "data"))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ltre-vs-ance-"))
    work.mkdir(parents=True, exist_ok=True)

    ltre_extra = [f"--model.init_args.optimizer.init_args.lr={args.ltre_lr}"] if args.ltre_lr else []
    runs = {"LTRe": fit("ltre", "configs/ltre.yaml", args.warm_start, work, args, args.ltre_every, ltre_extra),
            "ANCE": fit("ance", "configs/ance.yaml", args.warm_start, work, args, args.ance_every, [])}

    print("\n| run | step | initial encoding s | training s (after it, no validation) | dev nDCG@10 | MRR@10 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, points in sorted(runs.items()):
        for p in points:
            print(f"| {name} | {p['step']} | {p['initial_s']:.1f} | {p['train_s']:.1f} | {p['val/ndcg@10']:.4f} | "
                  f"{p['val/mrr@10']:.4f} |")
    ance, ltre = runs["ANCE"], runs["LTRe"]
    target, ance_s = ance[-1]["val/ndcg@10"], ance[-1]["train_s"]
    best = max(p["val/ndcg@10"] for p in ltre)
    print(f"\nANCE: final dev nDCG@10 {target:.4f} after {ance_s:.1f} s of training "
          f"(+ {ance[0]['initial_s']:.1f} s initial encoding)")
    reached = next((p for p in ltre if p["val/ndcg@10"] >= target), None)
    if reached is None:
        print(f"LTRe: never reached it (best {best:.4f}, final {ltre[-1]['val/ndcg@10']:.4f}, "
              f"{ltre[-1]['train_s']:.1f} s of training + {ltre[0]['initial_s']:.1f} s initial encoding)")
    else:
        print(f"LTRe: reached {reached['val/ndcg@10']:.4f} at step {reached['step']} after {reached['train_s']:.1f} s "
              f"of training (+ {ltre[0]['initial_s']:.1f} s initial encoding): {reached['train_s'] / ance_s:.3f} of "
              f"ANCE's training time (target <= 0.2)")
        print(f"LTRe final: dev nDCG@10 {ltre[-1]['val/ndcg@10']:.4f}, best {best:.4f}")


if __name__ == "__main__":
    main()
