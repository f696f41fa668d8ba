"""LTRe / ADORE: a fixed document index and a query encoder trained by full retrieval against it."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lit_dr.data.batches import TrainBatch
from lit_dr.index.corpus_index import CorpusIndex
from lit_dr.index.embeddings import EmbeddingShards
from lit_dr.models.losses import listwise_softmax_loss, ltre_pairwise_loss
from lit_dr.objectives.base import BiEncoderModule
from lit_dr.objectives.reused_embeddings import copy_directory, find_reusable

log = logging.getLogger(__name__)


@dataclass
class RankedLists:
    """What the loss sees for B queries: each query's retrieved list, then appended unretrieved positives."""

    rows: np.ndarray  # (B, L) corpus rows, -1 = padding
    ranks: np.ndarray  # (B, L) 1-based retrieval rank; appended positives depth + 1, depth + 2, ...
    relevant: np.ndarray  # (B, L) bool, judged relevant (grade > 0)

    @property
    def valid(self) -> np.ndarray:  # (B, L) bool
        return self.rows >= 0


def ranked_lists(
    ranked: np.ndarray,
    relevance: list[dict[int, int]],
    depth: int,
    append: Literal["when_none_retrieved", "always"] = "when_none_retrieved",
) -> RankedLists:
    """Turn (B, depth) retrieved rows (best first, -1 = empty) into the lists the ranking loss is computed on.

    Judged-relevant documents that were not retrieved are appended after the list, ranked depth + 1, ... (beyond
    any cut up to depth), when none was retrieved (the released ADORE code) or `always`.
    """
    lists = []
    for retrieved, rel in zip(ranked.tolist(), relevance, strict=True):
        retrieved = [r for r in retrieved if r >= 0]
        positives = {d for d, g in rel.items() if g > 0}
        missing = sorted(positives.difference(retrieved))
        hit = any(r in positives for r in retrieved)
        extra = missing if (append == "always" or not hit) else []
        ranks = list(range(1, len(retrieved) + 1)) + list(range(depth + 1, depth + 1 + len(extra)))
        lists.append((retrieved + extra, ranks, [r in positives for r in retrieved + extra]))
    width = max(1, max(len(rows) for rows, _, _ in lists))
    out = RankedLists(np.full((len(lists), width), -1, np.int64), np.zeros((len(lists), width), np.int64),
                      np.zeros((len(lists), width), bool))
    for b, (rows, ranks, relevant) in enumerate(lists):
        out.rows[b, : len(rows)], out.ranks[b, : len(rows)], out.relevant[b, : len(rows)] = rows, ranks, relevant
    return out


