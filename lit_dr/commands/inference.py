"""Using a trained model outside a fit: encode a corpus into embedding files (and, for a non-exact factory, a
FAISS index), then search it for a query file and write a TREC run (`lit-dr index`, `lit-dr search`).

The same mechanism as evaluation and negative refresh: `encoding.encode_to_shards` writes each process's share of
the corpus to its own shard, `CorpusIndex` streams exact search over the shards and builds
any other index, and the texts are the data layer's token stores (`cached_store`: validated ids, tokenized once,
memory-mapped, shared with training's cache). Only the model (a lit_dr checkpoint or a sentence-transformers
directory, such as one written by `lit-dr export`) is new here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_dr.data.batches import TokenBatch
from lit_dr.data.formats import dataset_files, read_qrels
from lit_dr.data.id_index import IdIndex
from lit_dr.data.token_store import cached_store
from lit_dr.index import corpus_index
from lit_dr.index.corpus_index import CorpusIndex, Encoding
from lit_dr.index.embeddings import EmbeddingDtype, EmbeddingShards
from lit_dr.index.encoding import AutocastFactory, encode_store
from lit_dr.index.search import Processes, even_share, is_exact

log = logging.getLogger(__name__)
MANIFEST = "index.json"


@dataclass
class Tower:
    """One side of a model: token ids -> (N, H) embeddings, with the tokenizer and max length it was trained with."""

    encode: Callable[[TokenBatch], Tensor]
    tokenizer: object
    max_length: int
    dim: int


def load_towers(model: str | Path, device: torch.device | str = "cpu") -> tuple[Tower, Tower]:
    """(query tower, document tower) of a lit_dr `.ckpt` or a sentence-transformers directory, in eval mode.

    Max lengths: a checkpoint's training lengths (its data module's), else the tokenizer's maximum.
    """
    from transformers import AutoTokenizer

    path = Path(model)
    if path.is_file():
        from lit_dr.commands.export import load_module, read_checkpoint_facts

        module = load_module(path).to(device)
        data = read_checkpoint_facts(path)["data"]
        towers = []
        for tower, key in ((module.encoder, "query_max_length"), (module.document_tower, "doc_max_length")):
            tokenizer = AutoTokenizer.from_pretrained(tower.tokenizer_path)
            towers.append(Tower(_encode_with(tower), tokenizer, data.get(key) or _model_max_length(tokenizer, tower.model), tower.dim))
        return towers[0], towers[1]
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path}: neither a lit_dr checkpoint (.ckpt file) nor a sentence-transformers "
                                "directory (with modules.json, as `lit-dr export` writes)")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(path), device=str(device)).eval()
    return _st_tower(st, "query"), _st_tower(st, "document")


def _encode_with(tower) -> Callable[[TokenBatch], Tensor]:
    return lambda tokens: tower(tokens.input_ids, tokens.attention_mask)  # (N, H)


def _model_max_length(tokenizer, model) -> int:
    # Tokenizers without a recorded limit report a huge sentinel; the position table is the real bound.
    limit = getattr(model.config, "max_position_embeddings", None) or 512
    return min(int(tokenizer.model_max_length), int(limit))


def _st_tower(st, task: str) -> Tower:
    first = st[0]
    transformer = first.sub_modules[task][0] if hasattr(first, "sub_modules") else first
    length = getattr(transformer, f"{task}_length", None) or _model_max_length(transformer.tokenizer,
                                                                              transformer.auto_model)

    def encode(tokens: TokenBatch) -> Tensor:
        features = {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
        return st(features, task=task)["sentence_embedding"]  # (N, H)

    dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension  # renamed in v6
    return Tower(encode, transformer.tokenizer, int(length), int(dim()))


def corpus_file(path: str | Path) -> Path:
    """A corpus file: the path itself, or the corpus of a BEIR / MS MARCO data set directory."""
    path = Path(path)
    if path.is_dir():
        sources = dataset_files(path).corpus_sources
        if len(sources) > 1:  # a store of one file: index the shards' concatenation, not the first alone
            raise ValueError(f"{path}: the corpus is {len(sources)} parquet files ({sources[0].name}, ...); "
                             "join them into one corpus.parquet")
        return sources[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such corpus file or data set directory")
    return path


def index_corpus(model: str | Path, corpus: str | Path, out_dir: str | Path, index_factory: str = "Flat",
                 batch_size: int = 128, max_length: int | None = None, dtype: EmbeddingDtype = "float32",
                 procs: Processes | None = None, autocast: AutocastFactory | None = None,
                 show_progress: bool = True, cache_dir: Path | None = None,
                 search_params: dict[str, float] | None = None) -> EmbeddingShards:
    """Encode every text of `corpus` with the model's document tower into embedding shards under `out_dir` (each
    process its share), then (process 0) the ids, a manifest `index.json` (with `search_params`, the default of
    `lit-dr search`) and, for a non-exact `index_factory` only, a FAISS index `embeddings/index-<factory>.faiss` built from the shards
    in blocks. Exact search ("Flat") streams over the shards and needs no index: the matrix is never held in
    memory. The tokens come from (or go to) the token cache under `cache_dir` (default `$LIT_DR_CACHE`)."""
    from lit_dr.index.faiss_index import check_search_params

    check_search_params(index_factory, search_params)  # before the encoding, not after it
    procs = procs or Processes()
    out_dir, source = Path(out_dir), corpus_file(corpus)
    _, tower = load_towers(model, procs.device)
    store = cached_store("corpus", [source], tower.tokenizer, max_length or tower.max_length, cache_dir,
                         show_progress=show_progress and procs.rank == 0)
    index = CorpusIndex(store, out_dir, dtype=dtype, procs=procs,
                        encoding=Encoding(batch_size, autocast, show_progress and procs.rank == 0))
    embeddings = index.embed(corpus_index.Tower(tower.encode, tower.dim), "embeddings")
    if not is_exact(index_factory):  # built by the corpus index, as evaluation builds it; written beside the shards
        index.save_faiss(index_factory)
    if procs.rank == 0:
        np.save(out_dir / "ids.npy", store.ids)
        manifest = {"model": str(Path(model).resolve()), "corpus": str(source.resolve()), "rows": len(store),
                    "dim": tower.dim, "index_factory": index_factory, "search_params": search_params,
                    "max_length": store.max_length}
        (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if procs.barrier is not None and procs.world_size > 1:
        procs.barrier()
    return embeddings


def query_texts(queries: str | Path, split: str | None) -> tuple[Path, dict[str, dict[str, int]] | None]:
    """The queries file and, for a data set directory with `split`, that split's judgments (whose queries are
    the ones searched). A split directory a fit wrote (`<run>/dev`: queries.jsonl + qrels.tsv) is scored as it is;
    a run directory with `split` uses its `<run>/<split>`. Training queries are scored with a warning."""
    from lit_dr.data.split_files import QRELS, QUERIES, is_split_dir

    path = Path(queries)
    if path.is_dir() and split is not None and is_split_dir(path / split):
        path = path / split  # a run directory: the split its fit wrote
    if is_split_dir(path):
        return path / QUERIES, read_qrels(path / QRELS)
    if not path.is_dir():
        if split is not None:
            raise ValueError("--split needs a data set directory, not a queries file")
        return path, None
    files = dataset_files(path)
    if len(files.queries) != 1:
        raise ValueError(f"{path}: {len(files.queries)} queries files; pass one of them: {files.queries}")
    if split is None:
        return files.queries[0], None
    if split not in files.qrels:
        carved = (" A fit's dev split is carved out of the training queries at run time: its run directory holds "
                  "it (pass <run directory>/dev, or the run directory with --split dev)."
                  if split == "dev" and "train" in files.qrels else "")
        raise ValueError(f"{path}: no judgments for split {split!r}; it has {sorted(files.qrels)}.{carved}")
    if split == "train":
        log.warning("scoring the training split of %s: these are the queries the model trained on, so its figures "
                    "are optimistic; score dev (a fit's <run directory>/dev) or test for a fair one", path)
    return files.queries[0], read_qrels(files.qrels[split])


def search_index(index_dir: str | Path, queries: str | Path, out_file: str | Path, model: str | Path | None = None,
                 k: int = 1000, split: str | None = None, batch_size: int = 128, max_length: int | None = None,
                 procs: Processes | None = None, autocast: AutocastFactory | None = None,
                 show_progress: bool = True, cache_dir: Path | None = None,
                 search_params: dict[str, float] | None = None) -> dict[str, float] | None:
    """Encode the queries with the query tower of the model that built `index_dir` (or `model`), search the index
    (exact: streamed over the embedding shards, as evaluation; else the FAISS index file, on the GPU when the
    device is one and FAISS's GPU build implements the index: `search.search_backend`), write a TREC run.
    `search_params` (FAISS's, e.g. {"nprobe": 64}) default to those `lit-dr index` recorded in `index.json`.

    Returns the metrics of `lit_dr.evaluation.metrics.retrieval_metrics` when `split` names judgments, else None.
    """
    from lit_dr.evaluation.metrics import retrieval_metrics, write_trec_run
    from lit_dr.index.faiss_index import check_search_params

    procs = procs or Processes()
    index_dir = Path(index_dir)
    if not (index_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{index_dir / MANIFEST} missing: {index_dir} was not written by `lit-dr index`")
    manifest = json.loads((index_dir / MANIFEST).read_text())
    factory = manifest["index_factory"]
    params = search_params if search_params is not None else manifest.get("search_params")
    check_search_params(factory, params, manifest["dim"])
    tower, _ = load_towers(model or manifest["model"], procs.device)
    source, qrels = query_texts(queries, split)
    store = cached_store("queries", [source], tower.tokenizer, max_length or tower.max_length, cache_dir,
                         show_progress=show_progress and procs.rank == 0)
    rows = np.arange(len(store))
    if qrels is not None:
        rows = np.array([r for r, q in enumerate(store.ids) if str(q) in qrels], dtype=np.int64)
    if tower.dim != manifest["dim"]:
        raise ValueError(f"the model gives {tower.dim}-dim queries, the index holds {manifest['dim']}-dim vectors")
    mine = rows[even_share(len(rows), procs.rank, procs.world_size)]
    local = (encode_store(tower.encode, store, mine, batch_size=batch_size, device=procs.device, autocast=autocast,
                          show_progress=show_progress and procs.rank == 0, desc="encode queries")
             if len(mine) else torch.empty(0, tower.dim))  # (Q_r, H)
    index = CorpusIndex.open(index_dir / "embeddings", procs)
    if not is_exact(factory):  # the FAISS index `lit-dr index` wrote, not a new one
        index.load_faiss(factory, params)
    scores, ranked = index.search(local.numpy(), k, factory, params, share=False)
    if procs.rank != 0:
        return None
    doc_ids = np.load(index_dir / "ids.npy", mmap_mode="r")  # (N,) str, read as needed
    write_trec_run(out_file, [str(store.ids[r]) for r in rows], doc_ids, scores, ranked)
    if qrels is None:
        return None
    judged = [qrels[str(store.ids[r])] for r in rows]  # (Q,) {document id: grade}
    found = IdIndex.build(doc_ids, str(index_dir / "ids.npy")).find([d for rel in judged for d in rel])  # (J,)
    ends = np.cumsum([len(rel) for rel in judged], dtype=np.int64)  # (Q,) where each query's judgments end
    relevance = [{row: g for g, row in zip(rel.values(), found[end - len(rel):end].tolist(), strict=True) if row >= 0}
                 for rel, end in zip(judged, ends.tolist(), strict=True)]
    return retrieval_metrics(scores, ranked, relevance, doc_ids)  # ties by document id, as in the run file's trec_eval
