"""One training step per case, run by `test_large_batch.py` as 1 process or as 2 DDP processes over gloo (the
test starts each rank with torchrun's environment variables). Each rank takes its contiguous share of the given
queries as its batch and saves its parameters' gradients (after DDP's averaging, before the optimizer step) and
the batch the loss saw to `{out}/{case}-w{world}-r{rank}.pt`.

    python tests/large_batch_probe.py MODEL_DIR DATA_DIR CACHE_DIR OUT_DIR q0,q1,... case [case ...]
"""

import os
import sys
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader

from lit_dr import DANCE, BM25Negatives, Encoder, MarginMSE, RetrievalDataModule, SamToNe
from lit_dr.data.batches import TrainBatch

# objective -> (module class, its options). A case is an objective with an optional suffix (see `main`).
CASES = {
    "bm25neg": (BM25Negatives, dict(temperature=0.1, exclude_judged_relevant=True)),
    "samtone": (SamToNe, dict(temperature=0.1, symmetric=True, exclude_judged_relevant=True)),
    "dance": (DANCE, dict(temperature=0.1, dual_weight=0.5)),
    "mmse": (MarginMSE, {}),  # with teacher scores (DATA_DIR/teacher.tsv) and the batch's extra channels below
}


@dataclass
class ExtendedBatch(TrainBatch):
    """A field `gather_train_batch` has never heard of: it must be gathered too, not dropped."""

    doc_rows_again: torch.Tensor | None = None  # (B * G,)


class Recording:
    """Keeps the batch and embeddings the loss was computed on."""

    def compute_loss(self, q, d, batch, **extra):
        self.seen = {"judged": batch.excluded.cpu(), "query_rows": batch.query_rows.cpu(),
                     "doc_rows": batch.doc_rows.cpu(), "q": q.detach().cpu(),
                     "features": {side: {k: v.cpu() for k, v in getattr(batch, f"{side}_features").items()}
                                  for side in ("query", "doc")},
                     "extra": batch.doc_rows_again.cpu() if isinstance(batch, ExtendedBatch) else None}
        return super().compute_loss(q, d, batch, **extra)


class FixedBatch(RetrievalDataModule):
    """One batch per process: its contiguous share of `rows`."""

    def __init__(self, rows: list[str], world: int, rank: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.share, self.world, self.rank = rows, world, rank

    def train_dataloader(self) -> DataLoader:
        rows = [self.queries.row_of[q] for q in self.share]
        n = len(rows) // self.world
        return DataLoader([torch.tensor(rows[self.rank * n:(self.rank + 1) * n])], batch_size=None)

    def train_batch(self, query_rows):
        batch = super().train_batch(query_rows)
        if self.hparams.teacher_scores is None:
            return batch
        fields = {**asdict_shallow(batch), "query_features": {"row": batch.query_rows.double()}}
        return ExtendedBatch(**fields, doc_rows_again=batch.doc_rows.clone())


def asdict_shallow(batch) -> dict:
    return {name: getattr(batch, name) for name in batch.__dataclass_fields__}


class SaveGradients(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        torch.save({"grads": grads, **pl_module.seen}, self.path)


def main(model_dir: str, data_dir: str, cache_dir: str, out: str, rows: str, *cases: str) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    for case in cases:
        objective, _, variant = case.partition("_")  # "": shared negatives; "cached": and caching; "local": neither
        module_cls, options = CASES[objective]
        L.seed_everything(0)
        model = type(module_cls.__name__, (Recording, module_cls), {})(
            encoder=Encoder(model_dir, projection_dim=8, normalize=True), cross_device_negatives=variant != "local",
            grad_cache_chunk_size=3 if variant == "cached" else None,
            optimizer=lambda params: torch.optim.SGD(params, lr=0.1), **options)
        dm = FixedBatch(rows.split(","), world, rank, dataset=data_dir, tokenizer=model_dir, cache_dir=cache_dir,
                        num_negatives=1, num_negative_queries=2 if objective == "dance" else 0, negatives="none",
                        teacher_scores="teacher.tsv" if objective == "mmse" else None, show_progress=False)
        trainer = L.Trainer(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                            use_distributed_sampler=False, max_steps=1, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, callbacks=[SaveGradients(f"{out}/{case}-w{world}-r{rank}.pt")])
        trainer.fit(model, dm)


if __name__ == "__main__":
    main(*sys.argv[1:])
