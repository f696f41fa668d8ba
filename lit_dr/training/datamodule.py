"""The data module: corpus, queries, qrels per split, and the current table of hard negatives."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_dr.data.batches import EncodeBatch, TrainBatch, excluded_mask
from lit_dr.data.formats import (
    NEGATIVES_FILE,
    DatasetFiles,
    dataset_files,
    file_problem,
    resolve_dataset,
    split_dev,
)
from lit_dr.data.judgment_table import JudgmentTable, QueriesOfDoc, merge
from lit_dr.data.judgments import given_negatives, load_qrels, warn_overlap
from lit_dr.data.sampling import EpochSampler, NegativesTable, QueryShardSampler, draw_rows
from lit_dr.data.split_files import qrels_file
from lit_dr.data.token_store import TokenStore, cached_store, default_cache_dir
from lit_dr.data.tuples import describe as describe_tuples
from lit_dr.data.tuples import is_tuples
from lit_dr.data.tuples import materialize as materialize_tuples
from lit_dr.files import shared_run_directory
from lit_dr.index.corpus_index import CorpusIndex, Encoding
from lit_dr.index.embeddings import EmbeddingDtype
from lit_dr.index.encoding import autocast_factory
from lit_dr.index.search import Processes

log = logging.getLogger(__name__)
_TUPLES_REPORTED: set[Path] = set()  # tuple sets this process has described


def _as_rows(rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long)


class RetrievalDataModule(L.LightningDataModule):
    """Reads a BEIR or MS MARCO-style data set, tokenizes it once into a memory-mapped cache, serves batches.

    Args:
        dataset: a directory (BEIR, BEIR's Hugging Face parquet layout, MS MARCO), or a name resolved under
            `data_root` / `$LIT_DR_DATA`, the cache, or BEIR's zip; or sentence-transformers-style tuples (a
            .parquet or .jsonl file, or a `save_to_disk` folder: `lit_dr.data.tuples`), read as the BEIR set they
            make (with `negatives: file` their negative columns, with `teacher_scores: teacher_scores.tsv` their
            scores).
        data_root: a folder holding data sets by name (default: `$LIT_DR_DATA`).
        download: fetch a BEIR data set by name into the cache when it is not found locally.
        tokenizer: tokenizer path or hub id; the CLI fills it from the model's encoder.
        query_max_length: tokens kept per query (longer queries are truncated).
        doc_max_length: tokens kept per document, title and text together (longer ones are truncated).
        train_batch_size: training queries per batch (per process).
        eval_batch_size: texts encoded per batch in evaluation, refresh and indexing.
        num_negatives: hard negatives per query per batch (0: in-batch negatives only).
        num_negative_queries: negative queries per positive document per batch (DANCE's dual loss; 0: none), drawn
            from the table's mined queries (`NegativeRefresh(mine_queries=True)`); where a document has fewer, or
            no refresh mines queries, topped up with training queries drawn at random (never dev or test
            queries, never `excluded_queries`), counted in one warning per table.
        negatives: where the initial table comes from: BM25 top `bm25_depth` minus `excluded_docs`,
            a `negatives.tsv` file of the data set, the documents `teacher_scores` scores for the query in
            teacher-score order minus `excluded_docs`, or none (a refresh callback may fill it later).
        bm25_depth: with negatives "bm25", how many of BM25's top documents per query the table keeps.
        teacher_scores: a file of teacher scores (`lit_dr.data.teacher_scores`: BEIR-style TSV, `qid pid score`
            or a TREC run); a relative path is taken from the data set directory, so it can ship with the data.
            Every `TrainBatch` then carries `doc_features["teacher_score"]` (B * G,) float32, the teacher's score
            of query i and each document of its group (MarginMSE). A training query's positive without a score
            is a setup error; a negative without one (a random top-up, another source's negative) gets NaN, and
            the losses leave its pair out (one counted warning per negatives table).
        exclude_from_negatives: what may never be a query's negative, in BM25 and file negatives, the random
            top-up, the refresh's mining and the in-batch false-negative mask (`excluded_docs`): "positives"
            (grade > 0; ANCE's released code) or "judged" (every document judged for the query, grade 0
            included, so a judged non-relevant document is never a negative). DANCE's negative queries follow
            it too (`excluded_queries`).
        test_qrels: judgments to score as the test split instead of the data set's `qrels/test.tsv`: a qrels TSV of
            this data set's queries, or a folder holding one, such as a run's `dev/` (`lit-dr test --ckpt_path ...
            --data.test_qrels=runs/lit-dr/<run>/dev` scores that run's carved dev split again). A test query that is
            also a training query is reported (`warn_overlap`).
        dev_split: the qrels split that validates, read as the split `dev` (MS MARCO: `dev.small`, its
            `qrels.dev.small.tsv` of 6,980 queries; its full `qrels.dev.tsv`, if present, is then not loaded). A name
            the data set has no qrels file for is an error naming the files it has.
        dev_fraction: when the data set has no qrels file of `dev_split`, this share of training queries (chosen by
            `split_dev`, identical on every machine) becomes the dev split and leaves training.
        seed: seeds that choice of dev queries (and, unless `sampling_seed` is given, the batches).
        sampling_seed: seeds the batch order and the draws of positives and negatives; None (default): `seed`.
            Set it to repeat a fit with other batches on the same dev split (`seed` also carves the split).
        duplicate_ids: what a repeated corpus or query id does: raise, or keep the first with a counted warning.
        cache_dir: where token stores (and downloaded data sets) are kept; default `$LIT_DR_CACHE` or
            `~/.cache/lit_dr`.
        embedding_dir: where the corpus index keeps its embedding files; default `embeddings/` in the run's directory.
        embedding_dtype: how they are stored (float16 halves the files; search is float32).
        num_workers: loader workers only shuffle query rows; documents and negatives are attached in the main
            process (`on_before_batch_transfer`), as a batch is a slice of a memory map. So 0 is the default,
            and a refreshed negatives table applies from the next batch whatever the number of workers.
        show_progress: progress bars while tokenizing and encoding.
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
        num_negative_queries: int = 0,
        negatives: Literal["bm25", "file", "teacher", "none"] = "bm25",
        bm25_depth: int = 100,
        teacher_scores: str | None = None,
        exclude_from_negatives: Literal["positives", "judged"] = "positives",
        test_qrels: str | None = None,
        dev_split: str = "dev",
        dev_fraction: float = 0.2,
        seed: int = 0,
        sampling_seed: int | None = None,
        duplicate_ids: Literal["error", "keep_first"] = "error",
        cache_dir: str | None = None,
        embedding_dir: str | None = None,
        embedding_dtype: EmbeddingDtype = "float32",
        num_workers: int = 0,
        show_progress: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Under the CLI, hparams come from the config, where a value linked from the model is absent.
        self.hparams["tokenizer"] = tokenizer
        self.epoch = 0  # epoch and batches consumed in it: what a resumed run needs to continue the same way
        self.consumed = 0
        self._resume_consumed = 0
        self.sampler: EpochSampler | None = None
        self.negatives = NegativesTable({})
        self._queries_of_doc: dict[bool, QueriesOfDoc] = {}  # positives only? -> doc row -> query rows
        self._checked_query_pools: NegativesTable | None = None
        self._files: DatasetFiles | None = None
        self._loaded = False  # stores, splits and judgments: set together, only by a `setup` that succeeds
        self._initial_negatives_set = False
        self._empty_because: dict[str, str] = {}  # split -> why it has no queries
        self._corpus_index: CorpusIndex | None = None
        self._teacher_of: tuple[TokenStore | None, dict[int, dict[int, float]]] = (None, {})  # (its corpus, scores)
        self._teacher_warned: NegativesTable | None = None

    # -- locations -------------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        return Path(self.hparams.cache_dir) if self.hparams.cache_dir else default_cache_dir()

    @property
    def files(self) -> DatasetFiles:
        if self._files is None:
            files = self.locate(self.hparams.dataset, self.hparams.data_root, self.cache_dir,
                                download=self.hparams.download)
            if self.hparams.get("test_qrels"):
                files = replace(files, qrels={**files.qrels,
                                              "test": qrels_file(self.hparams.test_qrels, "--data.test_qrels")})
            self._files = files
        return self._files

    @staticmethod
    def locate(dataset: str, data_root: str | None = None, cache_dir: str | Path | None = None,
               download: bool = True) -> DatasetFiles:
        """The files of a data set given as the module's `dataset`, `data_root`, `cache_dir` and `download` are
        (`resolve_dataset`, then `dataset_files`): what `lit-dr fit` checks before it builds anything."""
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        given = Path(dataset).expanduser()
        if is_tuples(given):  # sentence-transformers-style tuples: read as the BEIR set they make
            root = materialize_tuples(given, cache)
            if root not in _TUPLES_REPORTED:  # the preflight and the module both locate the set: say it once
                _TUPLES_REPORTED.add(root)
                log.info("%s: tuples read as the BEIR data set %s (%s)", given, root, describe_tuples(root))
            return dataset_files(root)
        return dataset_files(resolve_dataset(dataset, data_root, cache, download=download))

    def _tokenizer(self):
        from transformers import AutoTokenizer

        if self.hparams.tokenizer is None:
            raise ValueError("RetrievalDataModule needs `tokenizer` (the CLI links it to the model's encoder)")
        from lit_dr.models.encoder import resolve_model_path

        return AutoTokenizer.from_pretrained(resolve_model_path(self.hparams.tokenizer))

    def _store(self, kind: Literal["corpus", "queries"]) -> TokenStore:
        sources = self.files.corpus_sources if kind == "corpus" else list(self.files.queries)
        max_length = self.hparams.doc_max_length if kind == "corpus" else self.hparams.query_max_length
        return cached_store(kind, sources, self._tokenizer(), max_length, self.cache_dir, self.hparams.duplicate_ids,
                            self.hparams.show_progress)

    # -- Lightning hooks -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download and tokenize once per machine (Lightning runs this on local rank 0 only)."""
        self._store("corpus")
        self._store("queries")

    def setup(self, stage: str | None = None) -> None:
        """Load the stores, splits and judgments (once), then what `stage` needs: for fit, a non-empty training
        split and the initial negatives. All or nothing: after a failure, the next call starts over."""
        if not self._loaded:
            self._load()
        if stage == "fit":
            train = self.require_split("train")
            if self.hparams.num_negatives >= len(self.corpus):
                raise ValueError(f"num_negatives={self.hparams.num_negatives} needs a corpus of more documents than "
                                 f"that; {self.files.corpus} has {len(self.corpus)}")
            world = self.trainer.world_size if self.trainer else 1
            if len(train) // world < self.hparams.train_batch_size:
                raise ValueError(
                    f"the training split has {len(train)} queries ({self.files.qrels['train']}, after carving the dev "
                    f"split) for {world} process(es): fewer than train_batch_size={self.hparams.train_batch_size} "
                    "each, so not one full batch (a partial last batch is dropped: in-batch negatives need full "
                    "batches). Lower train_batch_size.")
            if self.hparams.get("teacher_scores") is not None:
                self.teacher()  # a positive without a teacher score fails here, not in the first batch
        if stage in (None, "fit") and len(self.split_rows.get("train", ())):
            if self.hparams.num_negatives > 0 and not self._initial_negatives_set:
                self.set_negatives(self._initial_negatives())
                self._initial_negatives_set = True

    def _qrels_files(self) -> dict[str, Path]:
        """The qrels file of each split, `dev_split`'s under the name `dev` (the split that validates)."""
        qrels = dict(self.files.qrels)
        dev_split = self.hparams.get("dev_split", "dev")
        if dev_split != "dev":
            if dev_split not in qrels:
                raise ValueError(f"--data.dev_split={dev_split}: {self.files.root} has no qrels file of that split "
                                 f"(it has: {', '.join(sorted(qrels)) or 'none'})")
            qrels.pop("dev", None)
            qrels["dev"] = qrels.pop(dev_split)
        return qrels

    def _load(self) -> None:
        self._files = None  # the directory may have been fixed since a failed call
        corpus = self._store("corpus")
        queries = self._store("queries")
        split_rows: dict[str, np.ndarray] = {}
        judgments: dict[str, JudgmentTable] = {}  # split -> query row -> {corpus row: grade}
        empty_because: dict[str, str] = {}
        for split, path in self._qrels_files().items():
            judgments[split], split_rows[split], why = load_qrels(path, corpus, queries)
            if not len(split_rows[split]):
                empty_because[split] = f"{path}: {why}"
        if "dev" not in split_rows and len(split_rows.get("train", ())):
            train_rows = split_rows["train"]
            train_ids, dev_ids = split_dev([str(queries.ids[r]) for r in train_rows],
                                           self.hparams.dev_fraction, self.hparams.seed)
            split_rows["train"], split_rows["dev"] = queries.rows(train_ids), queries.rows(dev_ids)
            judgments["dev"] = judgments["train"].subset(split_rows["dev"])
            if not dev_ids:
                empty_because["dev"] = (f"no qrels/dev file, and dev_fraction {self.hparams.dev_fraction} of "
                                        f"{len(train_rows)} training queries rounds to 0")
            log.info("no qrels/dev.tsv: carved %d dev queries out of %d training queries (fraction %.2f, seed %d)",
                     len(dev_ids), len(train_rows), self.hparams.dev_fraction, self.hparams.seed)
        warn_overlap(split_rows, self._qrels_files())
        # One query may be judged in two splits' files, differently: each split keeps its own judgments;
        # `relevance` (training: positives, negatives to exclude) prefers the training split's.
        relevance = merge([judgments[split] for split in sorted(judgments, key=lambda name: name == "train")])
        # Assigned together, last: a failure above leaves the object as it was.
        self.corpus, self.queries, self.split_rows, self.relevance = corpus, queries, split_rows, relevance
        self.judgments = judgments
        self.positives = relevance.positives()  # query row -> (n,) its relevant corpus rows, in qrels order
        self._empty_because, self._queries_of_doc = empty_because, {}
        self._loaded, self._initial_negatives_set = True, False
        self._corpus_index = None

    def require_split(self, split: str) -> np.ndarray:
        """The query rows of `split`, or an error naming its qrels file and why it has none."""
        if split not in self.split_rows:
            raise ValueError(f"no qrels for split {split!r} in {self.files.root} (have: {sorted(self.split_rows)})")
        if not len(self.split_rows[split]):
            raise ValueError(f"split {split!r} has no queries with a relevant judged document: "
                             f"{self._empty_because.get(split, 'none')}")
        return self.split_rows[split]

    def _initial_negatives(self) -> NegativesTable:
        train = self.split_rows["train"]
        if self.hparams.negatives == "none":
            return NegativesTable({})
        if self.hparams.negatives == "file":
            return self._file_negatives(train)
        if self.hparams.negatives == "teacher":
            return self._teacher_negatives(train)
        return self._bm25_negatives(train)

    # -- teacher scores (distillation): loaded on first use, checked at setup -----------------------------
    @property
    def teacher_scores_path(self) -> Path | None:
        path = self.hparams.get("teacher_scores")
        return None if path is None else self.files.root / Path(path).expanduser()  # an absolute path stays

    def teacher(self) -> dict[int, dict[int, float]]:
        """{query row: {corpus row: teacher score}} of `teacher_scores`; every training positive has one."""
        path = self.teacher_scores_path
        if path is None:
            raise ValueError("no teacher scores: set RetrievalDataModule(teacher_scores=...) (negatives='teacher' "
                             "and MarginMSE need them)")
        if self._teacher_of[0] is not self.corpus:  # once per loaded data set
            from lit_dr.data.teacher_scores import load_teacher_scores

            if problem := file_problem(path):
                raise FileNotFoundError(f"teacher_scores: {path.parent}: {problem}")
            table = load_teacher_scores(path, self.corpus, self.queries)
            train = self.split_rows.get("train", np.empty(0, dtype=np.int64)).tolist()
            missing = [(q, d) for q in train for d in self.positives[q].tolist() if d not in table.get(q, {})]
            if missing:
                qid, did = (str(self.queries.ids[missing[0][0]]), str(self.corpus.ids[missing[0][1]]))
                raise ValueError(f"{path}: {len(missing)} positives of training queries have no teacher score, e.g. "
                                 f"query {qid!r} document {did!r}; the teacher must score every judged positive "
                                 "(benchmarks/teacher_scores.py does)")
            self._teacher_of = (self.corpus, table)
        return self._teacher_of[1]

    def _teacher_negatives(self, train: np.ndarray) -> NegativesTable:
        """Each query's teacher-scored documents, best first, minus `excluded_docs` (as BM25's ranking is)."""
        from lit_dr.mining.miners import Ranking, UniformMiner

        table = self.teacher()
        scored = [sorted(table.get(int(q), {}).items(), key=lambda x: -x[1]) for q in train]
        depth = max(map(len, scored), default=0)
        ranked = np.full((len(train), depth), -1, dtype=np.int64)  # (Q, depth), -1: no more scored documents
        scores = np.full((len(train), depth), -np.inf, dtype=np.float32)
        for i, docs in enumerate(scored):
            ranked[i, :len(docs)], scores[i, :len(docs)] = [d for d, _ in docs], [s for _, s in docs]
        # As BM25's table: every usable row, in the teacher's order (num=None); batches draw from it.
        mined = UniformMiner()(Ranking(train, ranked, scores), self.excluded_docs(train),
                               [self.positives[int(q)] for q in train], num=None)
        return NegativesTable(mined.candidates,
                              source=f"teacher {self.teacher_scores_path}")

    def _teacher_feature(self, query_rows: np.ndarray, doc_rows: np.ndarray) -> torch.Tensor:
        """(B * G,) float32: the teacher's score of each document for its group's query, NaN where unscored."""
        table, g = self.teacher(), len(doc_rows) // len(query_rows)
        scores = np.array([table.get(int(q), {}).get(int(d), np.nan)
                           for q, d in zip(np.repeat(query_rows, g), doc_rows, strict=True)], dtype=np.float32)
        missing = int(np.isnan(scores).sum())
        if missing and self._teacher_warned is not self.negatives:
            self._teacher_warned = self.negatives
            log.warning("%d of the %d documents of a batch have no teacher score in %s (random top-ups, or negatives "
                        "of %s the teacher did not score): NaN, and the loss leaves their pairs out (warned once per "
                        "negatives table)", missing, len(scores), self.teacher_scores_path,
                        self.negatives.source or "an empty table")
        return torch.from_numpy(scores)

    def _file_negatives(self, train: np.ndarray) -> NegativesTable:
        files = self.files
        looked_for = files.root / NEGATIVES_FILE[files.format]
        if files.negatives is None:
            raise FileNotFoundError(f"negatives='file' but {files.root} has no negatives file "
                                    f"(looked for {looked_for.name})")
        if problem := file_problem(files.negatives):
            raise FileNotFoundError(f"negatives='file': {files.root}: {problem}")
        return given_negatives(files.negatives, self.corpus, self.queries, train, self.excluded_docs(train))

    def _bm25_negatives(self, train: np.ndarray) -> NegativesTable:
        """BM25 over exactly the stored corpus rows, in store order, so its row numbers are the store's."""
        from lit_dr.mining.bm25 import bm25_search
        from lit_dr.mining.miners import Ranking, UniformMiner

        depth = self.hparams.bm25_depth
        # The corpus as a lazy sequence: with the BM25 index cached, its texts are only streamed through the key.
        scores, ranked = bm25_search(self.corpus.text_sequence(), list(self.queries.texts(train.tolist())), k=depth,
                                     cache_dir=self.cache_dir / "bm25", show_progress=self.hparams.show_progress)
        # The table keeps every usable row, in rank order (num=None); batches draw from it.
        mined = UniformMiner()(Ranking(train, ranked, scores), self.excluded_docs(train),
                               [self.positives[int(q)] for q in train], num=None)
        return NegativesTable(mined.candidates, source=f"bm25@{depth}")

    # -- the corpus index: embeddings, FAISS and search (`lit_dr.index.CorpusIndex`) ------------------------
    @property
    def corpus_index(self) -> CorpusIndex:
        """The corpus's embeddings on disk and search over them, held here for evaluation, the refresh and LTRe;
        its process and encoding settings follow the trainer (its device, precision and rank)."""
        if self._corpus_index is None:
            self._corpus_index = self.text_index(self.corpus)
        self._corpus_index.procs, self._corpus_index.encoding = self.processes(), self.encoding()
        return self._corpus_index

    def text_index(self, store: TokenStore, rows: np.ndarray | None = None) -> CorpusIndex:
        """A new index over `store` rows in the embedding directory (DANCE's refresh indexes the training queries)."""
        return CorpusIndex(store, self.embedding_root, rows, self.hparams.embedding_dtype, self.processes(),
                           self.encoding())

    def embedding_root(self) -> Path:
        """`embedding_dir`, else `embeddings/` in the run directory (the same on every process: collective)."""
        given = self.hparams.get("embedding_dir")
        return Path(given) if given else shared_run_directory(self.trainer) / "embeddings"

    def processes(self) -> Processes:
        """This process's rank, device and collectives, from the trainer (one CPU process without one)."""
        trainer = self.trainer
        if trainer is None:
            return Processes()
        world, strategy = trainer.world_size, trainer.strategy
        return Processes(rank=trainer.global_rank, world_size=world, device=strategy.root_device,
                         all_gather=strategy.all_gather if world > 1 else None, barrier=strategy.barrier)

    def encoding(self) -> Encoding:
        trainer = self.trainer
        if trainer is None:
            return Encoding(self.hparams.eval_batch_size)
        return Encoding(self.hparams.eval_batch_size, autocast_factory(trainer.precision_plugin,
                                                                       trainer.strategy.root_device),
                        show_progress=trainer.global_rank == 0 and trainer.progress_bar_callback is not None)

    def write_split(self, split: str, directory: str | Path) -> Path:
        """`split`'s queries and judgments (grade 0 included) as BEIR files under `directory`
        (`lit_dr.data.split_files`), with where they came from: a carved dev split can then be scored again."""
        from lit_dr.data.split_files import write_split

        rows = self.require_split(split)
        ids = self.query_ids(rows)
        judged = self.judgments.get(split, {})
        judgments = {qid: {str(self.corpus.ids[d]): int(g) for d, g in judged.get(int(r), {}).items()}
                     for qid, r in zip(ids, rows.tolist(), strict=True)}
        qrels = self._qrels_files()
        carved = split == "dev" and "dev" not in qrels
        about = {"split": split, "queries": len(ids), "dataset": str(self.files.root),
                 "source": str(qrels["train" if carved else split]), "carved_from_train": carved,
                 **({"dev_fraction": self.hparams.dev_fraction, "seed": self.hparams.seed} if carved else {})}
        return write_split(directory, zip(ids, self.queries.texts(rows.tolist()), strict=True), judgments, about)

    def query_ids(self, rows) -> list[str]:
        return [str(self.queries.ids[int(r)]) for r in rows]

    # -- state the callbacks and modules use --------------------------------------------------------
    def set_negatives(self, table: NegativesTable) -> None:
        self.negatives = table

    def excluded_docs(self, query_rows) -> list[set[int]]:
        """Per query row, the corpus rows that may not be its negatives (`exclude_from_negatives`): its positives
        (grade > 0), or every document judged for it. Every consumer asks here: BM25 and file negatives, the
        random top-up, the refresh and the in-batch mask (`TrainBatch.excluded`, across processes too)."""
        option = self.hparams.exclude_from_negatives
        if option == "judged":
            # From a dict, as before: CPython sizes a set built from a dict differently, so its iteration order
            # (not its members) would otherwise change.
            return [set(dict.fromkeys(self.relevance.docs_of(int(q)).tolist())) for q in query_rows]
        if option == "positives":
            empty = np.empty(0, dtype=np.int64)
            return [set(self.positives.get(int(q), empty).tolist()) for q in query_rows]
        raise ValueError(f"exclude_from_negatives={option!r}: expected 'positives' or 'judged'")

    def relevance_for(self, query_rows: np.ndarray, split: str | None = None) -> list[dict[int, int]]:
        """{corpus row: grade} per query row, as judged in `split`'s qrels; a query that file does not judge (or
        split None) gets the training split's judgments first, then any other split's."""
        judged = {} if split is None else self.judgments.get(split, {})
        return [judged.get(int(q)) or self.relevance.get(int(q), {}) for q in query_rows]

    # -- training batches: the loader yields query rows; documents are attached when the batch is used ----
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Turn a tensor of training query rows into a `TrainBatch`.

        This runs in the main process when the training loop takes the batch (after Lightning's prefetch), so a
        negatives table handed over by a refresh applies to the very next batch, and dataloader workers never
        hold a copy of the table.
        """
        if not isinstance(batch, torch.Tensor):
            return batch
        if self.sampler is not None and self.sampler.epoch != self.epoch:
            self.epoch, self.consumed = self.sampler.epoch, 0
        self.consumed += 1
        return self.train_batch(batch.numpy())

    def train_batch(self, query_rows: np.ndarray) -> TrainBatch:
        """Each query with one positive and `num_negatives` negatives, drawn by a generator seeded with
        (seed, epoch, table version, query row): reproducible, and resumable without saved random state."""
        h, k = self.hparams.num_negatives, self.hparams.num_negative_queries
        if k:
            self._warn_short_query_pools(k)
        docs, neg_queries = [], []
        excluded = self.excluded_docs(query_rows)
        for q, exclude in zip(query_rows.tolist(), excluded, strict=True):
            rng = np.random.default_rng([self.sampling_seed, self.epoch, self.negatives.version, q])
            positive = int(rng.choice(self.positives[q]))
            docs += [positive, *draw_rows(rng, self.negatives.candidates.get(q), h, len(self.corpus), exclude)]
            if k:
                pool = (self.negatives.query_candidates or {}).get(positive)
                neg_queries += draw_rows(rng, pool, k, self.split_rows["train"], self.excluded_queries(positive))
        doc_rows = np.asarray(docs, dtype=np.int64)  # (B * G,)
        mask = torch.from_numpy(excluded_mask(excluded, doc_rows))  # (B, B * G)
        features = {} if self.teacher_scores_path is None else {"teacher_score": self._teacher_feature(query_rows,
                                                                                                      doc_rows)}
        return TrainBatch(
            queries=self.queries.batch(query_rows),
            docs=self.corpus.batch(doc_rows),
            query_rows=torch.from_numpy(query_rows),
            doc_rows=torch.from_numpy(doc_rows),
            excluded=mask,
            negative_queries=self.queries.batch(np.asarray(neg_queries, dtype=np.int64)) if k else None,
            doc_features=features,
        )

    @property
    def sampling_seed(self) -> int:
        s = self.hparams.sampling_seed
        return self.hparams.seed if s is None else s

    def relevant_queries(self, doc_row: int) -> set[int]:
        """Query rows for which `doc_row` is judged relevant (grade > 0), in any split."""
        return self._queries_judging(doc_row, positives_only=True)

    def excluded_queries(self, doc_row: int) -> set[int]:
        """Query rows that may not be negative queries of `doc_row` (DANCE), by `exclude_from_negatives`: those
        it is relevant to, or every query that judged it."""
        return self._queries_judging(doc_row, positives_only=self.hparams.exclude_from_negatives == "positives")

    def _queries_judging(self, doc_row: int, positives_only: bool) -> set[int]:
        if positives_only not in self._queries_of_doc:
            self._queries_of_doc[positives_only] = self.relevance.queries_of_docs(positives_only)
        return self._queries_of_doc[positives_only].get(doc_row)  # a new set, in the judgments' order

    def _warn_short_query_pools(self, k: int) -> None:
        """Once per negatives table: how many positive documents of the training queries have fewer than `k`
        mined negative queries, so that some of theirs are random training queries."""
        if self._checked_query_pools is self.negatives:
            return
        self._checked_query_pools = self.negatives
        train = self.split_rows["train"]
        docs = {int(d) for q in train.tolist() for d in self.positives[q]}
        mined = self.negatives.query_candidates
        if mined is None:
            log.warning("num_negative_queries=%d but the negatives table (%s) has no mined negative queries (no "
                        "NegativeRefresh with mine_queries=True yet): the negative queries of all %d positive "
                        "documents are drawn at random from the %d training queries", k,
                        self.negatives.source or "empty", len(docs), len(train))
            return
        short = sum(len(mined.get(d, ())) < k for d in docs)
        if short:
            log.warning("%d of %d positive documents have fewer than num_negative_queries=%d mined negative queries "
                        "in the negatives table (%s): topped up with random training queries", short, len(docs), k,
                        self.negatives.source)

    def train_dataloader(self) -> DataLoader:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        skip = self._resume_consumed * self.hparams.train_batch_size
        self._resume_consumed = 0
        self.sampler = EpochSampler(len(self.require_split("train")), self.sampling_seed, world, rank, skip, self.epoch)
        return DataLoader(
            self.split_rows["train"].tolist(),
            batch_size=self.hparams.train_batch_size,
            sampler=self.sampler,
            drop_last=True,  # in-batch negatives: a short last batch would change the loss
            collate_fn=_as_rows,
            num_workers=self.hparams.num_workers,
            # Its own generator: otherwise each new iterator draws a seed from the global one, which shifts
            # dropout's random stream between an uninterrupted and a resumed run.
            generator=torch.Generator().manual_seed(self.sampling_seed),
        )

    def collate_encode(self, rows: list[int]) -> EncodeBatch:
        rows = np.asarray(rows, dtype=np.int64)
        return EncodeBatch(tokens=self.queries.batch(rows), rows=torch.from_numpy(rows))

    def query_dataloader(self, split: str) -> DataLoader:
        rows = self.require_split(split).tolist()
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return DataLoader(
            rows,
            batch_size=self.hparams.eval_batch_size,
            sampler=QueryShardSampler(len(rows), world, rank),
            collate_fn=self.collate_encode,
        )

    def val_dataloader(self) -> DataLoader:
        return self.query_dataloader("dev")

    def test_dataloader(self) -> DataLoader:
        return self.query_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.query_dataloader("test" if "test" in self.split_rows else "dev")

    def state_dict(self) -> dict:
        # Saved in every checkpoint; the table itself is restored by whoever made it (BM25: `setup`; a refresh
        # callback: its own state).
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = state["epoch"], state["consumed"]
        self._resume_consumed = state["consumed"]
