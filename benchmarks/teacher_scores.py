"""Teacher scores for distillation (MarginMSE): a lit_dr checkpoint scores each training query's top-k documents
and every judged positive, written as a BEIR-style TSV `query-id<TAB>corpus-id<TAB>score` (the format
`lit_dr.data.teacher_scores` reads; `RetrievalDataModule(teacher_scores=...)`).

    LIT_DR_DATA=../shared/data python benchmarks/teacher_scores.py --model runs/.../epoch0-step24.ckpt \
        --out /work/notes/teacher/scifact-train.tsv

The score is the teacher's similarity, the dot product of its embeddings (cosine for a normalising encoder): the
quantity a bi-encoder student's margins are fitted to. Exact search over the whole corpus, held in memory (SciFact
scale). The file is written next to its final place and renamed in, so a reader never sees half of it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lit_dr.commands.inference import load_towers
from lit_dr.data.formats import dataset_files, read_qrels, resolve_dataset
from lit_dr.data.token_store import cached_store
from lit_dr.index.encoding import encode_store


def write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(lines))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a lit_dr .ckpt or a sentence-transformers directory")
    p.add_argument("--dataset", default="scifact", help="a directory or a name under $LIT_DR_DATA")
    p.add_argument("--split", default="train", help="the qrels split whose queries are scored")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--k", type=int, default=100, help="top-k documents per query (plus every judged positive)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    files = dataset_files(resolve_dataset(args.dataset, download=False))
    query_tower, doc_tower = load_towers(args.model)
    corpus = cached_store("corpus", [files.corpus], doc_tower.tokenizer, doc_tower.max_length)
    queries = cached_store("queries", list(files.queries), query_tower.tokenizer, query_tower.max_length)
    qrels = read_qrels(files.qrels[args.split])
    qids = [q for q in qrels if q in queries.row_of]
    q_rows = np.array([queries.row_of[q] for q in qids], dtype=np.int64)
    docs = encode_store(doc_tower.encode, corpus, batch_size=args.batch_size, show_progress=True)  # (N, H)
    q = encode_store(query_tower.encode, queries, q_rows, batch_size=args.batch_size, show_progress=False)  # (Q, H)
    scores = q @ docs.T  # (Q, N)
    top = scores.topk(min(args.k, len(corpus)), dim=1).indices  # (Q, k)
    lines, positives = ["query-id\tcorpus-id\tscore\n"], 0
    for i, qid in enumerate(qids):
        rows = dict.fromkeys(top[i].tolist())
        for did, grade in qrels[qid].items():
            if grade > 0 and did in corpus.row_of:
                positives += corpus.row_of[did] not in rows
                rows[corpus.row_of[did]] = None
        lines += [f"{qid}\t{corpus.ids[r]}\t{float(scores[i, r]):.6f}\n" for r in rows]
    write_atomic(args.out, lines)
    print(f"{args.out}: {len(lines) - 1} scores of {len(qids)} {args.split} queries (top {args.k}, {positives} "
          f"positives outside it) by {args.model}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
