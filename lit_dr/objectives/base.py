"""The base of every objective: the towers, optimizer wiring, the training step and the evaluation hooks."""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_dr.data.batches import TokenBatch, TrainBatch
from lit_dr.index.corpus_index import Tower
from lit_dr.index.faiss_index import check_search_params
from lit_dr.models.large_batch import gather_keep_local, gather_train_batch, grad_cached_loss
from lit_dr.objectives.checkpoints import Checkpointed, build_tower, save_tower_hparams
from lit_dr.objectives.data_interface import RetrievalData, retrieval_data
from lit_dr.objectives.evaluation import Evaluation
from lit_dr.objectives.final_validation import FinalValidation
from lit_dr.objectives.random_state import RandomState

log = logging.getLogger(__name__)


class BiEncoderModule(Checkpointed, Evaluation):
    """A bi-encoder: queries and documents embedded by one shared tower, or two when `doc_encoder` is given.

    An objective subclasses this and overrides `compute_loss`. Validation and test hand the queries' embeddings to
    the data module's corpus index (`RetrievalData.corpus_index`), which embeds the corpus with the document tower
    and searches it; they report nDCG@10, MRR@10, Recall@100 and Recall@1000 and write a TREC run file.

    Args:
        encoder: the query tower (the document tower too when `doc_encoder` is None): any `nn.Module` with `dim`
            and `forward(input_ids, attention_mask) -> (N, dim)`, or an explicit spec {"class_path", "init_args"}.
            A checkpoint rebuilds it from the CLI's config, the spec, or the tower's own `save_hyperparameters`
            (as `lit_dr.Encoder`).
        doc_encoder: a separate document tower, as `encoder`; None: one tower embeds both.
        optimizer: an injected factory (`OptimizerCallable`), e.g. `torch.optim.AdamW` with `init_args.lr`. No
            default: the learning rate is the fit's first choice.
        scheduler: an injected factory (`LRSchedulerCallable`, e.g. `lit_dr.LinearWarmup`), stepped every
            optimizer step; None: a constant learning rate.
        index_factory: FAISS factory string of evaluation ("Flat" is exact); recorded in `evaluations.jsonl`.
            Where search runs follows the model's device (`lit_dr.index.search.search_backend`).
        search_params: for a non-exact `index_factory`, its search parameters ({nprobe: 64}, {efSearch: 128};
            FAISS's default nprobe is 1).
        eval_depth: documents retrieved per query (the run file holds this many).
        run_dir: where TREC run files go; default `runs/` in the run's directory (beside its checkpoints).
        init_checkpoint: a checkpoint whose towers initialise this module, read once (`apply_warm_start`).
        cross_device_negatives: under DDP, every process's documents (and queries) are negatives of every
            query: the loss is that of the global batch, with the exact gradient (`lit_dr.models.large_batch`).
        grad_cache_chunk_size: embed the batch this many texts at a time (gradient caching): memory of one chunk's
            activations, a second forward pass per step, the exact gradient. None embeds the batch at once.
    """

    def __init__(self, encoder: nn.Module | dict, doc_encoder: nn.Module | dict | None = None,
                 optimizer: OptimizerCallable | None = None, scheduler: LRSchedulerCallable | None = None,
                 index_factory: str = "Flat", search_params: dict[str, int | float] | None = None,
                 eval_depth: int = 1000, run_dir: str | None = None, init_checkpoint: str | None = None,
                 cross_device_negatives: bool = False, grad_cache_chunk_size: int | None = None) -> None:
        super().__init__()
        if grad_cache_chunk_size is not None and grad_cache_chunk_size < 1:
            raise ValueError(f"grad_cache_chunk_size must be at least 1 (or None), got {grad_cache_chunk_size}")
        check_search_params(index_factory, search_params)
        save_tower_hparams(self, {"encoder": encoder, "doc_encoder": doc_encoder})
        self.encoder, self.doc_encoder = build_tower(encoder), build_tower(doc_encoder)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._eval_outputs: list[tuple[Tensor, Tensor]] = []

    # -- towers --------------------------------------------------------------------------------------------
    @property
    def document_tower(self) -> nn.Module:
        return self.encoder if self.doc_encoder is None else self.doc_encoder

    def encode_queries(self, tokens: TokenBatch) -> Tensor:
        return self.encoder(tokens.input_ids, tokens.attention_mask)  # (N, H)

    def encode_docs(self, tokens: TokenBatch) -> Tensor:
        return self.document_tower(tokens.input_ids, tokens.attention_mask)  # (N, H)

    def towers(self) -> tuple[Tower, Tower]:
        """(query, document) towers as plain callables in eval mode, for the corpus index and the refresh."""
        def evaluating(encode):
            def run(tokens: TokenBatch) -> Tensor:
                was_training = self.training
                self.eval()
                try:
                    return encode(tokens)
                finally:
                    self.train(was_training)
            return run
        return (Tower(evaluating(self.encode_queries), self.encoder.dim),
                Tower(evaluating(self.encode_docs), self.document_tower.dim))

    @property
    def data(self) -> RetrievalData:
        """The data module, through its one documented interface (`lit_dr.objectives.data_interface`)."""
        return retrieval_data(self._trainer)

    # -- training ------------------------------------------------------------------------------------------
    def compute_loss(self, q: Tensor, d: Tensor, batch: TrainBatch) -> Tensor:
        """The objective: q (B, H) query and d (B * G, H) document embeddings -> scalar loss. Texts named by
        `extra_texts` arrive embedded as keyword arguments. With `cross_device_negatives`, q, d and `batch` are
        those of all processes concatenated (B counts every process's queries)."""
        raise NotImplementedError(f"{type(self).__name__} must override compute_loss")

    def extra_texts(self, batch: TrainBatch) -> dict[str, tuple[Literal["query", "doc"], TokenBatch]]:
        """Texts besides the batch's queries and documents that the loss needs embedded, by keyword of `compute_loss`,
        with the tower that embeds them (DANCE: its negative queries); covered by gradient caching and gathering."""
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
        """(objective to back-propagate, loss to report). Across processes the loss is the global batch's, the same on
        every process; each process's gradient reaches only its own embeddings, and DDP averages over the W
        processes: the objective is W * loss."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if self.hparams.get("cross_device_negatives") and world > 1:
            emb = {name: gather_keep_local(e) for name, e in emb.items()}  # (W * n, H)
            batch = gather_train_batch(batch, self.data.excluded_docs)
        extra = {name: e for name, e in emb.items() if name not in ("q", "d")}
        loss = self.compute_loss(emb["q"], emb["d"], batch, **extra)
        return (loss * world if self.hparams.get("cross_device_negatives") else loss), loss

    def check_finite_loss(self, loss: Tensor, batch: TrainBatch) -> None:
        """Stop the fit on a NaN or infinite loss, naming the step and the batch's query ids. Under DDP the processes
        agree first (an all_gather of a scalar), so all raise instead of the others waiting until the timeout."""
        value = loss.detach().float().reshape(1)  # (1,)
        world = self.trainer.world_size if self._trainer is not None else 1
        losses = self.all_gather(value).reshape(-1).cpu() if world > 1 else value.cpu()  # (W,)
        bad = [r for r, v in enumerate(losses.tolist()) if not np.isfinite(v)]
        if not bad:
            return
        rows = batch.query_rows.cpu().numpy()
        dm = getattr(self._trainer, "datamodule", None)
        names = dm.query_ids(rows) if hasattr(dm, "query_ids") else [int(r) for r in rows]
        where = f" on process(es) {bad} of {world} (losses {losses.tolist()})" if world > 1 else f" {losses.item()}"
        mine = f"rank {self.global_rank}'s" if world > 1 else "the"
        raise FloatingPointError(
            f"non-finite training loss{where} at global step {self.global_step} (epoch {self.current_epoch}); "
            f"{mine} batch's query ids: {names}. Lower the learning rate or the temperature, or check these "
            "queries' documents.")

    def trainable_parameters(self):
        """What the optimizer updates (LTRe: the query tower only)."""
        return self.parameters()

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError(f"{type(self).__name__} has no optimizer: pass optimizer=lambda p: torch.optim.AdamW(p, "
                             "lr=2e-5) from Python, or model.init_args.optimizer in the config")
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "set_fit_length"):  # a schedule that ends with the fit (LinearWarmup total_steps="fit")
            scheduler.set_fit_length(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_callbacks(self):
        # Every fit checkpoints the global generators (dropout's), so that any resume is bit-identical, and ends
        # with dev metrics at its last step, whatever the validation interval.
        return [RandomState(), FinalValidation()]

    def on_fit_start(self) -> None:
        # After the trainer restored any `ckpt_path`, before `on_train_start` (where LTRe embeds its fixed index).
        self.apply_warm_start()
        self.data.corpus_index.forget_version()  # the weights may come from a checkpoint now

    def on_validation_start(self) -> None:
        self.apply_warm_start()  # `validate` of a module built afresh evaluates its warm start (no-op in a fit)

    on_test_start = on_predict_start = on_validation_start
