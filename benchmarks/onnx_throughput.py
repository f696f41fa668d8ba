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
    parser.add_argument("--docs", type=int, default=None, help="encode only the first N documents (no nDCG)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    from lit_dr.commands.export_hub import export_onnx, quantize_onnx
    from lit_dr.evaluation.metrics import retrieval_metrics
    from lit_dr.index.encoding import encode_store
    from lit_dr.models.encoder import Encoder, resolve_model_path
    from lit_dr.training import RetrievalDataModule

    threads = torch.get_num_threads()
    dm = RetrievalDataModule(args.dataset, tokenizer=MODEL, negatives="none", num_negatives=0, show_progress=False)
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
        backends = {"torch": encoder.encode,
                    "onnx": onnx_encoder(model_dir / "onnx/model.onnx", threads),
                    "onnx int8": onnx_encoder(model_dir / "onnx/model_qint8.onnx", threads)}
        rows = np.arange(len(dm.corpus) if args.docs is None else min(args.docs, len(dm.corpus)))
        dev = dm.require_split("dev")
        relevance = dm.relevance_for(dev, "dev")
        print(f"{args.dataset}: {len(rows)} documents (doc_max_length {dm.corpus.max_length}), {len(dev)} dev "
              f"queries; batch {args.batch_size}, {threads} threads; export {exported:.1f} s, int8 {quantized:.1f} s")
        results, embeddings = {}, {}
        for name, encode in backends.items():
            encode(dm.corpus.batch(rows[:8]))  # warm-up: first-call allocations out of the timing
            t = time.perf_counter()
            docs = encode_store(encode, dm.corpus, rows, batch_size=args.batch_size, show_progress=False)
            seconds = time.perf_counter() - t
            queries = encode_store(encode, dm.queries, dev, batch_size=args.batch_size, show_progress=False)
            embeddings[name] = docs
            ndcg = float("nan")
            if args.docs is None:
                scores, top = torch.topk(queries @ docs.T, k=100, dim=1)
                ndcg = retrieval_metrics(scores.numpy(), rows[top.numpy()], relevance,
                                         [str(i) for i in dm.corpus.ids])["ndcg@10"]
            results[name] = (len(rows) / seconds, seconds, ndcg)
        base = embeddings["torch"]
        print("\n| backend | docs/s | corpus s | speed-up | min cosine to torch | dev nDCG@10 | vs torch |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, (rate, seconds, ndcg) in results.items():
            cos = torch.nn.functional.cosine_similarity(embeddings[name], base, dim=1).min().item()
            print(f"| {name} | {rate:.1f} | {seconds:.1f} | {rate / results['torch'][0]:.2f}x | {cos:.6f} | "
                  f"{ndcg:.4f} | {ndcg - results['torch'][2]:+.4f} |")
        drop = results["torch"][2] - results["onnx int8"][2]
        if args.docs is None:
            verdict = "keeps" if abs(drop) <= 0.005 else "does NOT keep"
            print(f"\nint8 {verdict} dev nDCG@10 within 0.005 of torch (difference {-drop:+.4f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
