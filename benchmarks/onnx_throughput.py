"""Corpus encoding throughput with torch and ONNX Runtime side by side, and whether int8 keeps the dev score.

    LIT_DR_DATA=/work/shared/data python benchmarks/onnx_throughput.py [--docs N] [--batch-size 128]

The packaged all-MiniLM-L6-v2 (mean pooling, normalised), exported as `lit-dr export --onnx --quantize` does
(`lit_dr.commands.export_hub`: onnx/model.onnx and onnx/model_qint8.onnx), encodes SciFact's corpus the way
`lit-dr index` does (`encode_store`: the token store's length-sorted batches, doc_max_length 256) with each
backend in one process, same batches and threads. Then each backend embeds the dev queries (the carved dev split,
seed 0, as every README number) and searches its own corpus embeddings exactly: nDCG@10 per backend, and the
cosine of each ONNX embedding with torch's (the parity figure). int8 is recommended only where its nDCG@10 is
within 0.005 of torch's.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def onnx_encoder(path: Path, threads: int):
    """A `TokenBatch -> (N, H)` encoder over an ONNX graph: mean pooling and normalisation as MiniLM's modules."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def encode(batch) -> torch.Tensor:
        ids, mask = batch.input_ids.numpy(), batch.attention_mask.numpy()
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = torch.from_numpy(session.run(["last_hidden_state"], feeds)[0])  # (N, L, H)
        m = batch.attention_mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    return encode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="scifact")
    parser.add_argument("--docs", type=int, default=None,
                        help="a sub-corpus of N documents: every dev-relevant one, the rest drawn at random (seed 0); "
                             "nDCG@10 is then over that sub-corpus (default: the whole corpus)")
    parser.add_argument("--doc-max-length", type=int, default=256, help="configs/bm25neg.yaml trains at 128")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    from lit_dr.commands.export_hub import export_onnx, quantize_onnx
    from lit_dr.evaluation.metrics import retrieval_metrics
    from lit_dr.index.encoding import encode_store
    from lit_dr.models.encoder import Encoder, resolve_model_path
    from lit_dr.training import RetrievalDataModule

    threads = torch.get_num_threads()
    dm = RetrievalDataModule(args.dataset, tokenizer=MODEL, negatives="none", num_negatives=0, show_progress=False,
                             doc_max_length=args.doc_max_length)
    dm.prepare_data()
    dm.setup()
    encoder = Encoder(MODEL, pooling="mean", normalize=True).eval()
    work = Path(tempfile.mkdtemp(prefix="onnx-throughput-"))
    try:
        model_dir = work / "minilm"
        shutil.copytree(resolve_model_path(MODEL), model_dir)
        t = time.perf_counter()
        export_onnx(model_dir)
        exported = time.perf_counter() - t
        t = time.perf_counter()
        quantize_onnx(model_dir)
        quantized = time.perf_counter() - t
        backends = {"torch": lambda batch: encoder(batch.input_ids, batch.attention_mask),
                    "onnx": onnx_encoder(model_dir / "onnx/model.onnx", threads),
                    "onnx int8": onnx_encoder(model_dir / "onnx/model_qint8.onnx", threads)}
        dev = dm.require_split("dev")
        judged = dm.relevance_for(dev, "dev")
        rows = np.arange(len(dm.corpus))
        if args.docs is not None and args.docs < len(dm.corpus):
            needed = sorted({d for rel in judged for d in rel})
            rest = np.setdiff1d(rows, needed)
            extra = np.random.default_rng(0).choice(rest, max(args.docs - len(needed), 0), replace=False)
            rows = np.sort(np.concatenate([needed, extra])).astype(np.int64)
        position = {int(r): i for i, r in enumerate(rows)}  # corpus row -> column of the sub-corpus embeddings
        relevance = [{position[d]: g for d, g in rel.items() if d in position} for rel in judged]
        print(f"{args.dataset}: {len(rows)} of {len(dm.corpus)} documents (doc_max_length {dm.corpus.max_length}), "
              f"{len(dev)} dev queries; batch {args.batch_size}, {threads} threads; export {exported:.1f} s, int8 "
              f"{quantized:.1f} s", flush=True)
        results, embeddings = {}, {}
        for name, encode in backends.items():
            encode(dm.corpus.batch(rows[:8]))  # warm-up: first-call allocations out of the timing
            t = time.perf_counter()
            docs = encode_store(encode, dm.corpus, rows, batch_size=args.batch_size, show_progress=False)
            seconds = time.perf_counter() - t
            queries = encode_store(encode, dm.queries, dev, batch_size=args.batch_size, show_progress=False)
            embeddings[name] = docs
            scores, top = torch.topk(queries @ docs.T, k=min(100, len(rows)), dim=1)
            ndcg = retrieval_metrics(scores.numpy(), top.numpy(), relevance,
                                     [str(dm.corpus.ids[r]) for r in rows])["ndcg@10"]
            results[name] = (len(rows) / seconds, seconds, ndcg)
            print(f"{name}: {len(rows) / seconds:.1f} docs/s ({seconds:.1f} s), dev nDCG@10 {ndcg:.4f}", flush=True)
        base = embeddings["torch"]
        print("\n| backend | docs/s | corpus s | speed-up | min cosine to torch | dev nDCG@10 | vs torch |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (rate, seconds, ndcg) in results.items():
            cos = torch.nn.functional.cosine_similarity(embeddings[name], base, dim=1).min().item()
            print(f"| {name} | {rate:.1f} | {seconds:.1f} | {rate / results['torch'][0]:.2f}x | {cos:.6f} | "
                  f"{ndcg:.4f} | {ndcg - results['torch'][2]:+.4f} |")
        drop = results["torch"][2] - results["onnx int8"][2]
        verdict = "keeps" if abs(drop) <= 0.005 else "does NOT keep"
        over = "the whole corpus" if len(rows) == len(dm.corpus) else f"a {len(rows)}-document sub-corpus"
        print(f"\nint8 {verdict} dev nDCG@10 within 0.005 of torch (difference {-drop:+.4f}, over {over})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
