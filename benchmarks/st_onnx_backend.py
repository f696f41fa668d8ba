"""sentence-transformers' `backend="onnx"` on a lit_dr export gives lit_dr's embeddings (issue 19, item 8).

    PYTHONPATH=. python benchmarks/st_onnx_backend.py CHECKPOINT [--texts 200]

Run it where sentence-transformers' ONNX backend imports: it needs optimum-onnx[onnxruntime], whose 0.1.0 needs
transformers < 4.58 (the default environment has transformers 5, where it does not import). The checkpoint is
exported with `--onnx` in this same environment (an export written under sentence-transformers 6 names modules
version 5 cannot import), loaded with `backend="onnx"`, and its embeddings of SciFact queries and documents are
compared with the checkpoint's own towers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--texts", type=int, default=200, help="queries and documents each")
    args = parser.parse_args()
    import sentence_transformers as st
    from transformers import AutoTokenizer

    import lit_dr
    from lit_dr.commands.export import export_checkpoint

    data = Path(os.environ.get("LIT_DR_DATA", "../shared/data")) / "scifact"
    queries = [json.loads(line)["text"] for line in open(data / "queries.jsonl")][: args.texts]
    docs = []
    for line in open(data / "corpus.jsonl"):
        d = json.loads(line)
        docs.append(f"{d.get('title', '')} {d['text']}".strip())
        if len(docs) == args.texts:
            break
    module = lit_dr.BiEncoderModule.load_from_checkpoint(args.checkpoint).eval()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        export_checkpoint(args.checkpoint, out, onnx=True)
        tokenizer = AutoTokenizer.from_pretrained(out)
        model = st.SentenceTransformer(str(out), backend="onnx", device="cpu")
        print(f"sentence-transformers {st.__version__}, backend {model.backend}")
        for name, texts, tower, length in (("queries", queries, module.encoder, 64),
                                           ("documents", docs, module.document_tower, 128)):
            tokens = tokenizer(texts, padding=True, truncation=True, max_length=length, return_tensors="pt")
            with torch.no_grad():
                want = tower(tokens["input_ids"], tokens["attention_mask"]).numpy()
            model.max_seq_length = length
            got = model.encode(texts, batch_size=32)
            cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
            print(f"{name}: {len(texts)} texts at {length} tokens, cosine to lit_dr's: min {cos.min():.6f}, "
                  f"largest difference {np.abs(got - want).max():.1e}")


if __name__ == "__main__":
    main()
