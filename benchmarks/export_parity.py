"""Export parity on SciFact: `SentenceTransformer(exported dir)` against lit_dr's own embeddings, MiniLM.

    python benchmarks/export_parity.py [--checkpoint RUN/checkpoints/last.ckpt] [--docs 1000 | --all]

Without --checkpoint, a BM25Negatives module with the bm25neg config's tower (all-MiniLM-L6-v2, mean pooling,
normalised) and its data lengths (queries 64, documents 128) is saved untrained: parity is about the export, not
the training. lit_dr's side encodes the data module's token cache (the tokenization training uses) with
`encode_store`; sentence-transformers' side encodes the texts of `iter_texts` with `encode_document` /
`encode_query`. Prints the minimum and mean cosine per side (the issue asks for >= 0.9999) and the max |diff|.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared/data/scifact"


def untrained_checkpoint(path: Path) -> Path:
    import lightning as L
    import torch

    from lit_dr import BM25Negatives, Encoder

    module = BM25Negatives(encoder=Encoder("sentence-transformers/all-MiniLM-L6-v2", normalize=True),
                           temperature=0.05)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["datamodule_hyper_parameters"] = {"dataset": str(SCIFACT), "query_max_length": 64, "doc_max_length": 128}
    torch.save(ckpt, path)
    return path


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--docs", type=int, default=1000, help="the first N corpus documents (default 1000)")
    parser.add_argument("--all", action="store_true", help="every document and query of SciFact")
    parser.add_argument("--data", default=str(SCIFACT))
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from lit_dr import BiEncoderModule, RetrievalDataModule
    from lit_dr.commands.export import export_checkpoint, read_checkpoint_facts
    from lit_dr.data.formats import iter_texts
    from lit_dr.index.encoding import encode_store

    work = Path(tempfile.mkdtemp(prefix="export-parity-"))
    ckpt = Path(args.checkpoint) if args.checkpoint else untrained_checkpoint(work / "untrained.ckpt")
    t0 = time.perf_counter()
    out = export_checkpoint(ckpt, work / "exported")
    print(f"exported {ckpt} to {out} in {time.perf_counter() - t0:.1f} s")
    data = read_checkpoint_facts(ckpt)["data"]
    module = BiEncoderModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = RetrievalDataModule(args.data, tokenizer=module.encoder.tokenizer_path, negatives="none",
                             query_max_length=data["query_max_length"], doc_max_length=data["doc_max_length"],
                             cache_dir=str(work / "cache"), show_progress=False)
    dm.prepare_data()
    dm.setup()
    n_docs = len(dm.corpus) if args.all else min(args.docs, len(dm.corpus))
    n_queries = len(dm.queries) if args.all else min(args.docs, len(dm.queries))
    model = SentenceTransformer(str(out), device="cpu")
    sides = (("documents", dm.corpus, module.encode_docs, dm.files.corpus, model.encode_document, n_docs),
             ("queries", dm.queries, module.encode_queries, dm.files.queries[0], model.encode_query, n_queries))
    for name, store, encode, source, st_encode, n in sides:
        texts = [r.text for r in islice(iter_texts(source), n)]
        t0 = time.perf_counter()
        ours = encode_store(encode, store, np.arange(n), batch_size=64, show_progress=False).numpy()
        t1 = time.perf_counter()
        theirs = st_encode(texts, batch_size=64)
        t2 = time.perf_counter()
        c = cosines(ours, theirs)
        print(f"{name}: {n} texts; cosine min {c.min():.6f} mean {c.mean():.6f}; max |diff| "
              f"{np.abs(ours - theirs).max():.2e}; lit_dr {t1 - t0:.1f} s, sentence-transformers {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
