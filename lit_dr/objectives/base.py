"""The base of every objective: owns the towers, encoding, optimizer wiring and full-corpus evaluation."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lit_dr.data.batches import EncodeBatch, TokenBatch, TrainBatch
from lit_dr.index.embeddings import EmbeddingDtype, EmbeddingShards
from lit_dr.models.encoder import Encoder
from lit_dr.index.encoding import AutocastFactory, autocast_factory, encode_to_shards
from lit_dr.index.faiss_index import check_search_params
from lit_dr.models.large_batch import gather_keep_local, gather_train_batch, grad_cached_loss
from lit_dr.files import run_directory, shared_run_directory
from lit_dr.index.search import Processes, even_share, gather_rows, search_embeddings

log = logging.getLogger(__name__)

_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def trained_class(checkpoint_path) -> type | None:
    """The LightningModule class a checkpoint was saved from, when it says so (the CLI's record or lit_dr's) and
    its module is already imported (as Lightning, a checkpoint never makes us import code)."""
    import sys

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
    path = checkpoint.get("hyper_parameters", {}).get("_class_path") or checkpoint.get("lit_dr", {}).get("class_path")
    module, _, name = (path or "").rpartition(".")
    if module.startswith(("lit_dr.modules", "lit_dr.callbacks")):  # written before the package had layers
        module = "lit_dr"
    return getattr(sys.modules.get(module), name, None) if module else None


@dataclass
class Retrieval:
    query_rows: np.ndarray  # (Q,) rows in the query store
    queries: Tensor  # (Q, H)
    docs: EmbeddingShards  # (N, H) the whole corpus, on disk
    scores: np.ndarray  # (Q, k)
    ranked: np.ndarray  # (Q, k) corpus rows, best first


class BiEncoderModule(L.LightningModule):
    """A bi-encoder: queries and documents embedded by one shared tower, or two when `doc_encoder` is given.

    An objective subclasses this and overrides `compute_loss`. Validation and test encode the whole corpus,
    search it with FAISS and report nDCG@10, MRR@10, Recall@100 and Recall@1000, writing a TREC run file.

    Args:
        encoder: the query tower (and the document tower when `doc_encoder` is None).
        doc_encoder: a separate document tower (asymmetric bi-encoder), or None to share `encoder`.
        optimizer / scheduler: injected factories (`OptimizerCallable`, `LRSchedulerCallable`); the scheduler
            steps every optimizer step.
        index_factory: FAISS factory string for evaluation ("Flat" is exact search). Where search runs follows
            the model's device (`lit_dr.index.search.search_backend`): GPU training searches on the GPU.
        search_params: FAISS search parameters of a non-exact `index_factory`, e.g. {nprobe: 64} for IVF or
            {efSearch: 128} for HNSW (FAISS's default nprobe is 1: one list of an IVF4096). Applied on the CPU
            and GPU index alike, recorded in `evaluations.jsonl`; a name the index does not have is an error here.
        eval_depth: documents retrieved per query (the run file holds this many).
        run_dir: where TREC run files go; default `runs/` in the run's directory (beside its checkpoints).
        init_checkpoint: a Lightning checkpoint whose towers' weights initialise this module (warm start), read
            once, when a trainer first runs a module that was not restored from a checkpoint (`apply_warm_start`):
            never by `load_from_checkpoint` or a resume, so a checkpoint of this module stands alone.
        embedding_dtype: how corpus embeddings are stored on disk (float16 halves the files; search is float32).
        embedding_dir: where embedding files go; default `embeddings/` in the run's directory.
        cross_device_negatives: under DDP, every process's documents (and queries) are negatives of every
            query: the loss is that of the global batch, with the exact gradient (`lit_dr.models.large_batch`).
        grad_cache_chunk_size: embed the batch this many texts at a time (gradient caching): memory of one chunk's
            activations, a second forward pass per step, the exact gradient. None embeds the batch at once.
    """

    def __init__(
        self,
        encoder: Encoder,
        doc_encoder: Encoder | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        index_factory: str = "Flat",
        search_params: dict[str, int | float] | None = None,
        eval_depth: int = 1000,
        run_dir: str | None = None,
        init_checkpoint: str | None = None,
        embedding_dtype: EmbeddingDtype = "float32",
        embedding_dir: str | None = None,
        cross_device_negatives: bool = False,
        grad_cache_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if grad_cache_chunk_size is not None and grad_cache_chunk_size < 1:
            raise ValueError(f"grad_cache_chunk_size must be at least 1 (or None), got {grad_cache_chunk_size}")
        check_search_params(index_factory, search_params)
        self.save_hyperparameters(ignore=["encoder", "doc_encoder"])
        if "_instantiator" not in self.hparams:
            # Built from Python rather than the CLI: keep only what a config can say, so that
            # `load_from_checkpoint` rebuilds the module the same way in both cases.
            for name in ("optimizer", "scheduler"):
                self.hparams.pop(name, None)
            self.hparams["_instantiator"] = _INSTANTIATOR
        self.hparams["encoder"] = encoder.init_config
        self.hparams["doc_encoder"] = None if doc_encoder is None else doc_encoder.init_config
        self.encoder = encoder
        self.doc_encoder = doc_encoder
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._eval_outputs: list[tuple[Tensor, Tensor]] = []
        self._corpus_cache: tuple[int, EmbeddingShards] | None = None  # (global step, its corpus embeddings)
        self._embedding_root: Path | None = None
        self._warm_started = False  # the warm start was applied, or the weights came from a checkpoint

    # -- encoding ----------------------------------------------------------------------------------
    @property
    def document_tower(self) -> Encoder:
        return self.encoder if self.doc_encoder is None else self.doc_encoder

    def encode_queries(self, tokens: TokenBatch) -> Tensor:
        return self.encoder(tokens.input_ids, tokens.attention_mask)  # (N, H)

    def encode_docs(self, tokens: TokenBatch) -> Tensor:
        return self.document_tower(tokens.input_ids, tokens.attention_mask)  # (N, H)

    def tower_state(self, path: str) -> dict[str, Tensor]:
        """The towers' weights in a Lightning checkpoint, by this module's state-dict names (tensors only:
        `weights_only=True`, so a checkpoint from a stranger cannot run code)."""
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        # A shared-tower LTRe checkpoint also holds its frozen document copy: not a tower of a shared module.
        shared = "doc_encoder" in checkpoint.get("hyper_parameters", {}) and \
            checkpoint["hyper_parameters"]["doc_encoder"] is None
        towers = ("encoder.",) if shared and self.doc_encoder is None else ("encoder.", "doc_encoder.")
        return {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(towers)}

    def load_tower_weights(self, path: str) -> None:
        towers = self.tower_state(path)
        missing, unexpected = self.load_state_dict(towers, strict=False)
        missing = [k for k in missing if k.startswith(("encoder.", "doc_encoder."))]
        unexpected = [k for k in unexpected if ".pooler." not in k]  # older checkpoints kept HF's unused pooler
        if missing or unexpected:
            raise ValueError(f"{path}: tower weights do not match this module: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        log.info("initialised towers from %s", path)

    def apply_warm_start(self) -> None:
        """Load `init_checkpoint`'s towers, once: at the start of the first fit (or validate / test / predict) of a
        module built afresh. A module restored from its own checkpoint (`load_from_checkpoint`, a trainer's
        `ckpt_path`) never reads the warm start again: its checkpoint holds every weight."""
        if self._warm_started:
            return
        self._warm_started = True
        resuming = self._trainer is not None and self.trainer.ckpt_path is not None
        if self.hparams.get("init_checkpoint") is not None and not resuming:
            self.load_tower_weights(self.hparams.init_checkpoint)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, weights_only: bool = True, **kwargs):
        """Lightning's `load_from_checkpoint`, returning the objective that was trained:
        `BiEncoderModule.load_from_checkpoint(ckpt)` of a BM25-negatives run is a `BM25Negatives`, not the base.
        Tensors and plain containers only (`weights_only=True`): loading a checkpoint never runs its code."""
        trained = trained_class(checkpoint_path)
        if trained is not None and trained is not cls and issubclass(trained, cls):
            return trained.load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)
        return super().load_from_checkpoint(checkpoint_path, *args, weights_only=weights_only, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What export and model cards need from a checkpoint: the class (the CLI records it, Python does not)
        # and the figures of the evaluation that preceded the save.
        checkpoint["lit_dr"] = {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                                "last_evaluation": getattr(self, "last_evaluation", None)}

    # -- training ----------------------------------------------------------------------------------
    def compute_loss(self, q: Tensor, d: Tensor, batch: TrainBatch) -> Tensor:
        """The objective: q (B, H) query and d (B * G, H) document embeddings -> scalar loss.

        Texts named by `extra_texts` arrive embedded as keyword arguments. With `cross_device_negatives`, q, d
        and `batch` are those of all processes concatenated (B counts every process's queries)."""
        raise NotImplementedError(f"{type(self).__name__} must override compute_loss")

    def extra_texts(self, batch: TrainBatch) -> dict[str, tuple[Literal["query", "doc"], TokenBatch]]:
        """Texts besides the batch's queries and documents that the loss needs embedded, by keyword of
        `compute_loss`, with the tower that embeds them (DANCE: its negative queries). The base module embeds
        them, so that gradient caching and cross-device gathering cover them too."""
        return {}

    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor:
        encode = {"query": self.encode_queries, "doc": self.encode_docs}
        texts = {"q": (self.encode_queries, batch.queries), "d": (self.encode_docs, batch.docs)}  # (B, .), (B * G, .)
        texts.update({name: (encode[side], tokens) for name, (side, tokens) in self.extra_texts(batch).items()})
        chunk = self.hparams.get("grad_cache_chunk_size")
        if chunk is None:
            objective, loss = self.loss_on_embeddings({name: f(t) for name, (f, t) in texts.items()}, batch)
        else:
            params = [p for p in self.parameters() if p.requires_grad]
            objective, loss = grad_cached_loss(texts, chunk, lambda emb: self.loss_on_embeddings(emb, batch),
                                               params, self.device)
        self.check_finite_loss(loss, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.query_rows.shape[0])
        return objective

    def loss_on_embeddings(self, emb: dict[str, Tensor], batch: TrainBatch) -> tuple[Tensor, Tensor]:
        """(objective to back-propagate, loss to report) from the batch's embeddings, keyed as in `training_step`.

        Across processes the loss is the global batch's, identical on every process; each process's gradient
        reaches only its own embeddings, and DDP averages over the W processes: the objective is W * loss."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if self.hparams.get("cross_device_negatives") and world > 1:
            emb = {name: gather_keep_local(e) for name, e in emb.items()}  # (W * n, H)
            batch = gather_train_batch(batch, self.trainer.datamodule.excluded_docs)
        extra = {name: e for name, e in emb.items() if name not in ("q", "d")}
        loss = self.compute_loss(emb["q"], emb["d"], batch, **extra)
        return (loss * world if self.hparams.get("cross_device_negatives") else loss), loss

    def check_finite_loss(self, loss: Tensor, batch: TrainBatch) -> None:
        """Stop the fit on a NaN or infinite loss, naming the step and the batch's query ids: training on it
        would silently ruin the weights. Under DDP the processes agree first (one all_gather of a scalar), so
        every process raises the same error instead of the others waiting in the next collective until the
        timeout. (One host sync per step.)"""
        value = loss.detach().float().reshape(1)  # (1,)
        world = self.trainer.world_size if self._trainer is not None else 1
        losses = self.all_gather(value).reshape(-1).cpu() if world > 1 else value.cpu()  # (W,)
        bad = [r for r, v in enumerate(losses.tolist()) if not np.isfinite(v)]
        if not bad:
            return
        rows = batch.query_rows.cpu().numpy()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        names = [str(dm.queries.ids[r]) for r in rows] if dm is not None else [int(r) for r in rows]
        where = (f" on process(es) {bad} of {world} (losses {losses.tolist()})" if world > 1
                 else f" {losses.item()}")
        mine = f"rank {self.global_rank}'s" if world > 1 else "the"
        raise FloatingPointError(
            f"non-finite training loss{where} at global step {self.global_step} (epoch {self.current_epoch}); "
            f"{mine} batch's query ids: {names}. Lower the learning rate or the temperature, or check these "
            "queries' documents.")

    def trainable_parameters(self):
        """What the optimizer updates (LTRe: the query tower only)."""
        return self.parameters()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_fit_length"):  # a schedule that ends with the fit (LinearWarmup total_steps="fit")
            scheduler.set_fit_length(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation: encode queries in the loop, the corpus at the end, then search and score -------
    def _collect_queries(self, batch: EncodeBatch) -> None:
        self._eval_outputs.append((batch.rows.cpu(), self.encode_queries(batch.tokens).float().cpu()))

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = []

    on_test_epoch_start = on_predict_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: EncodeBatch, batch_idx: int) -> None:
        self._collect_queries(batch)

    test_step = validation_step

    def predict_step(self, batch: EncodeBatch, batch_idx: int) -> None:
        self._collect_queries(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a sanity check must not cost a full corpus encoding
            return
        self.evaluate("dev", "val")

    def on_test_epoch_end(self) -> None:
        self.evaluate("test", "test")

    def on_predict_epoch_end(self) -> None:
        self.retrieve("predict")

    @property
    def _show_progress(self) -> bool:
        return self.global_rank == 0 and self.trainer.progress_bar_callback is not None

    def _autocast(self) -> AutocastFactory:
        return autocast_factory(self.trainer.precision_plugin, self.device)

    def processes(self) -> Processes:
        """This process's rank, device and collectives, for the sharded encoding and search helpers."""
        world = self.trainer.world_size
        return Processes(rank=self.global_rank, world_size=world, device=self.device,
                         all_gather=self.all_gather if world > 1 else None, barrier=self.trainer.strategy.barrier)

    def embedding_root(self) -> Path:
        """Where embedding files go: `embedding_dir`, else `embeddings/` in the run directory (same on every process)."""
        if self._embedding_root is None:
            given = self.hparams.embedding_dir
            self._embedding_root = Path(given) if given else shared_run_directory(self.trainer) / "embeddings"
        return self._embedding_root

    def embed_to_files(self, side: Literal["query", "doc"], rows: np.ndarray | None, name: str) -> EmbeddingShards:
        """Embeddings of query-store or corpus rows (all when None) with the current towers, written to
        `embedding_root()/name` shard by shard (each process encodes its share; eval and inference mode)."""
        dm = self.trainer.datamodule
        store, encode = (dm.queries, self.encode_queries) if side == "query" else (dm.corpus, self.encode_docs)
        tower = self.encoder if side == "query" else self.document_tower
        directory = self.embedding_root() / name
        if self.global_rank == 0 and directory.exists():  # a leftover of an interrupted run
            shutil.rmtree(directory)
        self.trainer.strategy.barrier()
        was_training = self.training
        self.eval()
        try:
            procs = self.processes()
            return encode_to_shards(
                encode, store, directory, tower.dim, procs.rank, procs.world_size, procs.barrier, rows=rows,
                dtype=self.hparams.embedding_dtype, batch_size=dm.hparams.eval_batch_size, device=self.device,
                autocast=self._autocast(), show_progress=self._show_progress,
                desc="encode corpus" if side == "doc" else "encode queries",
            )
        finally:
            self.train(was_training)

    def remove_embeddings(self, embeddings: EmbeddingShards) -> None:
        """Delete embedding files nobody needs any more (process 0; call after the last collective that used them)."""
        if self.global_rank == 0:
            shutil.rmtree(embeddings.directory, ignore_errors=True)

    def corpus_embeddings(self) -> EmbeddingShards:
        """The whole corpus embedded by the current document tower, on disk. Within a fit, encoded once per
        optimizer step: a refresh and a validation at the same step share it. Only the latest is kept."""
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        if fitting and self._corpus_cache is not None and self._corpus_cache[0] == self.global_step:
            return self._corpus_cache[1]
        previous = self._corpus_cache[1] if self._corpus_cache is not None else None
        embeddings = self.embed_to_files("doc", None, f"corpus-step{self.global_step:07d}")
        if previous is not None and previous.directory != embeddings.directory:
            self.remove_embeddings(previous)
        self._corpus_cache = (self.global_step, embeddings) if fitting else None
        return embeddings

    def on_fit_start(self) -> None:
        # After the trainer restored any `ckpt_path` (and before `on_train_start`, where LTRe encodes its fixed
        # index from the warm-started towers).
        self.apply_warm_start()
        self._corpus_cache = None  # weights may come from a checkpoint now
        dm = getattr(self.trainer, "datamodule", None)
        if self.hparams.get("cross_device_negatives") and not hasattr(dm, "excluded_docs"):
            raise ValueError("cross_device_negatives needs a data module with `excluded_docs(query_rows)` (such as "
                             "RetrievalDataModule): the false-negative mask must cover other processes' documents")

    def on_validation_start(self) -> None:
        self.apply_warm_start()  # `validate` of a module built afresh evaluates its warm start (no-op in a fit)

    on_test_start = on_predict_start = on_validation_start

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._warm_started = True  # the checkpoint's weights, never the warm start's
        self._corpus_cache = None
        self._checkpoint_step = checkpoint.get("global_step")

    @property
    def weights_step(self) -> int:
        """The optimizer step of the current weights: the trainer's in a fit, the loaded checkpoint's in
        validate / test / predict (where the trainer counts from 0). Names run files and evaluation records."""
        loaded = getattr(self, "_checkpoint_step", None)
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return self.global_step if fitting or loaded is None else int(loaded)

    def _gathered_queries(self) -> tuple[np.ndarray, Tensor]:
        """(Q,) query rows, ascending and unique, and their (Q, H) embeddings, from every process. Processes may
        hold unequal numbers of queries (the query sampler does not pad; Lightning's pads val/test with
        repeats), none included: the gather pads by counts (`gather_rows`) and repeats are dropped."""
        rows = torch.cat([r for r, _ in self._eval_outputs]) if self._eval_outputs else torch.zeros(0, dtype=torch.long)
        emb = (torch.cat([e for _, e in self._eval_outputs]) if self._eval_outputs
               else torch.zeros(0, self.encoder.dim))  # (n, H)
        self._eval_outputs = []
        if self.trainer.world_size > 1:
            procs = self.processes()
            rows = torch.from_numpy(gather_rows(rows.numpy(), procs))
            emb = torch.from_numpy(gather_rows(emb.numpy(), procs))
        unique, first = np.unique(rows.numpy(), return_index=True)
        return unique, emb[torch.from_numpy(first)]

    def extra_eval_metrics(self, query_rows: np.ndarray, queries: Tensor, docs: EmbeddingShards) -> dict[str, float]:
        """Objective-specific evaluation figures from the evaluated queries' (Q, H) embeddings and the corpus'
        (DANCE: alignment and uniformity). Logged beside the retrieval metrics."""
        return {}

    def search(self, embeddings: EmbeddingShards, queries: np.ndarray, k: int, factory: str,
               share: bool = True, params: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and rows of `embeddings` for (Q, H) queries held by every process (`share`: each
        process searches its contiguous share and the results are gathered), or for this process's own
        queries (`share=False`: the results of all processes come back, in rank order). `params`: the FAISS
        search parameters of `factory` (evaluation passes `search_params`, a refresh its own)."""
        procs = self.processes()
        if share:
            queries = queries[even_share(len(queries), procs.rank, procs.world_size)]
        return search_embeddings(embeddings, queries, k, factory, procs, params=params)

    def runs_directory(self) -> Path:
        """Where TREC run files and `evaluations.jsonl` go: `run_dir`, else `runs/` in the run's directory."""
        return Path(self.hparams.run_dir or run_directory(self.trainer) / "runs")

    def retrieve(self, split: str) -> Retrieval:
        """Search the corpus for the queries collected in this loop; writes the TREC run file (global rank 0)."""
        from lit_dr.evaluation.metrics import write_trec_run

        dm = self.trainer.datamodule
        query_rows, queries = self._gathered_queries()
        docs = self.corpus_embeddings()
        k = min(self.hparams.eval_depth, len(dm.corpus))
        scores, ranked = self.search(docs, queries.numpy(), k, self.hparams.index_factory,
                                     params=self.hparams.get("search_params"))
        if self.global_rank == 0:
            path = self.runs_directory() / f"{split}-step{self.weights_step:07d}.trec"
            write_trec_run(path, [str(dm.queries.ids[q]) for q in query_rows], dm.corpus.ids, scores, ranked)
            log.info("wrote run file %s", path)
        return Retrieval(query_rows, queries, docs, scores, ranked)

    def evaluate(self, split: str, prefix: str) -> dict[str, float]:
        from lit_dr.evaluation.metrics import retrieval_metrics

        r = self.retrieve(split)
        metrics = retrieval_metrics(r.scores, r.ranked, self.trainer.datamodule.relevance_for(r.query_rows, split))
        metrics.update(self.extra_eval_metrics(r.query_rows, r.queries, r.docs))
        # Every process computed the same numbers from the same gathered rankings: no sync needed.
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, sync_dist=False)
        self.last_evaluation = {"split": split, "step": self.weights_step, "metrics": metrics}  # for checkpoints
        if self.global_rank == 0:  # beside the run files: the figures without a logger's own file format
            path = self.runs_directory() / "evaluations.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps({**self.last_evaluation, "index_factory": self.hparams.index_factory,
                                    "search_params": self.hparams.get("search_params")}) + "\n")
        return metrics
