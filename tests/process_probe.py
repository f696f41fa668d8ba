"""Run by `test_processes.py` as 1, 2 or 3 DDP processes over gloo (torchrun's environment variables; Lightning
launches nothing). Cases:

- `eval:NAME`: `trainer.test` then `trainer.predict` of an untrained BM25Negatives on the data set `DATA_ROOT/NAME`
  (whose test split holds 5 or 1 queries); the run files go to `OUT/NAME-w{world}/`.
- `nonfinite`: a fit whose loss is NaN on the last rank only, at the first step; each rank writes the error it
  raised (type and message) to `OUT/nonfinite-w{world}-r{rank}.txt`.
- `checkpointing`: two steps with the encoder's gradient checkpointing and gradient caching under DDP; writes
  `OUT/checkpointing-w{world}-r{rank}.txt` ("ok" and the step count).

    python tests/process_probe.py MODEL_DIR DATA_ROOT CACHE_DIR OUT_DIR case [case ...]
"""

import os
import sys
from datetime import timedelta

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from lit_dr import BM25Negatives, Encoder, RetrievalDataModule


class NaNOnLastRank(BM25Negatives):
    def compute_loss(self, q, d, batch, **extra):
        loss = super().compute_loss(q, d, batch, **extra)
        return loss * float("nan") if self.global_rank == self.trainer.world_size - 1 else loss


def trainer(world: int, **kw) -> L.Trainer:
    # A short collective timeout: a process left waiting by another's error fails in seconds, not 30 minutes.
    strategy = DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=20)) if world > 1 else "auto"
    return L.Trainer(accelerator="cpu", devices=world, strategy=strategy, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


def main(model_dir: str, data_root: str, cache_dir: str, out: str, *cases: str) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    for case in cases:
        L.seed_everything(0)
        kind, _, name = case.partition(":")
        dm = RetrievalDataModule(f"{data_root}/{name or 'five'}", tokenizer=model_dir, cache_dir=cache_dir,
                                 train_batch_size=4, eval_batch_size=2, num_negatives=0, negatives="none",
                                 show_progress=False)
        if kind == "eval":
            where = f"{out}/{name}-w{world}"
            model = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(model_dir, normalize=True), eval_depth=10, run_dir=where)
            dm.hparams.embedding_dir = f"{where}/emb"
            t = trainer(world)
            t.test(model, dm, verbose=False)
            t.predict(model, dm)
        elif kind == "nonfinite":
            model = NaNOnLastRank(optimizer=torch.optim.AdamW, encoder=Encoder(model_dir, normalize=True), temperature=0.1)
            try:
                trainer(world, max_steps=2, limit_val_batches=0).fit(model, dm)
                outcome = "no error"
            except Exception as e:  # noqa: BLE001 (written for the test to compare)
                outcome = f"{type(e).__name__}: {e}"
            with open(f"{out}/nonfinite-w{world}-r{rank}.txt", "w") as f:
                f.write(outcome)
        elif kind == "checkpointing":
            model = BM25Negatives(optimizer=torch.optim.AdamW, encoder=Encoder(model_dir, normalize=True, gradient_checkpointing=True),
                                  temperature=0.1, grad_cache_chunk_size=2, cross_device_negatives=world > 1)
            trainer(world, max_steps=2, limit_val_batches=0).fit(model, dm)
            with open(f"{out}/checkpointing-w{world}-r{rank}.txt", "w") as f:
                f.write(f"ok {model.global_step}")
        else:
            raise ValueError(case)


if __name__ == "__main__":
    main(*sys.argv[1:])