class LTRe(BiEncoderModule):
    """Zhan et al., arXiv 2010.10469 (LTRe) and SIGIR 2021 (ADORE; code jingtaozhan/DRhard).

    Before the first step, the corpus is encoded once by the document tower of the warm start
    (`init_checkpoint`, e.g. a `BM25Negatives` checkpoint) and indexed (`index_factory`: exact "Flat" by default,
    IVF/PQ for a compressed index). It is never re-encoded: validation and test encode only the queries. Each step
    encodes the query batch, retrieves the top `depth` from the whole corpus with the detached embeddings,
    recomputes the retrieved documents' scores in torch from their stored embeddings (so the gradient reaches the
    query tower), and learns from that ranking. Only the query tower trains: with one shared tower in the warm
    start, the tower becomes the query tower and a frozen copy of it becomes `doc_encoder` (the tower that
    embedded the index, saved in every checkpoint so that export, test and resume need no warm-start file; it
    costs one tower's weights in memory, no gradients or optimizer state); a separate `doc_encoder` is frozen
    and left out of the optimizer.

    A checkpoint records the index's source (warm start, embedding directory, digest): a resumed run, and
    `validate`/`test` from the checkpoint, reuse the embeddings instead of re-encoding; a changed file is an error.

    Not supported (an error at construction): `cross_device_negatives` (the negatives come from the whole fixed
    index already) and `grad_cache_chunk_size` (its own `training_step` retrieves with the step's query embeddings;
    to save memory use the encoder's `gradient_checkpointing`).

    Args:
        depth: documents retrieved per query per step (ADORE: 200).
        metric_cut: ranks beyond it weigh 1/rank = 0 in the loss; None = `depth` (the released code's default,
            None, zeroes every weight: its README passes 200).
        loss: "lambda_rr" (LambdaRank-weighted RankNet for reciprocal rank, the papers') or "listwise" (softmax
            over the retrieved list).
        temperature: divides the scores before the loss (1 for the papers' dot product; about 0.05 for cosine).
        append_positives: append unretrieved judged-relevant documents when none was retrieved (released
            code) or always.
        doc_embeddings: a directory of corpus embeddings already written by lit_dr (`CorpusIndex.embed`) to use
            as the fixed index instead of encoding (for several runs from one warm start).
        **kwargs: the towers, optimizer and evaluation options of `BiEncoderModule`.
    """

    def __init__(
        self,
        depth: int = 200,
        metric_cut: int | None = None,
        loss: Literal["lambda_rr", "listwise"] = "lambda_rr",
        temperature: float = 1.0,
        append_positives: Literal["when_none_retrieved", "always"] = "when_none_retrieved",
        doc_embeddings: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        for option in ("cross_device_negatives", "grad_cache_chunk_size"):
            if self.hparams[option] not in (False, None):
                raise ValueError(f"LTRe does not support {option}: it trains against a fixed index with its own "
                                 "training_step (see its docstring)")
        self.depth, self.metric_cut = depth, depth if metric_cut is None else metric_cut
        self.loss, self.temperature, self.append_positives = loss, temperature, append_positives
        if self.doc_encoder is None:  # the warm start's shared tower, kept as the frozen document tower
            self.doc_encoder = copy.deepcopy(self.encoder)
        self.doc_encoder.requires_grad_(False)
        self.index_source: dict | None = None  # what the fixed index was made from; kept in checkpoints
        self.corpus_encodings = 0  # how often this module encoded the corpus (once per fit at most)
        self._fixed: CorpusIndex | None = None  # the data module's corpus index once it holds the fixed embeddings

    # -- the fixed index: the data module's corpus index, embedded once ---------------------------------------
    def fixed_index(self) -> CorpusIndex:
        """The data module's corpus index holding the fixed document embeddings: embedded once by the document tower
        as it stands before the first step, or reopened from `doc_embeddings` / the checkpoint's record (checked
        against its digest). Never re-embedded: evaluation searches it as it is."""
        index = self.data.corpus_index
        if self._fixed is index and index.embeddings is not None:
            return index
        recorded = self.index_source or {}
        directory = self.hparams.doc_embeddings or recorded.get("directory")
        if directory is not None:
            index.adopt(EmbeddingShards(directory))
            digest = self._digest(index.embeddings)
            if recorded.get("digest") not in (None, digest):
                raise ValueError(f"LTRe's fixed document embeddings in {directory} changed since the checkpoint was "
                                 f"written (digest {digest[:12]}, recorded {recorded['digest'][:12]})")
            log.info("LTRe: reusing the fixed document embeddings in %s", directory)
        elif (copied := self._warm_start_embeddings(index)) is not None:
            index.adopt(copied)
            digest = self._digest(index.embeddings)
        else:
            index.embed(self.towers()[1], "ltre-corpus")
            self.corpus_encodings += 1
            digest = self._digest(index.embeddings)
        self.index_source = {"init_checkpoint": self.hparams.init_checkpoint, "rows": len(index.embeddings),
                             "directory": str(index.embeddings.directory.resolve()), "digest": digest}
        self._fixed = index
        return index

    def _warm_start_embeddings(self, index: CorpusIndex) -> EmbeddingShards | None:
        """The warm start's own corpus embeddings, when they are the ones this fit would encode, copied (hard links
        where the file system allows) into this run's `ltre-corpus`, so the run stands alone. A BM25-negative fit
        that evaluated at its last step encoded the corpus with exactly the warm start's document tower: the record
        beside those embeddings (`reused_embeddings`: weights digest, tokenized corpus, dtype, batch size,
        precision, world size, device) must equal this fit's. One process only; under DDP the corpus is encoded."""
        ckpt = self.hparams.get("init_checkpoint")
        if not ckpt or index.store is None or self.trainer.world_size > 1 or not Path(ckpt).is_file():
            return None
        step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step")
        if step is None:
            return None
        found, why = find_reusable([Path(ckpt).resolve().parent.parent / "embeddings" / f"corpus-step{int(step):07d}"],
                                   self._embedding_source(index))
        if found is None:
            log.info("LTRe: encoding the corpus; the warm start's embeddings are not reusable (%s)", why)
            return None
        target = Path(index.root) / "ltre-corpus"
        copy_directory(found, target)
        log.info("LTRe: the fixed index is the warm start's corpus embeddings of step %d (%s), not encoded again",
                 step, found)
        return EmbeddingShards(target)

    def _digest(self, embeddings: EmbeddingShards) -> str:
        digest = embeddings.digest() if self.global_rank == 0 else ""
        return self.trainer.strategy.broadcast(digest) if self._trainer is not None else digest

    def evaluation_index(self) -> CorpusIndex:
        return self.fixed_index()  # evaluation encodes only the queries

    _resident_search = None  # exact search keeps the fixed matrix on the GPU (ADORE does the same)

    def on_fit_start(self) -> None:
        self.apply_warm_start()  # the fixed index is kept across the fit: no forget_version

    def on_train_start(self) -> None:
        self.fixed_index()  # before the first step, while the towers still hold the warm start

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ltre_index_source"] = self.index_source

    @property
    def _shared_warm_start(self) -> bool:
        return self.hparams.get("doc_encoder") is None  # doc_encoder is the frozen copy of the shared tower

    def tower_state(self, path: str) -> dict[str, Tensor]:
        """A shared-tower warm start initialises the query tower and its frozen copy, the document tower."""
        state = super().tower_state(path)
        if self._shared_warm_start and not any(k.startswith("doc_encoder.") for k in state):
            state.update({"doc_" + k: v for k, v in state.items() if k.startswith("encoder.")})
        return state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        if self._shared_warm_start and not any(k.startswith("doc_encoder.") for k in state):
            # Written before LTRe kept its frozen document tower: that tower is the warm start's.
            source = self.hparams.get("init_checkpoint")
            if not source or not Path(source).is_file():
                raise FileNotFoundError(f"this LTRe checkpoint predates the frozen document tower in checkpoints; "
                                        f"its documents were embedded by the warm start {source!r}, which is needed")
            log.warning("LTRe checkpoint without its document tower: taking it from the warm start %s", source)
            state.update({k: v for k, v in self.tower_state(source).items() if k.startswith("doc_encoder.")})
        self.index_source = checkpoint.get("ltre_index_source")
        self._fixed = None

    # -- training: full retrieval for the batch's queries, a ranking loss on what came back ---------------
    def trainable_parameters(self):
        return self.encoder.parameters()  # the document side is fixed

    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor:
        index = self.fixed_index()
        q = self.encode_queries(batch.queries)  # (B, H)
        # Ranked in float32 with autocast off (FixedIndex.search): a bf16 ranking ties distinct scores.
        factory, params = self.hparams.index_factory, self.hparams.get("search_params")
        _, ranked = index.search_local(q.detach().float().cpu().numpy(), self.depth, factory, params,
                                       resident=None)  # (B, depth)
        relevance = self.data.relevance_for(batch.query_rows.cpu().numpy())
        lists = ranked_lists(ranked, relevance, self.depth, self.append_positives)
        valid = torch.from_numpy(lists.valid).to(q.device)  # (B, L)
        docs = q.new_zeros((*lists.rows.shape, q.shape[1]), dtype=torch.float32)  # (B, L, H)
        docs[valid] = index.vectors(lists.rows[lists.valid], q.device, factory, params, resident=None)
        with torch.autocast(q.device.type, enabled=False):  # scores in fp32, as ADORE
            scores = torch.einsum("bh,blh->bl", q.float(), docs) / self.temperature  # (B, L)
        relevant = torch.from_numpy(lists.relevant).to(q.device)
        if self.loss == "listwise":
            loss = listwise_softmax_loss(scores, relevant, valid)
        else:
            ranks = torch.from_numpy(lists.ranks).to(q.device)
            loss = ltre_pairwise_loss(scores, relevant, ranks, self.metric_cut, valid)
        self.check_finite_loss(loss, batch)
        found = (lists.relevant & (lists.ranks <= self.depth)).any(1).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=q.shape[0])
        self.log("train/positive_retrieved", float(found), batch_size=q.shape[0])
        return loss
