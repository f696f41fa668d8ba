"""Corpus encoding throughput: lit_dr's `encode_store` against sentence-transformers' `encode()`.

    python benchmarks/encode_throughput.py [--docs 1024] [--max-length 128] [--batch-size 64] [--reps 3]

Same model (all-MiniLM-L6-v2, packaged), same SciFact documents, max length, batch size and threads, in one
process, the two alternating so machine noise hits both. lit_dr reads token ids from its memory-mapped cache
(tokenized once, when a data set is first used); the tokenization time is printed too, and a ratio that charges
it to lit_dr's side. Both outputs are compared to check that the same embeddings come out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1024)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--corpus", default=str(ROOT.parent / "shared/data/scifact/corpus.jsonl"))
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from lit_dr.data.formats import iter_texts
    from lit_dr.data.token_store import build_store
    from lit_dr.index.encoding import encode_store
    from lit_dr.models.encoder import Encoder, resolve_model_path

    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    records = list(islice(iter_texts(args.corpus), args.docs))
    texts = [r.text for r in records]

    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = args.max_length
    ours = Encoder(path, pooling="mean", normalize=True).eval()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        store = build_store(iter(records), [Path(args.corpus)], AutoTokenizer.from_pretrained(path), args.max_length,
                            Path(tmp) / "store", show_progress=False)
        tokenize_s = time.perf_counter() - start

        def run_st() -> torch.Tensor:
            return st.encode(texts, batch_size=args.batch_size, convert_to_tensor=True, show_progress_bar=False)

        def run_ours() -> torch.Tensor:
            return encode_store(lambda b: ours(b.input_ids, b.attention_mask), store, batch_size=args.batch_size,
                                show_progress=False)

        run_st(), run_ours()  # warm-up: first calls pay for allocations and kernel selection
        times: dict[str, list[float]] = {"st": [], "ours": []}
        for _ in range(args.reps):
            for name, fn in (("st", run_st), ("ours", run_ours)):
                start = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - start)
                if name == "st":
                    st_out = out
                else:
                    ours_out = out
        cos = torch.nn.functional.cosine_similarity(st_out.float().cpu(), ours_out, dim=-1)

    st_s, ours_s = statistics.median(times["st"]), statistics.median(times["ours"])
    print(f"docs {args.docs}, max_length {args.max_length}, batch {args.batch_size}, threads "
          f"{torch.get_num_threads()}, reps {args.reps} (median)")
    print(f"sentence-transformers encode(): {st_s:7.2f} s  {args.docs / st_s:7.1f} docs/s  runs {times['st']}")
    print(f"lit_dr encode_store():          {ours_s:7.2f} s  {args.docs / ours_s:7.1f} docs/s  runs {times['ours']}")
    print(f"lit_dr tokenization (once, cached): {tokenize_s:.2f} s")
    print(f"same embeddings: min cosine {cos.min():.6f}")
    print(f"throughput ratio lit_dr / sentence-transformers: {st_s / ours_s:.3f}")
    print(f"ratio charging tokenization to lit_dr:           {st_s / (ours_s + tokenize_s):.3f}")


if __name__ == "__main__":
    main()
