"""The data module: corpus, queries, qrels per split, and the current table of hard negatives."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_dr.data.batches import EncodeBatch, TrainBatch
from lit_dr.data.formats import (
    DatasetFiles,
    dataset_files,
    iter_texts,
    read_negatives,
    read_qrels,
    resolve_dataset,
    split_dev,
)
from lit_dr.data.token_store import TokenStore, build_store, store_key

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LIT_DR_CACHE", Path.home() / ".cache" / "lit_dr"))


@dataclass(frozen=True)
class NegativesTable:
    """Candidate hard negatives (corpus rows, best first) per training query row; `version` counts refreshes."""

    candidates: dict[int, np.ndarray]
    version: int = 0
    source: str = ""


class TrainQueries(Dataset):
    """Item i: (query row, one positive, `num_negatives` negatives), drawn from a generator seeded by
    (seed, epoch, negatives version, i), so a run is reproducible and resumable without saved sampler state."""

    def __init__(self, dm: RetrievalDataModule, query_rows: np.ndarray) -> None:
        self.dm = dm
        self.query_rows = query_rows

    def __len__(self) -> int:
        return len(self.query_rows)

    def __getitem__(self, i: int) -> tuple[int, int, np.ndarray]:
        dm = self.dm
        qrow = int(self.query_rows[i])
        rng = np.random.default_rng([dm.hparams.seed, dm.epoch, dm.negatives.version, qrow])
        positives = dm.positives[qrow]
        pos = int(positives[rng.integers(len(positives))])
        h = dm.hparams.num_negatives
        pool = dm.negatives.candidates.get(qrow, np.empty(0, dtype=np.int64))
        if len(pool) >= h:
            negs = rng.choice(pool, size=h, replace=False)
        else:  # too few mined candidates: top up with random documents that are not judged relevant
            extra = rng.choice(len(dm.corpus), size=4 * h + 8, replace=False if len(dm.corpus) > 4 * h + 8 else True)
            extra = [r for r in extra if r not in dm.relevance[qrow] and r not in pool]
            negs = np.concatenate([pool, np.asarray(extra[: h - len(pool)], dtype=np.int64)])
        return qrow, pos, negs.astype(np.int64)


class RetrievalDataModule(L.LightningDataModule):
    """Reads a BEIR or MS MARCO-style data set, tokenizes it once into a memory-mapped cache, serves batches.

    Args:
        dataset: a directory, or a name resolved under `data_root` / `$LIT_DR_DATA`, the cache, or BEIR's zip.
        tokenizer: tokenizer path or hub id; the CLI fills it from the model's encoder.
        query_max_length / doc_max_length: tokens kept per side (longer texts are truncated).
        num_negatives: hard negatives per query per batch (0: in-batch negatives only).
        negatives: where the initial table comes from: BM25 top `bm25_depth` minus judged-relevant documents,
            a `negatives.tsv` file of the data set, or none (a refresh callback may fill it later).
        dev_fraction / seed: when the data set has no `qrels/dev.tsv`, this share of training queries (chosen by
            `split_dev`, identical on every machine) becomes the dev split and leaves training.
        duplicate_ids: what a repeated corpus or query id does: raise, or keep the first with a counted warning.
        num_workers: 0 is deliberate: a batch is a slice of a memory map, and the main process sees a new
            negatives table at the very next batch. Workers (>0) copy the table when an epoch starts.
    """

    def __init__(
        self,
        dataset: str = "scifact",
        data_root: str | None = None,
        download: bool = True,
        tokenizer: str | None = None,
        query_max_length: int = 64,
        doc_max_length: int = 256,
        train_batch_size: int = 16,
        eval_batch_size: int = 128,
        num_negatives: int = 1,
        negatives: Literal["bm25", "file", "none"] = "bm25",
        bm25_depth: int = 100,
        dev_fraction: float = 0.2,
        seed: int = 0,
        duplicate_ids: Literal["error", "keep_first"] = "error",
        cache_dir: str | None = None,
        num_workers: int = 0,
        show_progress: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Under the CLI, hparams come from the config, where a value linked from the model is absent.
        self.hparams["tokenizer"] = tokenizer
        self.epoch = 0
        self.negatives = NegativesTable({})
        self._files: DatasetFiles | None = None

    # -- locations -------------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        return Path(self.hparams.cache_dir) if self.hparams.cache_dir else default_cache_dir()

    @property
    def files(self) -> DatasetFiles:
        if self._files is None:
            root = resolve_dataset(
                self.hparams.dataset, self.hparams.data_root, self.cache_dir, download=self.hparams.download
            )
            self._files = dataset_files(root)
        return self._files

    def _tokenizer(self):
        from transformers import AutoTokenizer

        if self.hparams.tokenizer is None:
            raise ValueError("RetrievalDataModule needs `tokenizer` (the CLI links it to the model's encoder)")
        from lit_dr.encoder import resolve_model_path

        return AutoTokenizer.from_pretrained(resolve_model_path(self.hparams.tokenizer))

    def _store(self, kind: Literal["corpus", "queries"], build: bool) -> TokenStore:
        sources = [self.files.corpus] if kind == "corpus" else list(self.files.queries)
        max_length = self.hparams.doc_max_length if kind == "corpus" else self.hparams.query_max_length
        tokenizer = self._tokenizer()
        directory = self.cache_dir / "tokens" / f"{kind}-{store_key(sources, tokenizer, max_length)}"
        if directory.exists():
            return TokenStore(directory)
        if not build:
            raise RuntimeError(f"token cache {directory} missing: prepare_data() must run first")

        def records():
            for source in sources:
                yield from iter_texts(source)

        return build_store(
            records(), sources[0], tokenizer, max_length, directory, self.hparams.duplicate_ids,
            self.hparams.show_progress,
        )

    # -- Lightning hooks -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download and tokenize once per machine (Lightning runs this on local rank 0 only)."""
        self._store("corpus", build=True)
        self._store("queries", build=True)

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "corpus", None) is not None:
            return
        self.corpus = self._store("corpus", build=True)
        self.queries = self._store("queries", build=True)
        self.split_rows: dict[str, np.ndarray] = {}
        self.relevance: dict[int, dict[int, int]] = {}  # query row -> {corpus row: grade}
        qrels = dict(self.files.qrels)
        for split, path in qrels.items():
            self.split_rows[split] = self._load_qrels(path)
        if "dev" not in qrels and "train" in self.split_rows:
            train_rows = self.split_rows["train"]
            train_ids, dev_ids = split_dev([str(self.queries.ids[r]) for r in train_rows],
                                           self.hparams.dev_fraction, self.hparams.seed)
            self.split_rows["train"] = np.array([self.queries.row_of[i] for i in train_ids], dtype=np.int64)
            self.split_rows["dev"] = np.array([self.queries.row_of[i] for i in dev_ids], dtype=np.int64)
            log.info("no qrels/dev.tsv: carved %d dev queries out of %d training queries (fraction %.2f, seed %d)",
                     len(dev_ids), len(train_rows), self.hparams.dev_fraction, self.hparams.seed)
        self.positives = {q: np.array([d for d, g in rel.items() if g > 0], dtype=np.int64)
                          for q, rel in self.relevance.items()}
        if "train" in self.split_rows and self.hparams.num_negatives > 0:
            self.set_negatives(self._initial_negatives())

    def _load_qrels(self, path: Path) -> np.ndarray:
        """Rows of the queries of one qrels file with at least one relevant, known document."""
        unknown_queries, unknown_docs, rows = set(), 0, []
        for qid, docs in read_qrels(path).items():
            qrow = self.queries.row_of.get(qid)
            if qrow is None:
                unknown_queries.add(qid)
                continue
            rel = {}
            for did, grade in docs.items():
                drow = self.corpus.row_of.get(did)
                if drow is None:
                    unknown_docs += 1
                else:
                    rel[drow] = grade
            if any(g > 0 for g in rel.values()):
                self.relevance[qrow] = rel
                rows.append(qrow)
        if unknown_queries or unknown_docs:
            log.warning("%s: %d judgments name unknown documents and %d unknown queries (e.g. %s); ignored",
                        path, unknown_docs, len(unknown_queries), sorted(unknown_queries)[:3])
        return np.array(sorted(rows), dtype=np.int64)

    def _initial_negatives(self) -> NegativesTable:
        train = self.split_rows["train"]
        if self.hparams.negatives == "none":
            return NegativesTable({})
        if self.hparams.negatives == "file":
            if self.files.negatives is None:
                raise FileNotFoundError(f"negatives='file' but {self.files.root} has no negatives file")
            given = read_negatives(self.files.negatives)
            cand = {}
            for q in train:
                ids = given.get(str(self.queries.ids[q]), [])
                rows = [self.corpus.row_of[i] for i in ids if i in self.corpus.row_of]
                cand[int(q)] = np.array([r for r in rows if r not in self.relevance[q]], dtype=np.int64)
            return NegativesTable(cand, source=str(self.files.negatives))
        return self._bm25_negatives(train)

    def _bm25_negatives(self, train: np.ndarray) -> NegativesTable:
        from lit_dr.bm25 import bm25_search, hard_negatives_from_ranking

        corpus_texts = [r.text for r in iter_texts(self.files.corpus)]
        query_texts = {r.id: r.text for p in self.files.queries for r in iter_texts(p)}
        texts = [query_texts[str(self.queries.ids[q])] for q in train]
        depth = self.hparams.bm25_depth
        _, ranked = bm25_search(corpus_texts, texts, k=depth, cache_dir=self.cache_dir / "bm25",
                                show_progress=self.hparams.show_progress)
        relevant = [set(self.relevance[q]) for q in train]
        mined = hard_negatives_from_ranking(ranked, relevant, depth)
        return NegativesTable({int(q): m for q, m in zip(train, mined, strict=True)}, source=f"bm25@{depth}")

    # -- state the callbacks and modules use --------------------------------------------------------
    def set_negatives(self, table: NegativesTable) -> None:
        self.negatives = table

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def relevance_for(self, query_rows: np.ndarray) -> list[dict[int, int]]:
        return [self.relevance.get(int(q), {}) for q in query_rows]

    # -- loaders ---------------------------------------------------------------------------------------
    def collate_train(self, items: list[tuple[int, int, np.ndarray]]) -> TrainBatch:
        query_rows = np.array([q for q, _, _ in items], dtype=np.int64)  # (B,)
        doc_rows = np.concatenate([np.concatenate([[p], n]) for _, p, n in items]).astype(np.int64)  # (B * G,)
        judged = torch.tensor([[int(d) in self.relevance[q] for d in doc_rows] for q in query_rows])  # (B, B * G)
        return TrainBatch(
            queries=self.queries.batch(query_rows),
            docs=self.corpus.batch(doc_rows),
            query_rows=torch.from_numpy(query_rows),
            doc_rows=torch.from_numpy(doc_rows),
            judged_relevant=judged,
        )

    def collate_encode(self, rows: list[int]) -> EncodeBatch:
        rows = np.asarray(rows, dtype=np.int64)
        return EncodeBatch(tokens=self.queries.batch(rows), rows=torch.from_numpy(rows))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            TrainQueries(self, self.split_rows["train"]),
            batch_size=self.hparams.train_batch_size,
            shuffle=True,
            drop_last=True,  # in-batch negatives: a short last batch changes the loss
            collate_fn=self.collate_train,
            num_workers=self.hparams.num_workers,
        )

    def query_dataloader(self, split: str) -> DataLoader:
        if split not in self.split_rows:
            raise ValueError(f"no qrels for split {split!r} in {self.files.root} (have: {sorted(self.split_rows)})")
        return DataLoader(
            self.split_rows[split].tolist(),
            batch_size=self.hparams.eval_batch_size,
            collate_fn=self.collate_encode,
        )

    def val_dataloader(self) -> DataLoader:
        return self.query_dataloader("dev")

    def test_dataloader(self) -> DataLoader:
        return self.query_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.query_dataloader("test" if "test" in self.split_rows else "dev")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "negatives_version": self.negatives.version}
