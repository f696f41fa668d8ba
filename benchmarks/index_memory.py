"""Peak anonymous memory of `lit-dr index` (one process, rank 0) on the synthetic corpus of `scale_refresh.py`.

    python benchmarks/index_memory.py --size 1000000 [--code_root /work/base] [--factory Flat]

The corpus (`lit_dr.data.synthetic.write_random_corpus`, MS MARCO-like passage lengths) and its token cache are written
once under `--workdir`; the model is the tiny test BERT with a 768-wide projection (a lit_dr checkpoint), so the
embeddings are as wide as MS MARCO models' while encoding stays cheap. `lit-dr index` then runs in a child process
(`python -m lit_dr index`, with `--code_root` first on its path: /work/base for the code before a change) while a
thread samples `RssAnon` from /proc/self/status every 20 ms (tensors, arrays, the Python heap; not the memory-mapped
token store or embedding files). Prints one JSON line: the code that ran, wall time, peak and start RssAnon (MB),
and the files written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

DIM = 768
MB = 2**20


def prepare(workdir: Path, size: int) -> tuple[Path, Path]:
    """(checkpoint, corpus file), built once: the tiny BERT + 768 projection saved by a Trainer after validating
    on a 64-document set (so the checkpoint carries doc_max_length 128), and the random corpus, tokenized."""
    import lightning as L

    from lit_dr import BM25Negatives, Encoder, RetrievalDataModule
    from lit_dr.commands.inference import load_towers
    from lit_dr.data.synthetic import build_tiny_bert, write_beir, write_random_corpus
    from lit_dr.data.token_store import cached_store

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt, model_dir = workdir / "tiny768.ckpt", workdir / "tiny-bert"
    if not ckpt.exists():
        build_tiny_bert(model_dir)
        small = write_beir(workdir / "small", n_docs=64, n_queries=32, seed=0)
        model = BM25Negatives(encoder=Encoder(str(model_dir), projection_dim=DIM, normalize=True))
        dm = RetrievalDataModule(str(small), tokenizer=str(model_dir), query_max_length=32, doc_max_length=128,
                                 negatives="none", cache_dir=str(workdir / "cache"), show_progress=False)
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, max_steps=0,
                            default_root_dir=str(workdir / "trainer"), accelerator="cpu")
        trainer.validate(model, dm, verbose=False)
        trainer.save_checkpoint(ckpt)
    root = workdir / "data" / f"n{size}"
    if not (root / ".complete").exists():
        write_random_corpus(root, size, min(2000, size), seed=0)
        (root / ".complete").write_text("")
    _, tower = load_towers(ckpt)
    cached_store("corpus", [root / "corpus.jsonl"], tower.tokenizer, 128, workdir / "cache", show_progress=False)
    return ckpt, root / "corpus.jsonl"


def read_anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise KeyError("RssAnon")


def child(argv: list[str]) -> None:
    """Run `lit-dr index argv` in this process while sampling RssAnon; print the peak as JSON on the last line."""
    import lit_dr
    from lit_dr.commands.standalone import run_command

    start_kb = peak = read_anon_kb()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, read_anon_kb())
            stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    begin = time.perf_counter()
    run_command(["index", *argv])
    wall = time.perf_counter() - begin
    stop.set()
    thread.join()
    peak = max(peak, read_anon_kb())
    print(json.dumps({"lit_dr": str(Path(lit_dr.__file__).parent), "wall_s": round(wall, 1),
                      "peak_rss_anon_mb": round(peak / 1024), "start_rss_anon_mb": round(start_kb / 1024)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--workdir", default="/tmp/lit_dr_index_memory")
    p.add_argument("--code_root", help="put this checkout first on the child's path (e.g. /work/base)")
    p.add_argument("--factory", default="Flat")
    p.add_argument("--prepare_only", action="store_true")
    args = p.parse_args()
    workdir = Path(args.workdir)
    ckpt, corpus = prepare(workdir, args.size)
    if args.prepare_only:
        return
    out = workdir / "out" / f"n{args.size}-{'base' if args.code_root else 'new'}-{args.factory.replace(',', '_')}"
    env = {**os.environ, "LIT_DR_CACHE": str(workdir / "cache"), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [args.code_root, str(Path(__file__).resolve().parents[1])]))}
    argv = [str(ckpt), str(corpus), str(out), "--index_factory", args.factory, "--batch_size", "512",
            "--max_length", "128", "--accelerator", "cpu"]
    result = subprocess.run([sys.executable, __file__, "--child", *argv], env=env, capture_output=True, text=True,
                            cwd=workdir)
    if result.returncode != 0:
        sys.exit(f"lit-dr index failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record.update(size=args.size, dim=DIM, factory=args.factory,
                  files=sorted(f.name for f in out.iterdir()),
                  embeddings_mb=round(args.size * DIM * 4 / MB))
    print(json.dumps(record))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
