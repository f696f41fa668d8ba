"""The evaluation hooks of every objective: the queries are embedded in the loop and handed, at its end, to the
data module's corpus index, which embeds the corpus with the document tower (once per optimizer step in a fit) and
searches it; the rankings are scored (nDCG@10, MRR@10, Recall@100, Recall@1000) and written as TREC run files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from lit_dr.data.batches import EncodeBatch
from lit_dr.evaluation.metrics import retrieval_metrics, write_trec_run
from lit_dr.files import run_directory
from lit_dr.index.corpus_index import CorpusIndex
from lit_dr.index.embeddings import EmbeddingShards
from lit_dr.index.search import Processes, gather_rows
from lit_dr.objectives.reused_embeddings import find_reusable, weights_digest, write_record

log = logging.getLogger(__name__)


class Evaluation(L.LightningModule):
    """Validation, test and predict of a `BiEncoderModule` (which mixes this in): needs `encode_queries`, `towers`,
    `data` (`RetrievalData`) and the hyperparameters `index_factory`, `search_params`, `eval_depth`, `run_dir`."""

    _resident_search: bool | None = False  # evaluation streams over the files; LTRe keeps its matrix on the GPU

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = []

    on_test_epoch_start = on_predict_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: EncodeBatch, batch_idx: int) -> None:
        self._eval_outputs.append((batch.rows.cpu(), self.encode_queries(batch.tokens).float().cpu()))

    test_step = predict_step = validation_step

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:  # a sanity check must not cost a full corpus encoding
            self.evaluate("dev", "val")

    def on_test_epoch_end(self) -> None:
        self.evaluate("test", "test")

    def on_predict_epoch_end(self) -> None:
        self.retrieve("predict")

    @property
    def weights_step(self) -> int:
        """The optimizer step of the current weights: the trainer's in a fit, the loaded checkpoint's in
        validate / test / predict (where the trainer counts from 0). Names run files and evaluation records."""
        loaded = getattr(self, "_checkpoint_step", None)
        fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        return self.global_step if fitting or loaded is None else int(loaded)

    def evaluation_index(self) -> CorpusIndex:
        """The corpus index holding the current document tower's embeddings: embedded once per optimizer step in a
        fit (a refresh at the same step shares them); otherwise those the fit wrote at the checkpoint's step when
        they match (`reused_embeddings`), else embedded anew. (LTRe: its fixed index.)"""
        fitting = self.trainer.state.fn == TrainerFn.FITTING
        if not fitting and (reused := self._reused_corpus()) is not None:
            return reused
        return self._embed_corpus(version=self.global_step if fitting else None)

    def _embed_corpus(self, version) -> CorpusIndex:
        index = self.data.corpus_index
        index.embed(self.towers()[1], f"corpus-step{self.global_step:07d}", version)
        if self.trainer.state.fn == TrainerFn.FITTING and self.global_rank == 0 and index.store is not None:
            write_record(index.embeddings.directory, self._embedding_source(index))  # for a later validate
        return index

    def _embedding_source(self, index: CorpusIndex) -> dict:
        """What decides the corpus embeddings' numbers (`reused_embeddings`)."""
        return {"weights": weights_digest(self.document_tower), "corpus": index.store.directory.name,
                "dtype": index.dtype, "batch_size": index.encoding.batch_size,
                "precision": str(self.trainer.precision), "world_size": self.trainer.world_size,
                "device": self.device.type}

    def _reused_corpus(self) -> CorpusIndex | None:
        """The checkpoint's own step's embeddings, adopted (never deleted from here), or None, saying why not."""
        ckpt, step = self.trainer.ckpt_path, getattr(self, "_checkpoint_step", None)
        index = self.data.corpus_index
        if not ckpt or step is None or index.store is None or not Path(ckpt).is_file():
            return None
        name = f"corpus-step{int(step):07d}"
        candidates = [Path(ckpt).resolve().parent.parent / "embeddings" / name, Path(index.root) / name]
        found, why = find_reusable(list(dict.fromkeys(candidates)), self._embedding_source(index))
        if self.global_rank == 0:
            if found is None:
                log.info("encoding the corpus: the fit's embeddings of step %d are not reusable (%s)", step, why)
            else:
                log.info("reusing the corpus embeddings of step %d the fit wrote: %s", step, found)
        if found is None:
            return None
        index.adopt(EmbeddingShards(found), owned=False)
        return index

    def _gathered_queries(self) -> tuple[np.ndarray, Tensor]:
        """(Q,) query rows, ascending and unique, and their (Q, H) embeddings, from every process (unequal counts
        gathered by counts; the query sampler's one repeat for an empty share is dropped)."""
        outputs, self._eval_outputs = self._eval_outputs, []
        rows = torch.cat([r for r, _ in outputs]) if outputs else torch.zeros(0, dtype=torch.long)
        emb = torch.cat([e for _, e in outputs]) if outputs else torch.zeros(0, self.encoder.dim)  # (n, H)
        if self.trainer.world_size > 1:
            procs = Processes(self.global_rank, self.trainer.world_size, self.device, self.all_gather)
            rows, emb = torch.from_numpy(gather_rows(rows.numpy(), procs)), torch.from_numpy(gather_rows(emb.numpy(), procs))
        unique, first = np.unique(rows.numpy(), return_index=True)
        return unique, emb[torch.from_numpy(first)]

    def extra_eval_metrics(self, query_rows: np.ndarray, queries: Tensor, index: CorpusIndex) -> dict[str, float]:
        """Objective-specific figures from the evaluated queries' (Q, H) embeddings and the corpus index (DANCE:
        alignment and uniformity), logged beside the retrieval metrics."""
        return {}

    def runs_directory(self) -> Path:
        return Path(self.hparams.run_dir or run_directory(self.trainer) / "runs")

    def retrieve(self, split: str) -> tuple[np.ndarray, Tensor, CorpusIndex, np.ndarray, np.ndarray]:
        """Search the corpus for the queries of this loop; (query rows, their embeddings, the index, (Q, k) scores,
        (Q, k) corpus rows). Process 0 writes the TREC run file."""
        query_rows, queries = self._gathered_queries()
        index = self.evaluation_index()
        scores, ranked = index.search(queries.numpy(), self.hparams.eval_depth, self.hparams.index_factory,
                                      self.hparams.get("search_params"), resident=self._resident_search)
        if self.global_rank == 0:
            path = self.runs_directory() / f"{split}-step{self.weights_step:07d}.trec"
            write_trec_run(path, self.data.query_ids(query_rows), index.store.ids, scores, ranked)
            log.info("wrote run file %s", path)
            self.last_run_file = path  # the run summary names it
        return query_rows, queries, index, scores, ranked

    def evaluate(self, split: str, prefix: str) -> dict[str, float]:
        query_rows, queries, index, scores, ranked = self.retrieve(split)
        metrics = retrieval_metrics(scores, ranked, self.data.relevance_for(query_rows, split),
                                    index.store.ids)  # ties by document id, as trec_eval ranks the run file
        metrics.update(self.extra_eval_metrics(query_rows, queries, index))
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
