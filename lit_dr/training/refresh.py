"""Hard negatives refreshed from the model's own index during training (ANCE's "inferencer", in-process)."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lit_dr.data.sampling import NegativesTable
from lit_dr.files import shared_run_directory
from lit_dr.index.faiss_index import check_search_params, fit_nlist
from lit_dr.index.search import even_share
from lit_dr.mining.miners import Miner, Ranking, UniformMiner, lowest_positive_scores
from lit_dr.mining.tables import chunk_partition, load_table, merge_tables, overlap, save_table, table_digest

log = logging.getLogger(__name__)


class NegativeRefresh(L.Callback):
    """Every `every_n_steps` optimizer steps (and, optionally, before the first): encode the corpus and the
    training queries with the current model, index the corpus with FAISS, retrieve the top `depth` per query,
    let `miner` pick `num_negatives` among the documents the data module does not exclude (`excluded_docs`:
    positives, or all judged), and hand the new, versioned table to the data module, which uses it from the next
    batch on.

    With `mine_queries` (DANCE) it also indexes the training queries and draws `num_negative_queries` negative
    queries for each positive document from its top `query_depth` training queries, dropping `excluded_queries`,
    with the same miner (a document's positive score: its lowest with the training queries it is relevant to).
    The figures `positive_in_depth` / `positive_mean_rank` count positives (grade > 0) only.

    With `query_chunks` K > 1 a refresh mines only a K-th of the training queries: they are split once into K
    chunks (`tables.chunk_partition`, seeded by `seed`), refresh g mines chunk (g - 1) % K, and every other query
    keeps its negatives from its last refresh, or from the table the fit started with (BM25's) before its first
    (`tables.merge_tables`); the table written is the full merged one. The corpus is still encoded in full at
    every refresh; query encoding and search scale by 1/K; a query's negatives are up to K refreshes old. This is
    ANCE's released code's `ann_chunk_factor` (default 5 there: a fifth of the queries per ANN data generation);
    ANCE's inferencer runs asynchronously beside the trainer, lit_dr's refresh synchronously, so chunk (g - 1) % K
    is always mined with the weights of the refresh's own step. With `mine_queries` all training queries are
    encoded (they are DANCE's query index), but only the chunk's queries search the corpus, and negative queries
    are mined only for their positive documents (merged the same way).

    Under DDP every process encodes its share of the corpus and of the queries to disk, searches the whole corpus
    for its own queries, and the rankings are gathered; every process then draws the same (the draw is seeded by
    seed, generation and row), so all hold the same table.
    State in the checkpoint: generation, step of the last refresh, table file and digest. A resumed run reloads
    the table; a refresh whose table file was already written before a crash is loaded, not recomputed. (The
    global random generators, for an exact resume, are `lit_dr.objectives.random_state.RandomState`'s.)

    Args:
        every_n_steps: optimizer steps between refreshes (ANCE: 10k; a checkpoint per refresh is not needed).
        before_first_step: mine once before training starts (ANCE starts from its warm start's negatives).
        depth: documents retrieved per training query, the ranking the negatives are drawn from (ANCE: 200).
        num_negatives: negatives drawn per query into the table (ANCE: 20).
        miner: how the negatives are drawn from the ranking (`lit_dr.mining.miners`); None: `UniformMiner()`,
            ANCE's uniform draw from rank 0. `PositiveAwareMiner` drops candidates scoring too close to the positive.
        skip: deprecated, `UniformMiner(skip=...)`; only for configs saved before `miner` existed.
        index_factory: the FAISS index to mine with ("Flat" is exact, as ANCE's code). Where it runs follows the
            model's device, as for evaluation (`lit_dr.index.search.search_backend`). DANCE's query index (over the
            training queries) is of the same factory, its IVF lists capped for a small query set
            (`faiss_index.fit_nlist`).
        search_params: FAISS search parameters of a non-exact `index_factory` ({nprobe: 64}, {efSearch: 128}),
            for the corpus and the query index alike; recorded in `refreshes.jsonl`.
        mine_queries: also mine negative queries for each positive document (DANCE's dual loss).
        query_depth: with `mine_queries`, training queries retrieved per positive document.
        num_negative_queries: with `mine_queries`, negative queries drawn per positive document.
        query_chunks: K, the refresh mines a K-th of the training queries in turn (ANCE's `ann_chunk_factor`);
            1 (default): all of them at every refresh. At most the number of training queries.
        table_dir: where tables go; default `negatives/` in the run's directory.
        seed: seeds the draws (with the generation and the row), so every process draws the same table.
        timeout_s: how long a process waits for the others at the start of a refresh before failing.
    """

    def __init__(
        self,
        every_n_steps: int = 10_000,
        before_first_step: bool = True,
        depth: int = 200,
        num_negatives: int = 20,
        miner: Miner | None = None,
        skip: int | None = None,
        index_factory: str = "Flat",
        search_params: dict[str, int | float] | None = None,
        mine_queries: bool = False,
        query_depth: int = 200,
        num_negative_queries: int = 20,
        query_chunks: int = 1,
        table_dir: str | None = None,
        seed: int = 0,
        timeout_s: float = 1800.0,
    ) -> None:
        self.every_n_steps = every_n_steps
        self.before_first_step = before_first_step
        self.depth, self.num_negatives = depth, num_negatives
        if skip:  # a saved config of an older version names skip: 0; anything else meant the uniform draw's window
            if miner is not None:
                raise ValueError(f"NegativeRefresh: skip={skip} is deprecated and ignored with a miner; set the "
                                 "miner's own skip instead")
            log.warning("NegativeRefresh(skip=%d) is deprecated: use miner=UniformMiner(skip=%d)", skip, skip)
            miner = UniformMiner(skip=skip)
        self.miner = miner if miner is not None else UniformMiner()
        check_search_params(index_factory, search_params)
        self.index_factory, self.search_params = index_factory, search_params
        self.mine_queries, self.query_depth, self.num_negative_queries = mine_queries, query_depth, num_negative_queries
        if query_chunks < 1:
            raise ValueError(f"NegativeRefresh(query_chunks={query_chunks}): expected >= 1 (1: every training "
                             "query at every refresh)")
        self.query_chunks = query_chunks
        self.table_dir = table_dir
        self.seed, self.timeout_s = seed, timeout_s
        self.generation = 0
        self.last_step: int | None = None
        self.table_path: str | None = None
        self.table_digest: str | None = None
        self.history: list[dict[str, float]] = []
        self.resumed = False

    # -- checkpointed state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generation": self.generation, "last_step": self.last_step, "table_path": self.table_path,
                "table_digest": self.table_digest, "table_dir": self.table_dir}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        state.pop("rng", None)  # an older checkpoint's generators: `RandomState.on_load_checkpoint` reads them
        self.__dict__.update(state)
        self.resumed = True

    # -- hooks -------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.table_dir is None:
            self.table_dir = str(shared_run_directory(trainer) / "negatives")
        num_train = len(trainer.datamodule.split_rows["train"])
        if self.query_chunks > num_train:
            raise ValueError(f"NegativeRefresh(query_chunks={self.query_chunks}): the training split has only "
                             f"{num_train} queries; expected 1 <= query_chunks <= {num_train}")
        if self.table_path is not None:  # resumed: the table this run was using
            self._install(trainer, *self._load(Path(self.table_path)))
        elif self.before_first_step and self.generation == 0:
            self.refresh(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        # Counted in optimizer steps: with gradient accumulation several micro-batches share one step.
        if step > 0 and step != self.last_step and step % self.every_n_steps == 0 and not self._finished(trainer):
            self.refresh(trainer, pl_module)

    @staticmethod
    def _finished(trainer) -> bool:
        """True after the last optimizer step of the fit: a table mined then would never be used."""
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            return True
        # max_epochs -1 (or None, which Lightning makes -1 when max_steps is set) means no epoch limit.
        epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
        return bool(trainer.is_last_batch and epochs > 0 and trainer.current_epoch >= epochs - 1)

    # -- the refresh -------------------------------------------------------------------------------------
    def refresh(self, trainer: L.Trainer, pl_module) -> NegativesTable:
        step, generation = trainer.global_step, self.generation + 1
        path = Path(self.table_dir) / f"negatives-g{generation:04d}-step{step:07d}.npz"
        # Decided before the barrier, so no process can see a file that another wrote after it: all agree.
        finished_before_crash = self.resumed and path.exists()
        self._wait_for_all(trainer, generation, step)
        if finished_before_crash:  # same weights at the same step give the same table: load, don't recompute
            log.info("refresh %d at step %d: reusing %s", generation, step, path)
            candidates, query_candidates = self._load(path, check=False)
            stats = {"reused": 1.0}
        else:
            try:
                candidates, query_candidates, stats = self._mine(trainer, pl_module, generation)
            except Exception as e:
                raise RuntimeError(f"negative refresh {generation} at step {step} failed on rank "
                                   f"{trainer.global_rank}: {e}") from e
            if trainer.is_global_zero:
                save_table(path, candidates, query_candidates)
        previous = trainer.datamodule.negatives.candidates
        chunk, rows = self._chunk(trainer.datamodule, generation)
        renewed = candidates if self.query_chunks == 1 else {int(q): candidates[int(q)] for q in rows}
        stats["overlap_with_previous"] = overlap(previous, renewed)  # over the rows this refresh mined
        stats.update(query_chunks=float(self.query_chunks), chunk=float(chunk), queries_mined=float(len(rows)))
        stats["steps_since_previous"] = float(step - (self.last_step or 0))
        self.generation, self.last_step, self.table_path = generation, step, str(path)
        self.table_digest = table_digest(candidates, query_candidates)
        self._install(trainer, candidates, query_candidates)
        self._report(trainer, step, generation, stats)
        return trainer.datamodule.negatives

    def _chunk(self, dm, generation: int) -> tuple[int, np.ndarray]:
        """The chunk refresh `generation` mines ((generation - 1) % query_chunks) and its training query rows."""
        train = dm.split_rows["train"]
        if self.query_chunks == 1:
            return 0, train
        chunk = (generation - 1) % self.query_chunks
        return chunk, train[chunk_partition(len(train), self.query_chunks, self.seed)[chunk]]

    def _mine(self, trainer, pl_module, generation: int):
        dm = trainer.datamodule
        train = dm.split_rows["train"]
        _, rows = self._chunk(dm, generation)  # the training queries mined now: all when query_chunks is 1
        # DANCE's query index needs every training query: then all are encoded, and the chunk's taken by position.
        positions = np.flatnonzero(np.isin(train, rows)) if self.mine_queries and self.query_chunks > 1 else None
        encoded = rows if positions is None else train
        times: dict[str, float] = {}

        @contextmanager
        def phase(name):
            start = time.perf_counter()
            yield
            times[f"time_{name}_s"] = time.perf_counter() - start

        # Embeddings go to disk, each process writing its share (the data module's corpus index; a validation at
        # the same step reuses them); each process then searches the whole corpus for the training queries it
        # encoded itself, and the rankings are gathered. The towers are the module's, as plain callables.
        query_tower, doc_tower = pl_module.towers()
        corpus = dm.corpus_index
        with phase("encode_corpus"):
            corpus.embed(doc_tower, f"corpus-step{trainer.global_step:07d}", version=trainer.global_step)  # (N, H)
        with phase("encode_queries"):
            queries = dm.text_index(dm.queries, encoded)  # (Q, H) on disk, row i = encoded[i]
            queries.embed(query_tower, f"train-queries-g{generation:04d}")
        with phase("search"):
            if positions is None:
                mine = queries.embeddings.shard(trainer.global_rank)  # (Q_r, H): this process's queries
                scores, ranked = corpus.search(mine, self.depth, self.index_factory, self.search_params,
                                               share=False)  # (Q, depth), every process's
            else:  # the chunk's queries, scattered over the shards: each process searches its even share
                scores, ranked = corpus.search(queries.embeddings.take(positions), self.depth, self.index_factory,
                                               self.search_params, share=True)  # (Q_chunk, depth)
        with phase("sample"):
            relevant_docs = [dm.positives[q] for q in rows]
            positive_scores = self._positive_scores(queries.embeddings, corpus.embeddings, relevant_docs,
                                                    key_rows=positions)  # (Q_chunk,)
            mined = self.miner(Ranking(rows, ranked, scores, positive_scores), dm.excluded_docs(rows),
                               relevant_docs, self.num_negatives, self.seed, generation)
        query_candidates = None
        if self.mine_queries:
            with phase("mine_queries"):
                positives = np.array(sorted({int(p) for q in rows for p in dm.positives[q]}), dtype=np.int64)
                share = positives[even_share(len(positives), trainer.global_rank, trainer.world_size)]
                query_factory = fit_nlist(self.index_factory, len(train))  # the refresh's index, over the queries
                near_scores, near = queries.search(corpus.embeddings.take(share), self.query_depth, query_factory,
                                                   self.search_params, share=False)  # (P, query_depth) query rows
                relevant = [dm.relevant_queries(d) for d in positives]
                positive_scores = None
                if self.miner.needs_positive_scores:  # a document's positives: the training queries it is relevant to
                    position = {int(q): i for i, q in enumerate(train)}
                    positions = [[position[q] for q in rel if q in position] for rel in relevant]  # in `queries`
                    positive_scores = self._positive_scores(corpus.embeddings, queries.embeddings, positions,
                                                            key_rows=positives)
                query_mined = self.miner(Ranking(positives, near, near_scores, positive_scores),
                                         [dm.excluded_queries(d) for d in positives], relevant,
                                         self.num_negative_queries, self.seed, generation)
                query_candidates = query_mined.candidates
                mined.stats.update({f"queries_{k}": v for k, v in query_mined.stats.items()})
                mined.stats["documents_mined"] = float(len(positives))
        queries.remove()  # every process is past the searches' gathers
        times["time_total_s"] = sum(times.values())
        candidates = mined.candidates
        if self.query_chunks > 1:  # the other chunks keep their last negatives
            candidates = merge_tables(dm.negatives.candidates, candidates)
            if query_candidates is not None:
                query_candidates = merge_tables(dm.negatives.query_candidates, query_candidates)
        return candidates, query_candidates, {**mined.stats, **times}

    def _positive_scores(self, keys, candidates, positives, key_rows=None) -> np.ndarray | None:
        """(K,) the lowest dot product (float32) of each key with its positives (`candidates` rows; for key i,
        `positives[i]`), if the miner needs them. `keys` are the K keys' embeddings, or, with `key_rows`, the
        embeddings those rows are taken from. In blocks, so a large training set is never held at once."""
        if not self.miner.needs_positive_scores:
            return None
        num = len(positives) if key_rows is None else len(key_rows)
        out = np.full(num, np.nan, dtype=np.float32)
        block = 65_536
        for start in range(0, num, block):
            stop = min(num, start + block)
            rows = np.arange(start, stop) if key_rows is None else np.asarray(key_rows[start:stop])
            owner = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(positives[start:stop])])
            flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in positives[start:stop]])
            out[start:stop] = lowest_positive_scores(keys.take(rows), candidates.take(flat), owner, stop - start)
        return out

    # -- helpers -------------------------------------------------------------------------------------------
    def _install(self, trainer, candidates, query_candidates) -> None:
        trainer.datamodule.set_negatives(NegativesTable(candidates, version=self.generation,
                                                        source=f"refresh {self.generation}",
                                                        query_candidates=query_candidates))

    def _load(self, path: Path, check: bool = True):
        if not path.exists():
            raise FileNotFoundError(f"negatives table {path} from the checkpoint is missing: it was written "
                                    f"at refresh {self.generation}; restore the run directory or start afresh")
        candidates, query_candidates = load_table(path)
        if check and table_digest(candidates, query_candidates) != self.table_digest:
            raise ValueError(f"negatives table {path} does not match the checkpoint's digest")
        return candidates, query_candidates

    def _wait_for_all(self, trainer, generation: int, step: int) -> None:
        """Fail loudly, naming the missing ranks, if a process does not reach the refresh in time."""
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return
        timeout = timedelta(seconds=self.timeout_s)
        try:
            if torch.distributed.get_backend() == "gloo":
                torch.distributed.monitored_barrier(timeout=timeout, wait_all_ranks=True)
            else:  # NCCL: bounded by the process group's timeout (the strategy's `timeout`)
                torch.distributed.barrier()
        except RuntimeError as e:
            raise RuntimeError(f"negative refresh {generation} at step {step}: rank {trainer.global_rank} "
                               f"waited {self.timeout_s:.0f} s for the other processes: {e}") from e

    def _report(self, trainer, step: int, generation: int, stats: dict[str, float]) -> None:
        record = {"generation": generation, "step": step, **stats}
        self.history.append(record)
        if not trainer.is_global_zero:
            return
        log.info("refresh %d at step %d: %s", generation, step,
                 ", ".join(f"{k}={v:.3g}" for k, v in stats.items()))
        for logger in trainer.loggers:
            logger.log_metrics({f"refresh/{k}": v for k, v in record.items()}, step=step)
        with open(Path(self.table_dir) / "refreshes.jsonl", "a") as f:
            f.write(json.dumps({**record, "digest": self.table_digest, "index_factory": self.index_factory,
                                "search_params": self.search_params, "miner": self.miner.config()}) + "\n")
