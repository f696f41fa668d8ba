"""Peak memory and step time against batch size, with and without gradient caching (`grad_cache_chunk_size`).

    python benchmarks/large_batch.py [--batch-sizes 16,32,64,128,256,512] [--chunk-size 16] [--modes plain,cached]
                                     [--max-length 128] [--steps 2] [--random-init] [--device cpu|cuda]

One training step = `BM25Negatives.training_step` (InfoNCE over the batch), backward and an AdamW step, on
all-MiniLM-L6-v2 (packaged; `--random-init` uses its architecture with random weights). Each query comes with 1
positive and 1 hard negative document; queries and documents are random token ids, all `--max-length` long
(no padding), so every step costs the same. Each (batch size, mode) runs in its own process, so peaks do not
mix: on CPU the peak is VmHWM (the process's peak resident set, libraries included) and its rise over the
resident set just before the first step; on CUDA `torch.cuda.max_memory_allocated`. The step time is the mean
over `--steps` steps after one warm-up step (which also allocates AdamW's state). A configuration that runs
out of memory (killed) is reported as such and the others go on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(args: argparse.Namespace) -> None:
    """One configuration; prints one JSON line."""
    import torch

    from lit_dr import BM25Negatives, Encoder
    from lit_dr.data.batches import TokenBatch, TrainBatch

    warnings.filterwarnings("ignore")  # `self.log` outside a Trainer
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(args.model), temperature=0.05,
                          grad_cache_chunk_size=args.chunk_size if args.mode == "cached" else None).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, n = args.batch_size, args.max_length
    vocab = model.encoder.model.config.vocab_size

    def tokens(rows: int) -> TokenBatch:
        ids = torch.randint(1000, vocab, (rows, n), device=device)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        return TokenBatch(ids, torch.ones_like(ids))

    batch = TrainBatch(queries=tokens(b), docs=tokens(2 * b), query_rows=torch.arange(b, device=device),
                       doc_rows=torch.arange(2 * b, device=device),
                       excluded=torch.zeros(b, 2 * b, dtype=torch.bool, device=device))
    before_mb = status_mb("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model.training_step(batch, step).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step > 0:  # the first step allocates AdamW's state and warms up the kernels
            times.append(time.perf_counter() - start)
    record = {"batch_size": b, "mode": args.mode, "step_s": sum(times) / len(times), "threads": torch.get_num_threads(),
              "peak_rss_mb": status_mb("VmHWM"), "step_rss_rise_mb": status_mb("VmHWM") - before_mb}
    if device.type == "cuda":
        record["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(json.dumps(record), flush=True)


def random_model(directory: Path) -> str:
    """MiniLM's architecture and tokenizer with random weights, saved once for all configurations."""
    from transformers import AutoConfig, AutoModel

    from lit_dr.models.encoder import resolve_model_path

    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    AutoModel.from_config(AutoConfig.from_pretrained(path)).save_pretrained(directory)
    return str(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="16,32,64,128,256,512")
    parser.add_argument("--modes", default="plain,cached", help="plain (no caching), cached, or both")
    parser.add_argument("--chunk-size", type=int, default=16, help="grad_cache_chunk_size of the cached mode")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up step")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--timeout-s", type=int, default=3600, help="per configuration")
    # internal: one configuration in a child process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(Path(tmp)) if args.random_init else args.model
        print(f"MiniLM ({'random init' if args.random_init else 'pretrained'}), {args.max_length} tokens, 1 positive "
              f"+ 1 hard negative per query, chunk {args.chunk_size}, device {args.device}", flush=True)
        header = f"{'batch':>5} {'mode':>6} {'step s':>8} {'peak RSS MB':>12} {'step rise MB':>13}"
        print(header + (f" {'peak CUDA MB':>13}" if args.device == "cuda" else "") + f" {'wall s':>7}", flush=True)
        for b in (int(x) for x in args.batch_sizes.split(",")):
            for mode in args.modes.split(","):
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--batch-size", str(b), "--model", model,
                       "--chunk-size", str(args.chunk_size), "--max-length", str(args.max_length),
                       "--steps", str(args.steps), "--device", args.device]
                start = time.perf_counter()
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
                except subprocess.TimeoutExpired:
                    print(f"{b:>5} {mode:>6} timed out after {args.timeout_s} s", flush=True)
                    continue
                wall = time.perf_counter() - start
                if out.returncode != 0:
                    why = "killed (out of memory?)" if out.returncode < 0 else out.stderr.strip().splitlines()[-1]
                    print(f"{b:>5} {mode:>6} failed, rc {out.returncode}: {why}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                line = f"{b:>5} {mode:>6} {r['step_s']:>8.2f} {r['peak_rss_mb']:>12.0f} {r['step_rss_rise_mb']:>13.0f}"
                if "peak_cuda_mb" in r:
                    line += f" {r['peak_cuda_mb']:>13.0f}"
                print(f"{line} {wall:>7.0f}", flush=True)


if __name__ == "__main__":
    main()
