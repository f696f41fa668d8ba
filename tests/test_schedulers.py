"""LinearWarmup: warm-up, constant or decaying to 0, and a decay that ends with the fit whatever its length."""

import lightning as L
import pytest
import torch

from lit_dr import BM25Negatives, Encoder, RetrievalDataModule
from lit_dr.training.schedulers import LinearWarmup, linear_warmup_factor


def test_factor_warms_up_then_holds_or_decays():
    assert [linear_warmup_factor(s, 3, None) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [linear_warmup_factor(s, 2, 6) for s in range(8)] == pytest.approx([1 / 3, 2 / 3, 1, 0.75, 0.5, 0.25, 0, 0])


def lrs_of_a_fit(tmp_path, tiny_beir, tiny_model_dir, cache_dir, total_steps, **trainer_kw) -> list[float]:
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    L.seed_everything(0)
    model = BM25Negatives(encoder=Encoder(tiny_model_dir, normalize=True),
                          optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
                          scheduler=lambda o: LinearWarmup(o, warmup_steps=2, total_steps=total_steps))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        enable_checkpointing=False, default_root_dir=str(tmp_path), callbacks=[Record()], **trainer_kw)
    trainer.fit(model, RetrievalDataModule(str(tiny_beir), tokenizer=tiny_model_dir, cache_dir=cache_dir,
                                           train_batch_size=4, bm25_depth=10, show_progress=False))
    return seen


def test_total_steps_fit_decays_to_zero_at_the_fits_last_step(tmp_path, tiny_beir, tiny_model_dir, cache_dir):
    for epochs, batches in ((2, 3), (3, 2)):
        lrs = lrs_of_a_fit(tmp_path, tiny_beir, tiny_model_dir, cache_dir, "fit", max_epochs=epochs,
                           limit_train_batches=batches)
        n = epochs * batches
        assert lrs == pytest.approx([1e-3 * linear_warmup_factor(s, 2, n) for s in range(n)])
        assert lrs[-1] == pytest.approx(1e-3 / (n - 2))  # one step before 0: the last step still learns
    # An explicit total is kept, whatever the fit's length.
    lrs = lrs_of_a_fit(tmp_path, tiny_beir, tiny_model_dir, cache_dir, 100, max_epochs=1, limit_train_batches=4)
    assert lrs == pytest.approx([1e-3 * linear_warmup_factor(s, 2, 100) for s in range(4)])
