"""Exact against IVF search on SciFact's dev queries, with the `search_params` option: nDCG@10, R@100 and times.

    python benchmarks/ivf_eval.py [--checkpoint RUN.ckpt] [--nlist 64 128] [--data ../shared/data/scifact]

The corpus (5,183 documents) is encoded once, by the packaged MiniLM zero-shot (`configs/encoder/minilm.yaml`)
or by a lit_dr checkpoint's towers, the dev queries as the data module carves them (`configs/data/scifact.yaml`:
20% of the training queries, doc_max_length 128, query_max_length 64). Each index is built with
`faiss_index.build_index` and searched for the top 1,000 (evaluation's depth) with `faiss_index.search(params=)`,
what `search_params` sets in evaluation, refresh and `lit-dr search`, on the CPU. nlist: FAISS's k-means wants at
least 39 training points per list, so 5,183 documents allow up to 132 lists; 64 (about 81 documents per list,
near sqrt(N) = 72) and 128 (about 40, the most that trains without a FAISS warning) bracket the usual choice.
A row with nprobe = nlist probes every list: it must equal Flat.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

K = 1000


def encoders(checkpoint: str | None):
    from lit_dr import BiEncoderModule, Encoder

    if checkpoint:
        module = BiEncoderModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
        return module.encode_queries, module.encode_docs, module.encoder.tokenizer_path
    encoder = Encoder("sentence-transformers/all-MiniLM-L6-v2", pooling="mean", normalize=True).eval()
    encode = lambda tokens: encoder(tokens.input_ids, tokens.attention_mask)  # noqa: E731
    return encode, encode, encoder.tokenizer_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"))
    p.add_argument("--checkpoint", help="a lit_dr checkpoint (default: the packaged MiniLM, zero-shot)")
    p.add_argument("--nlist", type=int, nargs="+", default=[64, 128])
    p.add_argument("--cache_dir", default=None)
    args = p.parse_args()

    from lit_dr import RetrievalDataModule
    from lit_dr.evaluation.metrics import retrieval_metrics
    from lit_dr.index.encoding import encode_store
    from lit_dr.index.faiss_index import build_index, search
    from lit_dr.index.search import warn_short_results

    encode_q, encode_d, tokenizer = encoders(args.checkpoint)
    dm = RetrievalDataModule(args.data, tokenizer=tokenizer, query_max_length=64, doc_max_length=128,
                             dev_fraction=0.2, negatives="none", cache_dir=args.cache_dir, show_progress=False)
    dm.prepare_data()
    dm.setup("validate")
    dev = dm.split_rows["dev"]
    start = time.perf_counter()
    with torch.inference_mode():
        docs = encode_store(encode_d, dm.corpus, batch_size=128, show_progress=False).numpy()  # (N, H)
        queries = encode_store(encode_q, dm.queries, dev, batch_size=128, show_progress=False).numpy()  # (Q, H)
    print(f"encoded {len(docs)} documents and {len(queries)} dev queries in {time.perf_counter() - start:.0f} s "
          f"({'checkpoint ' + args.checkpoint if args.checkpoint else 'MiniLM zero-shot'}); torch threads "
          f"{torch.get_num_threads()}")
    relevance = dm.relevance_for(dev, "dev")

    rows = []
    exact = None
    for factory in ["Flat", *(f"IVF{n},Flat" for n in args.nlist)]:
        start = time.perf_counter()
        index = build_index(docs, factory)
        build_s = time.perf_counter() - start
        nlist = int(factory[3:].split(",")[0]) if factory.startswith("IVF") else None
        for nprobe in [None] if nlist is None else sorted({1, 8, nlist}):
            params = None if nprobe is None else {"nprobe": nprobe}
            start = time.perf_counter()
            scores, ranked = search(index, queries, K, params=params)
            search_s = time.perf_counter() - start
            short = warn_short_results(ranked, K, factory)
            metrics = retrieval_metrics(scores, ranked, relevance)
            same = "" if exact is None else ("yes" if np.array_equal(ranked, exact) else "no")
            exact = ranked if exact is None else exact
            rows.append((factory, "-" if nprobe is None else str(nprobe), metrics["ndcg@10"], metrics["recall@100"],
                         build_s, search_s, float((ranked >= 0).sum(1).mean()), short, same))
    print(f"\n{'index':<14}{'nprobe':>7}{'nDCG@10':>9}{'R@100':>8}{'build s':>9}{'search s':>10}"
          f"{'mean found':>12}{'short':>7}{'=Flat':>7}")
    for factory, nprobe, ndcg, r100, build_s, search_s, found, short, same in rows:
        print(f"{factory:<14}{nprobe:>7}{ndcg:>9.4f}{r100:>8.4f}{build_s:>9.3f}{search_s:>10.3f}{found:>12.0f}"
              f"{short:>7}{same:>7}")
    print(f"(top {K} per query; {len(queries)} dev queries; 'short': queries with fewer than {K} results; "
          "'=Flat': the same rankings as exact search)")


if __name__ == "__main__":
    main()
